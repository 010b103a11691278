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

from typing import Any, ClassVar

import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule
from anomalib.visualization import Visualizer
from torch import nn

from anomalib_faprompt.components import local_losses
from anomalib_faprompt.models.authors import AuthorsLayout
from anomalib_faprompt.models.base import PromptLearningModule
from anomalib_faprompt.models.hyperparameters import Hyperparameter

from .authors_layout import authors_layout
from .torch_model import AnomalyCLIPModel

__all__ = ["AnomalyCLIP"]


class AnomalyCLIP(PromptLearningModule, AnomalibModule):
    """AnomalyCLIP as an anomalib model (docs/faprompt.md, section 8).

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
        feature_layers: Image blocks (numbered from 1, each with the value-value path) whose patch tokens give
            abnormal maps: the local loss sums over them and the pixel map is their mean. ``None``: the last block
            (``[24]`` for ViT-L, as the authors' train.sh/test.sh); ``[6, 12, 18, 24]`` reproduces the default of
            their train.py/test.py (the released test sums the maps; the mean is that sum divided by their number).
        local_weight: Weight of ``L_local(M)``.
        ce_weight: Weight of ``L_ce``.
        learning_rate: Adam learning rate.
        betas: Adam betas.
        pixel_losses: Train with the local (pixel) losses; ``False``: image-level losses only (data without masks).
        weights: Checkpoint of a trained model to start from, or a prompt file of the authors' code
            (``{"prompt_learner": ...}``, docs/authors-files.md); the model is then zero-shot (``Engine.fit``
            only validates), e.g. in anomalib's benchmark on another dataset.
        k_shot: Normal reference images per category at test and predict time (0: zero-shot); not from the paper,
            see docs/faprompt.md, "Few-shot".
        few_shot_layers: Image blocks (from 1) of the few-shot memory bank; ``None``: the quarter points of the
            image encoder's depth.
        few_shot_source: Folder of normal images whose ``k_shot`` references serve every image; ``None``: each
            category's own training images.
        false_alarm_rate: The share ``a`` (0 < a < 1) of normal images that may be flagged: the labels of ``test``,
            ``predict`` and an export come from thresholds calibrated on normal images (split-conformal; see
            docs/calibration.md); ``None``: the labels at 0.5.
        calibration_source: Folder of normal images that calibrates every image; ``None``: each category's own
            training images (never its few-shot references). Used only with ``false_alarm_rate``.
        pre_processor: Pre-processor, or ``True`` for the default (bicubic resize, CLIP mean/std).
        post_processor: Post-processor, or ``True`` for labels at the calibrated thresholds, else at 0.5; one given
            here sets the thresholds itself (e.g. anomalib's ``PostProcessor(image_sensitivity=...)``).
        evaluator: Evaluator, or ``True`` for image AUROC/AUPR and pixel AUROC/AUPRO.
        visualizer: Visualizer, or ``True`` for anomalib's default.
    """

    LOSS_TERMS = ("local", "ce")
    HYPERPARAMETERS: ClassVar[dict[str, Hyperparameter]] = {
        "feature_layers": Hyperparameter(structural=True, unrecorded=True),  # checked against the backbone
    }
    """The facts of AnomalyCLIP's own hyperparameters; those of every model are in ``models/hyperparameters.py``."""

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
        feature_layers: list[int] | None = None,
        local_weight: float = 4.0,
        ce_weight: float = 1.0,
        learning_rate: float = 1e-3,
        betas: tuple[float, float] = (0.5, 0.999),
        pixel_losses: bool = True,
        weights: str | None = None,
        k_shot: int = 0,
        few_shot_layers: list[int] | None = None,
        few_shot_source: str | None = None,
        false_alarm_rate: float | None = None,
        calibration_source: str | None = None,
        pre_processor: nn.Module | bool = True,
        post_processor: nn.Module | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        super().__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )

    def build_model(self) -> AnomalyCLIPModel:
        """The torch model of the hyperparameters."""
        hparams = self.hparams
        return AnomalyCLIPModel(
            self.build_backbone(),
            n_ctx=hparams.n_ctx,
            prompt_depth=hparams.prompt_depth,
            prompt_length=hparams.prompt_length,
            abnormal_word=hparams.abnormal_word,
            temperature=hparams.temperature,
            sigma=hparams.sigma,
            feature_layers=hparams.feature_layers,
            few_shot_layers=hparams.few_shot_layers,
        )

    def authors_layout(self) -> AuthorsLayout:
        """Where the tensors of an authors' AnomalyCLIP prompt file go (:mod:`.authors_layout`)."""
        return authors_layout(self.model)

    def compute_losses(
        self, images: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        """``L_local(M)`` (summed over the feature layers) and ``L_ce``, unweighted.

        Args:
            images: ``(B, 3, S, S)`` normalised images.
            labels: ``(B,)`` image labels.
            masks: ``(B, S, S)`` binary masks, or ``None`` for the image-level terms only.

        Returns:
            Loss terms by name.
        """
        output = self.model(images)
        return {
            **local_losses(masks, local=output.abnormal_maps),
            "ce": F.cross_entropy(output.global_logits, labels.long()),
        }
