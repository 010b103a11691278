"""Few-shot: a memory bank of normal reference patches, and its map fused with the zero-shot outputs.

Not from either paper: the rule of WinCLIP+ (anomalib's ``WinClip`` with ``k_shot > 0``), as docs/faprompt.md
(section "Few-shot") writes it out. For each block ``l`` of ``layers`` the bank holds the L2-normalised patch tokens
of the image encoder's ordinary residual stream after block ``l``, of every reference image. A test image's patch
``p`` of that block scores ``A_l = (1 - max_m cos(p, bank_l[m])) / 2`` in ``[0, 1]``; ``A`` is the mean over the
blocks. The pixel map is the blurred mean of the zero-shot patch probabilities and ``A`` (upsampling is linear, so
this is ``0.5 (M0 + up(A))`` blurred), the image score ``0.5 (s0 + max A)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from .precision import float32

__all__ = ["FewShotBank", "default_few_shot_layers"]


def default_few_shot_layers(depth: int) -> tuple[int, ...]:
    """The quarter points of the image encoder's depth, ``round(L/4), round(L/2), round(3L/4), L``, without repeats."""
    return tuple(dict.fromkeys(max(1, round(depth * quarter / 4)) for quarter in (1, 2, 3, 4)))


class FewShotBank(nn.Module):
    """The normal reference patches of one category, per block, and the association map of test patches.

    The bank is a non-persistent buffer per block: checkpoints never hold references (they belong to a category,
    not to the model), and an exported graph holds the bank it was exported with as a constant.

    Args:
        layers: Image blocks (numbered from 1) whose ordinary-stream patch tokens form the bank.
    """

    def __init__(self, layers: Sequence[int]) -> None:
        super().__init__()
        self.layers = tuple(layers)
        for index in range(len(self.layers)):
            self.register_buffer(f"bank_{index}", torch.empty(0), persistent=False)
        self.references: tuple[str, ...] = ()

    @property
    def is_set(self) -> bool:
        """Whether references have been stored."""
        return self.bank_0.numel() > 0

    def banks(self) -> list[torch.Tensor]:
        """The ``(k * N, W)`` bank of each block, in ``layers`` order."""
        return [getattr(self, f"bank_{index}") for index in range(len(self.layers))]

    def store(self, tokens: Sequence[torch.Tensor], references: Sequence[str] = ()) -> None:
        """Keep the reference patches: one ``(k, N, W)`` ordinary-stream token tensor per block of ``layers``.

        Args:
            tokens: The reference images' patch tokens, per block.
            references: The reference images' files, for the record.
        """
        for index, layer_tokens in enumerate(tokens):
            bank = F.normalize(layer_tokens.detach().float().flatten(0, 1), dim=-1)
            setattr(self, f"bank_{index}", bank)
        self.references = tuple(str(reference) for reference in references)

    def clear(self) -> None:
        """Forget the references."""
        for index in range(len(self.layers)):
            setattr(self, f"bank_{index}", torch.empty(0, device=self.bank_0.device))
        self.references = ()

    @float32
    def association(self, tokens: Sequence[torch.Tensor]) -> torch.Tensor:
        """``A``: the mean over the blocks of ``(1 - max cos(patch, bank)) / 2``, ``(B, N)``, in fp32.

        Args:
            tokens: The test images' ordinary-stream patch tokens ``(B, N, W)``, one per block of ``layers``.
        """
        maps = []
        for layer_tokens, bank in zip(tokens, self.banks(), strict=True):
            similarity = F.normalize(layer_tokens.float(), dim=-1) @ bank.T  # (B, N, k*N)
            maps.append((1.0 - similarity.amax(dim=-1)) / 2.0)
        return torch.stack(maps).mean(dim=0)

    @staticmethod
    def fuse(
        score: torch.Tensor, patch_probabilities: torch.Tensor, association: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The few-shot image score ``0.5 (s0 + max A)`` ``(B,)`` and patch values ``0.5 (P0 + A)`` ``(B, N)``."""
        return 0.5 * (score + association.amax(dim=1)), 0.5 * (patch_probabilities + association)
