"""AnomalyCLIP: Object-agnostic Prompt Learning for Zero-shot Anomaly Detection.

The baseline FAPrompt builds on: one learned normal and one learned abnormal prompt, deep prompts, the
value-value image path; trained on an auxiliary dataset with defect masks, applied zero-shot.

Example:
    >>> from anomalib_faprompt import AnomalyCLIP
    >>> model = AnomalyCLIP()  # doctest: +SKIP

Paper:
    Zhou et al., "AnomalyCLIP: Object-agnostic Prompt Learning for Zero-shot Anomaly Detection",
    ICLR 2024.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule
from anomalib.visualization import Visualizer
from torch import nn

from anomalib_faprompt.components import build_backbone
from anomalib_faprompt.models.base import PromptLearningModule

from .torch_model import AnomalyCLIPModel

__all__ = ["AnomalyCLIP"]


class AnomalyCLIP(PromptLearningModule, AnomalibModule):
    """AnomalyCLIP as an anomalib model (spec section 8).

    ``AnomalibModule`` is listed as a direct base because anomalib's ``get_model("AnomalyCLIP")`` searches
    only the direct subclasses of ``AnomalibModule``.

    Args:
        backbone: open_clip model name.
        pretrained: open_clip pretrained tag, path to a local weights file, or ``None`` for random weights.
        backbone_config: Config dict of a randomly initialised open_clip CLIP (tests, tiny backbones).
        image_size: Working image side ``S``.
        vv_layers: Number of final vision blocks with the value-value path.
        n_ctx: Learned tokens per prompt.
        prompt_depth: Deep-prompt depth.
        prompt_length: Deep-prompt length ``t``.
        abnormal_word: Word before "object" in the abnormal prompt.
        temperature: Softmax temperature ``tau``.
        sigma: Gaussian blur sigma of the pixel map, in pixels at ``image_size``.
        local_weight: Weight of ``L_local(M)``.
        ce_weight: Weight of ``L_ce``.
        learning_rate: Adam learning rate.
        betas: Adam betas.
        pixel_losses: Train with the local (pixel) losses; ``False``: image-level losses only (data without masks).
        weights: Checkpoint of a trained model to start from; the model is then zero-shot (``Engine.fit``
            only validates), e.g. in anomalib's benchmark on another dataset.
        pre_processor: Pre-processor, or ``True`` for the default (bicubic resize, CLIP mean/std).
        post_processor: Post-processor, or ``True`` for thresholding of the probabilities at 0.5.
        evaluator: Evaluator, or ``True`` for image AUROC/AUPR and pixel AUROC/AUPRO.
        visualizer: Visualizer, or ``True`` for anomalib's default.
    """

    def __init__(
        self,
        backbone: str = "ViT-L-14-336",
        pretrained: str | None = "openai",
        backbone_config: dict[str, Any] | None = None,
        image_size: int = 518,
        vv_layers: int = 19,
        n_ctx: int = 12,
        prompt_depth: int = 9,
        prompt_length: int = 4,
        abnormal_word: str = "damaged",
        temperature: float = 0.07,
        sigma: float = 4.0,
        local_weight: float = 4.0,
        ce_weight: float = 1.0,
        learning_rate: float = 1e-3,
        betas: tuple[float, float] = (0.5, 0.999),
        pixel_losses: bool = True,
        weights: str | None = None,
        pre_processor: nn.Module | bool = True,
        post_processor: nn.Module | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        super().__init__(
            image_size=image_size,
            learning_rate=learning_rate,
            betas=betas,
            pixel_losses=pixel_losses,
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        self.model = AnomalyCLIPModel(
            build_backbone(backbone, pretrained, backbone_config, image_size, vv_layers),
            n_ctx=n_ctx,
            prompt_depth=prompt_depth,
            prompt_length=prompt_length,
            abnormal_word=abnormal_word,
            temperature=temperature,
            sigma=sigma,
        )
        self.load_trained_weights(weights)
        self.loss_weights = {"local": local_weight, "ce": ce_weight}

    def compute_losses(
        self, images: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        """``L_local(M)`` and ``L_ce``, unweighted.

        Args:
            images: ``(B, 3, S, S)`` normalised images.
            labels: ``(B,)`` image labels.
            masks: ``(B, S, S)`` binary masks, or ``None`` for the image-level terms only.

        Returns:
            Loss terms by name.
        """
        output = self.model(images)
        return {
            **self.local_losses(masks, local=output.abnormal_map),
            "ce": F.cross_entropy(output.global_logits, labels.long()),
        }
