"""AnomalyCLIP torch model: object-agnostic normal and abnormal prompts on a frozen CLIP."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from anomalib.data import InferenceBatch

from anomalib_faprompt.components import (
    CLIPBackbone,
    PromptedCLIPModel,
    PromptTemplate,
    abnormal_probability,
    encode_prompts,
    init_learned,
)

__all__ = ["AnomalyCLIPModel", "AnomalyCLIPTrainOutput"]


class AnomalyCLIPTrainOutput(NamedTuple):
    """What the AnomalyCLIP losses need from one training forward pass.

    Attributes:
        global_logits: ``(B, 2)`` ``[f_v.F_n, f_v.F_a] / tau``.
        abnormal_maps: One ``(B, S, S)`` abnormal map ``M^a`` per feature layer.
    """

    global_logits: torch.Tensor
    abnormal_maps: tuple[torch.Tensor, ...]


class AnomalyCLIPModel(PromptedCLIPModel):
    """AnomalyCLIP: ``[X x n] object .`` and ``[X x n] damaged object .`` with separate learned contexts.

    Every argument is required: the defaults live in :class:`anomalib_faprompt.AnomalyCLIP`.

    Args:
        backbone: The frozen CLIP backbone.
        n_ctx: Learned tokens per prompt.
        prompt_depth: Deep-prompt depth.
        prompt_length: Deep-prompt length ``t``.
        abnormal_word: Word before "object" in the abnormal prompt.
        temperature: Softmax temperature ``tau``.
        sigma: Gaussian blur sigma of the pixel map, in pixels of the working image.
        feature_layers: Image blocks (numbered from 1) whose V-V patch tokens give abnormal maps: the local
            loss sums over them, the pixel map is their mean. ``None``: the last block only.
        few_shot_layers: Image blocks of the few-shot memory bank (``None``: the quarter points of the depth).
    """

    def __init__(
        self,
        backbone: CLIPBackbone,
        *,
        n_ctx: int,
        prompt_depth: int,
        prompt_length: int,
        abnormal_word: str,
        temperature: float,
        sigma: float,
        feature_layers: Sequence[int] | None,
        few_shot_layers: Sequence[int] | None,
    ) -> None:
        feature_layers = tuple(feature_layers) if feature_layers is not None else (backbone.depth,)
        backbone.check_patch_layers(feature_layers)
        super().__init__(backbone, prompt_depth, prompt_length, temperature, sigma, few_shot_layers)
        self.feature_layers = feature_layers
        width = backbone.text_width
        self.normal_ctx = init_learned(n_ctx, width)
        self.abnormal_ctx = init_learned(n_ctx, width)
        self.normal_template = PromptTemplate(backbone, n_ctx, "object.")
        self.abnormal_template = PromptTemplate(backbone, n_ctx, f"{abnormal_word} object.")

    def static_text(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw normal ``(D,)`` and abnormal ``(1, D)`` text embeddings, in one text-encoder call."""
        normal, abnormal = encode_prompts(
            self.backbone,
            [
                (self.normal_template, self.normal_ctx.unsqueeze(0)),
                (self.abnormal_template, self.abnormal_ctx.unsqueeze(0)),
            ],
            self.deep_prompts(),
        )
        return normal[0], abnormal

    def forward(self, images: torch.Tensor) -> AnomalyCLIPTrainOutput | InferenceBatch:
        """Score images.

        Args:
            images: ``(B, 3, S, S)`` CLIP-normalised images.

        Returns:
            :class:`AnomalyCLIPTrainOutput` in training mode; in eval mode :class:`InferenceBatch` with the
            global abnormal probability as ``pred_score`` and the blurred ``M^a`` (the mean over the feature
            layers) as ``anomaly_map`` (and ``pred_label``, ``pred_mask`` once calibrated thresholds are set).
        """
        normal_text, abnormal_text, _ = self.text_embeddings()
        global_embedding, layer_patches, few_shot_tokens = self.encode_image(images, self.feature_layers)
        probabilities = [
            abnormal_probability(patches, normal_text, abnormal_text, self.temperature) for patches in layer_patches
        ]
        global_logits = self.global_logits(global_embedding, normal_text, abnormal_text)
        if self.training:
            return AnomalyCLIPTrainOutput(
                global_logits=global_logits,
                abnormal_maps=tuple(self.upsample(layer) for layer in probabilities),
            )
        mean_probabilities = probabilities[0] if len(probabilities) == 1 else torch.stack(probabilities).mean(dim=0)
        score, patch_map = self.fuse_few_shot(global_logits.softmax(dim=-1)[:, 1], mean_probabilities, few_shot_tokens)
        return self.inference(score, self.pixel_map(patch_map))
