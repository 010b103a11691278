"""FAPrompt torch model: CLIP with compound and data-dependent abnormality prompts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.data import InferenceBatch
from torch import nn

from anomalib_faprompt.components import (
    CLIPBackbone,
    PromptedCLIPModel,
    PromptTemplate,
    abnormal_probability,
    encode_prompts,
    init_learned,
)
from anomalib_faprompt.components.options import LocalScore, PatchSelection, check_count

__all__ = ["FAPromptModel", "FAPromptTrainOutput", "PriorNetwork"]


class FAPromptTrainOutput(NamedTuple):
    """What the FAPrompt losses need from one training forward pass.

    Attributes:
        global_logits: ``(B, 2)`` ``[f_v.F_n, f_v.F^_a(x)] / tau``.
        pred_score: ``(B,)`` fused image score ``s(x)``.
        abnormal_map: ``(B, S, S)`` static abnormal map ``M^a``.
        dap_abnormal_map: ``(B, S, S)`` data-dependent abnormal map ``M^_a``.
        abnormal_text: ``(K, D)`` raw static abnormal text embeddings (for ``L_oc``).
        prior: ``(B, C)`` data-dependent abnormality prior ``Omega_x``.
    """

    global_logits: torch.Tensor
    pred_score: torch.Tensor
    abnormal_map: torch.Tensor
    dap_abnormal_map: torch.Tensor
    abnormal_text: torch.Tensor
    prior: torch.Tensor


class PriorNetwork(nn.Module):
    """DAP's ``psi``: the flattened embeddings of the M most abnormal patches to a shift of the abnormal tokens.

    Two linear layers with a ReLU between them; the hidden width is the input width divided by
    :attr:`HIDDEN_REDUCTION`, as in the released code.

    Args:
        n_patches: Number ``M`` of selected patches.
        embed_dim: Patch embedding width ``D``.
        text_width: Text token width ``C`` (the output).
    """

    HIDDEN_REDUCTION = 16

    def __init__(self, n_patches: int, embed_dim: int, text_width: int) -> None:
        super().__init__()
        hidden = n_patches * embed_dim // self.HIDDEN_REDUCTION
        self.layers = nn.Sequential(
            nn.Linear(n_patches * embed_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, text_width),
        )

    def forward(self, selected: torch.Tensor) -> torch.Tensor:
        """Prior ``Omega_x`` ``(B, C)`` of the selected patch embeddings ``(B, M*D)``."""
        return self.layers(selected)


class FAPromptModel(PromptedCLIPModel):
    """FAPrompt: the AnomalyCLIP scaffold plus compound (CAP) and data-dependent (DAP) abnormality prompts.

    Every argument is required: the defaults live in :class:`anomalib_faprompt.FAPrompt`.

    Args:
        backbone: The frozen CLIP backbone.
        n_ctx: Shared learned tokens ``E`` of the normal and abnormal prompts.
        n_abnormal_ctx: Learned abnormality tokens ``E'`` per abnormal prompt.
        n_abnormal_prompts: Number ``K`` of fine-grained abnormal prompts.
        n_prior_patches: Number ``M`` of most abnormal patches fed to the prior network.
        prompt_depth: Deep-prompt depth (text blocks ``2..depth`` get deep prompts).
        prompt_length: Deep-prompt length ``t``.
        abnormal_word: Word before "object" in the abnormal prompts (``""`` for none).
        patch_selection: ``"topk"`` (paper) or ``"first_k"`` (released code's behaviour).
        local_score: ``"paper"``: ``0.5 (max S^a + max S^_a)``; ``"released"``: ``(2 max S^a + max S^_a) / 3``.
        temperature: Softmax temperature ``tau``.
        sigma: Gaussian blur sigma of the pixel map, in pixels of the working image.
        few_shot_layers: Image blocks of the few-shot memory bank (``None``: the quarter points of the depth).
    """

    def __init__(
        self,
        backbone: CLIPBackbone,
        *,
        n_ctx: int,
        n_abnormal_ctx: int,
        n_abnormal_prompts: int,
        n_prior_patches: int,
        prompt_depth: int,
        prompt_length: int,
        abnormal_word: str,
        patch_selection: PatchSelection,
        local_score: LocalScore,
        temperature: float,
        sigma: float,
        few_shot_layers: Sequence[int] | None,
    ) -> None:
        check_count("n_prior_patches", n_prior_patches, maximum=backbone.grid**2, why="the number of patches")
        super().__init__(backbone, prompt_depth, prompt_length, temperature, sigma, few_shot_layers)
        self.n_prior_patches = n_prior_patches
        self.patch_selection = patch_selection
        # Weight of max S^a in the local score; max S^_a gets the rest.
        self.static_local_weight = 0.5 if local_score == "paper" else 2.0 / 3.0

        width = backbone.text_width
        # CAP: the normal prompt's tokens V are shared by all K abnormal prompts.
        self.normal_ctx = init_learned(n_ctx, width)
        self.abnormal_ctx = init_learned(n_abnormal_prompts, n_abnormal_ctx, width)
        words = f"{abnormal_word} object." if abnormal_word else "object."
        self.normal_template = PromptTemplate(backbone, n_ctx, "object.")
        self.abnormal_template = PromptTemplate(backbone, n_ctx + n_abnormal_ctx, words)
        # DAP: psi maps the M most abnormal patch embeddings to a shift of the abnormal tokens.
        self.prior_net = PriorNetwork(n_prior_patches, backbone.embed_dim, width)

    def _abnormal_learned(self, prior: torch.Tensor | None = None) -> torch.Tensor:
        """Learned vectors ``[V][A^i (+ Omega)]`` of the abnormal prompts: ``(K, E+E', C)`` or ``(B*K, E+E', C)``."""
        abnormal = self.abnormal_ctx
        if prior is not None:
            abnormal = abnormal.unsqueeze(0) + prior[:, None, None, :]
            abnormal = abnormal.flatten(0, 1)
        shared = self.normal_ctx.unsqueeze(0).expand(abnormal.shape[0], -1, -1)
        return torch.cat([shared, abnormal], dim=1)

    def static_text(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw text embeddings of the normal prompt ``(D,)`` and the K static abnormal prompts ``(K, D)``."""
        normal, abnormal = encode_prompts(
            self.backbone,
            [
                (self.normal_template, self.normal_ctx.unsqueeze(0)),
                (self.abnormal_template, self._abnormal_learned()),
            ],
            self.deep_prompts(),
        )
        return normal[0], abnormal

    def dap_text(self, prior: torch.Tensor) -> torch.Tensor:
        """Normalised data-dependent abnormal embeddings ``F^_a(x)`` ``(B, D)``: all B*K prompts in one call."""
        (abnormal,) = encode_prompts(
            self.backbone,
            [(self.abnormal_template, self._abnormal_learned(prior))],
            self.deep_prompts(),
        )
        abnormal = abnormal.reshape(prior.shape[0], -1, abnormal.shape[-1]).mean(dim=1)
        return F.normalize(abnormal, dim=-1)

    def select_patches(self, patches: torch.Tensor, abnormal_probs: torch.Tensor) -> torch.Tensor:
        """Flattened embeddings of the M selected patches, in descending score order: ``(B, M*D)``."""
        if self.patch_selection == "topk":
            index = abnormal_probs.detach().topk(self.n_prior_patches, dim=1).indices
            selected = patches.gather(1, index.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
        else:
            selected = patches[:, : self.n_prior_patches]
        return selected.flatten(1)

    def forward(self, images: torch.Tensor) -> FAPromptTrainOutput | InferenceBatch:
        """Score images.

        Args:
            images: ``(B, 3, S, S)`` CLIP-normalised images.

        Returns:
            :class:`FAPromptTrainOutput` in training mode; in eval mode :class:`InferenceBatch` with
            ``pred_score`` ``(B,)`` and ``anomaly_map`` ``(B, 1, S, S)``, both probabilities in [0, 1] (and
            ``pred_label``, ``pred_mask`` once calibrated thresholds are set).
        """
        normal_text, abnormal_text, abnormal_raw = self.text_embeddings()
        global_embedding, (patches,), few_shot_tokens = self.encode_image(images, (self.backbone.depth,))

        static_probs = abnormal_probability(patches, normal_text, abnormal_text, self.temperature)
        prior = self.prior_net(self.select_patches(patches, static_probs))
        dap_text = self.dap_text(prior)
        dap_probs = abnormal_probability(patches, normal_text, dap_text, self.temperature)

        global_logits = self.global_logits(global_embedding, normal_text, dap_text)
        global_score = global_logits.softmax(dim=-1)[:, 1]
        weight = self.static_local_weight
        local = weight * static_probs.amax(dim=1) + (1.0 - weight) * dap_probs.amax(dim=1)
        pred_score = 0.5 * (global_score + local)

        if self.training:
            return FAPromptTrainOutput(
                global_logits=global_logits,
                pred_score=pred_score,
                abnormal_map=self.upsample(static_probs),
                dap_abnormal_map=self.upsample(dap_probs),
                abnormal_text=abnormal_raw,
                prior=prior,
            )
        # 0.25 (M^a + 1 - M^n + M^_a + 1 - M^_n) = 0.5 (M^a + M^_a): one upsampling of the mean.
        pred_score, patch_map = self.fuse_few_shot(pred_score, 0.5 * (static_probs + dap_probs), few_shot_tokens)
        return self.inference(pred_score, self.pixel_map(patch_map))
