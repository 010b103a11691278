"""Prompt construction: fixed prompt texts with slots for learned vectors, and deep prompts.

A prompt is ``[SOS] <n learned vectors> <words> [EOS]``. :class:`PromptTemplate` keeps the token ids
of such a text, with ``n`` placeholder tokens where the learned vectors go, and builds token
embeddings with the learned vectors substituted. :func:`encode_prompts` runs several templates
through the text encoder in one call, truncated to the longest prompt.
"""

from __future__ import annotations

import torch
from torch import nn

from .clip import CLIPBackbone

__all__ = ["DeepPrompts", "PromptTemplate", "encode_prompts", "init_learned"]

PLACEHOLDER = "X"


def init_learned(*shape: int) -> nn.Parameter:
    """A learned prompt tensor initialised N(0, 0.02)."""
    return nn.Parameter(torch.randn(*shape) * 0.02)


class PromptTemplate(nn.Module):
    """Token ids of ``[SOS] X*n <words> [EOS]``, the ``X`` positions replaced by learned vectors.

    Args:
        backbone: Backbone whose tokenizer builds the token ids.
        n_learned: Number of learned vectors after ``[SOS]``.
        words: The fixed words after the learned vectors, e.g. ``"damaged object."``.
    """

    def __init__(self, backbone: CLIPBackbone, n_learned: int, words: str) -> None:
        super().__init__()
        text = " ".join([PLACEHOLDER] * n_learned + [words])
        tokens = backbone.tokenize([text])[0]
        self.n_learned = n_learned
        self.text = text
        # The EOS token has the largest id in CLIP's vocabulary (open_clip's "argmax" text pooling).
        self.eos_index = int(tokens.argmax())
        if self.eos_index <= n_learned:
            msg = f"Prompt '{text}' does not fit the text context of {tokens.shape[0]} tokens."
            raise ValueError(msg)
        self.register_buffer("tokens", tokens, persistent=False)

    @property
    def length(self) -> int:
        """Number of positions up to and including EOS."""
        return self.eos_index + 1

    def embed(self, backbone: CLIPBackbone, learned: torch.Tensor, length: int) -> torch.Tensor:
        """Token embeddings with the learned vectors substituted.

        Args:
            backbone: Backbone whose token embedding embeds the fixed tokens.
            learned: ``(P, n_learned, C)`` learned vectors, one set per prompt.
            length: Number of positions to return (at least :attr:`length`).

        Returns:
            ``(P, length, C)`` token embeddings.
        """
        fixed = backbone.embed_tokens(self.tokens[:length]).to(learned.dtype)
        prompts = learned.shape[0]
        prefix = fixed[:1].expand(prompts, -1, -1)
        suffix = fixed[1 + self.n_learned :].expand(prompts, -1, -1)
        return torch.cat([prefix, learned, suffix], dim=1)


class DeepPrompts(nn.Module):
    """Learned tokens that overwrite positions ``1..length`` before text blocks ``2..depth``.

    Args:
        depth: Prompt depth; ``depth - 1`` blocks receive deep prompts.
        length: Number of overwritten positions ``t``.
        width: Text token width ``C``.
    """

    def __init__(self, depth: int, length: int, width: int) -> None:
        super().__init__()
        self.prompts = init_learned(depth - 1, length, width)

    def forward(self) -> torch.Tensor:
        """The ``(depth - 1, t, C)`` deep prompt tensor."""
        return self.prompts


def encode_prompts(
    backbone: CLIPBackbone,
    prompts: list[tuple[PromptTemplate, torch.Tensor]],
    deep_prompts: torch.Tensor,
) -> list[torch.Tensor]:
    """Encode several prompt sets in one text-encoder call.

    Args:
        backbone: The CLIP backbone.
        prompts: ``(template, learned)`` pairs, ``learned`` of shape ``(P_i, n_learned_i, C)``.
        deep_prompts: ``(depth - 1, t, C)`` deep prompts.

    Returns:
        One ``(P_i, D)`` tensor of unnormalised text embeddings per pair.
    """
    # Truncated after the longest prompt's EOS, but never before the deep prompts' last position.
    length = max(*(template.length for template, _ in prompts), 1 + deep_prompts.shape[1])
    embeddings = torch.cat([template.embed(backbone, learned, length) for template, learned in prompts])
    device = embeddings.device
    eos = torch.cat(
        [torch.full((learned.shape[0],), template.eos_index, device=device) for template, learned in prompts],
    )
    encoded = backbone.encode_text(embeddings, eos, deep_prompts)
    return list(encoded.split([learned.shape[0] for _, learned in prompts]))
