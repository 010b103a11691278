"""AnomalyCLIP torch model: object-agnostic normal and abnormal prompts on a frozen CLIP."""

from __future__ import annotations

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
        abnormal_map: ``(B, S, S)`` abnormal map ``M^a``.
    """

    global_logits: torch.Tensor
    abnormal_map: torch.Tensor


class AnomalyCLIPModel(PromptedCLIPModel):
    """AnomalyCLIP: ``[X x n] object .`` and ``[X x n] damaged object .`` with separate learned contexts.

    Args:
        backbone: The frozen CLIP backbone.
        n_ctx: Learned tokens per prompt.
        prompt_depth: Deep-prompt depth.
        prompt_length: Deep-prompt length ``t``.
        abnormal_word: Word before "object" in the abnormal prompt.
        temperature: Softmax temperature ``tau``.
        sigma: Gaussian blur sigma of the pixel map, in pixels of the working image.
    """

    def __init__(
        self,
        backbone: CLIPBackbone,
        n_ctx: int = 12,
        prompt_depth: int = 9,
        prompt_length: int = 4,
        abnormal_word: str = "damaged",
        temperature: float = 0.07,
        sigma: float = 4.0,
    ) -> None:
        super().__init__(backbone, prompt_depth, prompt_length, temperature, sigma)
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
            global abnormal probability as ``pred_score`` and the blurred ``M^a`` as ``anomaly_map``.
        """
        normal_text, abnormal_text, _ = self.text_embeddings()
        global_embedding, patches = self.encode_image(images)
        probabilities = abnormal_probability(patches, normal_text, abnormal_text, self.temperature)
        global_logits = self.global_logits(global_embedding, normal_text, abnormal_text)
        if self.training:
            return AnomalyCLIPTrainOutput(global_logits=global_logits, abnormal_map=self.upsample(probabilities))
        return InferenceBatch(pred_score=global_logits.softmax(dim=-1)[:, 1], anomaly_map=self.pixel_map(probabilities))
