"""FAPrompt: Fine-grained Abnormality Prompt Learning for Zero-shot Anomaly Detection.

FAPrompt learns text prompts for a frozen CLIP on an auxiliary dataset with defect masks, then
detects and segments anomalies on datasets it never saw, with no further training.

Example:
    >>> from anomalib.engine import Engine
    >>> from anomalib_faprompt import FAPrompt
    >>> from anomalib_faprompt.data import AuxiliaryDataModule
    >>> model = FAPrompt()  # doctest: +SKIP
    >>> Engine(max_epochs=15).fit(model, AuxiliaryDataModule(root="./datasets/MVTecAD"))  # doctest: +SKIP

Paper:
    Zhu et al., "Fine-grained Abnormality Prompt Learning for Zero-shot Anomaly Detection",
    arXiv 2410.10289, ICCV 2025.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule
from anomalib.visualization import Visualizer
from torch import nn

from anomalib_faprompt.components import binary_focal_loss, local_losses, orthogonality_loss, prior_loss
from anomalib_faprompt.components.options import GlobalLossInput, LocalScore, PatchSelection, check_count
from anomalib_faprompt.models.authors import AuthorsLayout
from anomalib_faprompt.models.base import PromptLearningModule
from anomalib_faprompt.models.hyperparameters import Hyperparameter

from .authors_layout import authors_layout
from .torch_model import FAPromptModel

__all__ = ["RELEASED_CODE", "FAPrompt"]

RELEASED_CODE: dict[str, Any] = {
    "abnormal_word": "damaged",
    "patch_selection": "first_k",
    "local_score": "released",
    "global_loss_input": "logits",
}
"""The arguments that reproduce the authors' released code where it differs from the paper."""


class FAPrompt(PromptLearningModule, AnomalibModule):
    """FAPrompt as an anomalib model.

    The defaults are the paper's, except ``abnormal_word`` (the released code's "damaged");
    :meth:`released_code` (or ``configs/faprompt_released_code.yaml``) reproduces the released code.

    ``AnomalibModule`` is listed as a direct base because anomalib's ``get_model("FAPrompt")`` searches
    only the direct subclasses of ``AnomalibModule``.

    Args:
        backbone: open_clip model name.
        pretrained: open_clip pretrained tag, path to a local weights file, or ``None`` for random weights.
        backbone_config: Config dict of a randomly initialised open_clip CLIP (tests, tiny backbones);
            overrides ``backbone``'s architecture.
        image_size: Working image side ``S``.
        vv_layers: Number of final vision blocks with the value-value path ``L_vv``.
        n_ctx: Shared learned prompt tokens ``E``.
        n_abnormal_ctx: Learned abnormality tokens ``E'`` per abnormal prompt.
        n_abnormal_prompts: Number ``K`` of compound abnormality prompts.
        n_prior_patches: Number ``M`` of most abnormal patches fed to the prior network.
        prompt_depth: Deep-prompt depth.
        prompt_length: Deep-prompt length ``t``.
        abnormal_word: Word before "object" in the abnormal prompts (``""``: none, as in the paper).
        patch_selection: ``"topk"`` (paper) or ``"first_k"`` (released code); ``None``: ``"topk"``, or
            ``"first_k"`` with an authors' prompt file as ``weights`` (as their test).
        local_score: ``"paper"`` or ``"released"`` local image score; ``None``: ``"paper"``, or ``"released"``
            with an authors' prompt file as ``weights``.
        temperature: Softmax temperature ``tau``.
        sigma: Gaussian blur sigma of the pixel map, in pixels at ``image_size``.
        local_weight: Weight of ``L_local(M)``.
        dap_local_weight: Weight of ``L_local(M^)``.
        ce_weight: Weight of ``L_ce``.
        global_weight: Weight of ``L_global``.
        orthogonality_weight: Weight of ``L_oc``.
        prior_weight: Weight of ``L_prior``.
        global_loss_input: ``"probability"`` or ``"logits"`` (released quirk) for ``L_global``.
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

    LOSS_TERMS = ("local", "dap_local", "ce", "global", "orthogonality", "prior")
    HYPERPARAMETERS: ClassVar[dict[str, Hyperparameter]] = {
        "n_abnormal_ctx": Hyperparameter(structural=True, check=check_count),
        "n_abnormal_prompts": Hyperparameter(structural=True, check=check_count),
        "n_prior_patches": Hyperparameter(structural=True, check=check_count),
        "patch_selection": Hyperparameter(structural=True, unrecorded=True, none_means=("topk", "first_k")),
        "local_score": Hyperparameter(structural=True, unrecorded=True, none_means=("paper", "released")),
        "global_loss_input": Hyperparameter(structural=False),
    }
    """The facts of FAPrompt's own hyperparameters; those of every model are in ``models/hyperparameters.py``."""

    def __init__(
        self,
        backbone: str = "ViT-L-14-336",
        pretrained: str | None = "openai",
        backbone_config: dict[str, Any] | None = None,
        image_size: int = 518,
        vv_layers: int = 19,
        n_ctx: int = 5,
        n_abnormal_ctx: int = 2,
        n_abnormal_prompts: int = 10,
        n_prior_patches: int = 10,
        prompt_depth: int = 9,
        prompt_length: int = 4,
        abnormal_word: str = "damaged",
        patch_selection: PatchSelection | None = None,
        local_score: LocalScore | None = None,
        temperature: float = 0.07,
        sigma: float = 10.0,
        local_weight: float = 1.0,
        dap_local_weight: float = 0.5,
        ce_weight: float = 1.0,
        global_weight: float = 1.0,
        orthogonality_weight: float = 0.1,
        prior_weight: float = 1.0,
        global_loss_input: GlobalLossInput = "probability",
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

    @classmethod
    def released_code(cls, **kwargs: Any) -> FAPrompt:  # noqa: ANN401
        """FAPrompt as the authors' released code computes it (:data:`RELEASED_CODE`), other arguments as given."""
        return cls(**{**RELEASED_CODE, **kwargs})

    def build_model(self) -> FAPromptModel:
        """The torch model of the hyperparameters."""
        hparams = self.hparams
        return FAPromptModel(
            self.build_backbone(),
            n_ctx=hparams.n_ctx,
            n_abnormal_ctx=hparams.n_abnormal_ctx,
            n_abnormal_prompts=hparams.n_abnormal_prompts,
            n_prior_patches=hparams.n_prior_patches,
            prompt_depth=hparams.prompt_depth,
            prompt_length=hparams.prompt_length,
            abnormal_word=hparams.abnormal_word,
            patch_selection=hparams.patch_selection,
            local_score=hparams.local_score,
            temperature=hparams.temperature,
            sigma=hparams.sigma,
            few_shot_layers=hparams.few_shot_layers,
        )

    def authors_layout(self) -> AuthorsLayout:
        """Where the tensors of an authors' FAPrompt prompt file go (:mod:`.authors_layout`)."""
        return authors_layout(self.model)

    def compute_losses(
        self, images: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        """Every loss term of FAPrompt (docs/faprompt.md, section 7), unweighted.

        Args:
            images: ``(B, 3, S, S)`` normalised images.
            labels: ``(B,)`` image labels.
            masks: ``(B, S, S)`` binary masks, or ``None`` for the image-level terms only.

        Returns:
            Loss terms by name.
        """
        output = self.model(images)
        return {
            **local_losses(masks, local=output.abnormal_map, dap_local=output.dap_abnormal_map),
            "ce": F.cross_entropy(output.global_logits, labels.long()),
            "global": binary_focal_loss(
                output.pred_score, labels, scores_are_logits=self.hparams.global_loss_input == "logits"
            ),
            "orthogonality": orthogonality_loss(output.abnormal_text),
            "prior": prior_loss(output.prior, labels),
        }
