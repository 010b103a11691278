"""What every prompt-learning CLIP model of this package shares as an anomalib module.

The models learn on an auxiliary dataset with defect masks and are then applied zero-shot, so:
the pre-processor resizes to the model's working size with CLIP's normalisation; the post-processor
thresholds the model's probabilities at 0.5 without per-dataset normalisation statistics (which
would distort scores on a dataset the model was not trained on); training data must hold defect
images with masks (:mod:`.targets`); checkpoints hold the learned prompts (:mod:`.checkpoint`). With
``false_alarm_rate`` the labels come from thresholds calibrated on normal images (:mod:`.calibration`).

A model subclass declares its hyperparameters as ``__init__`` arguments, with their defaults (the one
place they are written; anomalib's CLI reads the signature and Lightning saves them in ``self.hparams``),
passes the four anomalib components to this class's ``__init__``, and implements :meth:`build_model`
(the torch model, from ``self.hparams``) and :meth:`compute_losses`; ``LOSS_TERMS`` names the loss terms,
each weighted by the hyperparameter ``<term>_weight``. This class checks the hyperparameters before
anything expensive is built, and enforces the contract at construction.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from anomalib import LearningType
from anomalib.data import Batch
from anomalib.metrics import Evaluator
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from torch import nn
from torchvision.transforms.v2 import Compose, InterpolationMode, Normalize, Resize

from anomalib_faprompt.components import PromptedCLIPModel, build_backbone, plain_config
from anomalib_faprompt.components.options import check_choice, check_count, check_positive, check_sigma
from anomalib_faprompt.data.references import folder_candidates
from anomalib_faprompt.metrics import PerCategoryEvaluator

from .authors import AuthorsLayout, is_authors_file, load_authors_prompts
from .calibration import CalibrationMixin
from .checkpoint import (
    CheckedCheckpointIO,
    check_checkpoint,
    check_checkpoint_file,
    check_is_checkpoint,
    keep_post_processor,
    load_file,
    restore_frozen,
    strip_frozen,
)
from .export import PromptExportMixin
from .few_shot import FewShotMixin
from .post_processor import ModelLabelsPostProcessor
from .pre_processor import CLIPPreProcessor
from .predictions import PredictionScoresWriter
from .targets import TrainingTargets
from .visualizer import CategoryImageVisualizer

__all__ = ["PromptLearningModule"]

logger = logging.getLogger(__name__)

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _check_hyperparameters(model: PromptLearningModule) -> None:
    """Every check of a hyperparameter that needs no backbone, so that a bad value fails before CLIP is loaded.

    The torch models check only what depends on the backbone (depths, the patch grid, the context length).
    """
    hparams, loss_terms = model.hparams, model.LOSS_TERMS
    for name, options in model.CHOICES.items():
        if hparams[name] is not None:
            check_choice(name, hparams[name], options)
    check_count("image_size", hparams.image_size)
    for name in ("vv_layers", "prompt_depth", "prompt_length", *(key for key in hparams if key.startswith("n_"))):
        check_count(name, hparams[name])
    check_positive("temperature", hparams.temperature)
    check_positive("learning_rate", hparams.learning_rate)
    check_sigma(hparams.sigma, hparams.image_size)
    betas = tuple(hparams.betas)
    if len(betas) != 2 or not all(0 <= beta < 1 for beta in betas):
        msg = f"betas={list(betas)} must be two numbers in [0, 1) (Adam's betas)."
        raise ValueError(msg)
    for term in loss_terms:
        weight = hparams[f"{term}_weight"]
        if not weight >= 0:
            msg = f"{term}_weight={weight!r} must be a number of at least 0."
            raise ValueError(msg)
    if hparams.weights is not None:
        check_checkpoint_file(hparams.weights, "argument `weights`", model.name)
    check_count("k_shot", hparams.k_shot, minimum=0)
    if hparams.few_shot_layers is not None:
        if not hparams.few_shot_layers:
            msg = "few_shot_layers=[] names no block: give block numbers (from 1), or None for the default."
            raise ValueError(msg)
        for layer in hparams.few_shot_layers:
            check_count("few_shot_layers", layer)
    if hparams.few_shot_source is not None:
        if not hparams.k_shot:
            msg = "few_shot_source is used only with k_shot > 0: set `k_shot` (how many of its images to use)."
            raise ValueError(msg)
        folder_candidates(hparams.few_shot_source)
    rate = hparams.false_alarm_rate
    if rate is not None and not (isinstance(rate, int | float) and math.isfinite(rate) and 0 < rate < 1):
        msg = f"false_alarm_rate={rate!r} must be a number between 0 and 1 (0.05: 5% of normal images flagged)."
        raise ValueError(msg)
    if hparams.calibration_source is not None:
        if rate is None:
            msg = "calibration_source is used only with a false_alarm_rate: set `false_alarm_rate` (e.g. 0.05)."
            raise ValueError(msg)
        folder_candidates(hparams.calibration_source, "calibration_source")


class PromptLearningModule(CalibrationMixin, FewShotMixin, PromptExportMixin):
    """What the prompt-learning CLIP models (FAPrompt, AnomalyCLIP) share: a mixin put before ``AnomalibModule``.

    A model is ``class FAPrompt(PromptLearningModule, AnomalibModule)``; this class is no ``AnomalibModule``
    itself, so anomalib's ``list_models()`` (the direct subclasses of ``AnomalibModule``) lists the models only.

    Args:
        pre_processor: Pre-processor or ``True`` for the default.
        post_processor: Post-processor or ``True`` for the default (labels at the calibrated thresholds, else 0.5);
            one given here sets the thresholds itself, before any calibrated one.
        evaluator: Evaluator or ``True`` for the default.
        visualizer: Visualizer or ``True`` for the default (:class:`CategoryImageVisualizer`).

    Raises:
        TypeError: The subclass does not follow the contract above.
        ValueError: A hyperparameter is out of range (the message names it).
    """

    LOSS_TERMS: ClassVar[tuple[str, ...]] = ()
    STRUCTURAL_HPARAMS: ClassVar[tuple[str, ...]] = ()
    # The hyperparameters that change scores and maps but that an authors' prompt file does not record.
    UNRECORDED_HPARAMS: ClassVar[tuple[str, ...]] = ()
    # Hyperparameters whose default is ``None``: ``(value, value with an authors' prompt file)``.
    AUTHORS_DEFAULTS: ClassVar[dict[str, tuple[Any, Any]]] = {}
    # Hyperparameters that take one of a ``Literal``'s values (``None``: the default of AUTHORS_DEFAULTS).
    CHOICES: ClassVar[dict[str, Any]] = {}
    model: PromptedCLIPModel

    def __init__(
        self,
        pre_processor: nn.Module | bool = True,
        post_processor: nn.Module | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        arguments = inspect.signature(type(self).__init__).parameters
        missing = [f"{term}_weight" for term in self.LOSS_TERMS if f"{term}_weight" not in arguments]
        overridden = all(
            getattr(type(self), name) is not getattr(PromptLearningModule, name)
            for name in ("build_model", "compute_losses", "authors_layout")
        )
        if not self.LOSS_TERMS or missing or not overridden:
            msg = (
                f"{type(self).__name__} must set LOSS_TERMS, take a `<term>_weight` argument for each (missing: "
                f"{missing}) and implement build_model, compute_losses and authors_layout."
            )
            raise TypeError(msg)
        super().__init__(
            pre_processor=False if pre_processor is True else pre_processor,  # the default needs the image size
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        _check_hyperparameters(self)
        # A post-processor the user gives sets the thresholds; the default one keeps the calibrated labels.
        self.post_processor_given = isinstance(post_processor, nn.Module)
        weights = self.hparams.weights
        content = load_file(type(self), weights, "argument `weights`") if weights is not None else None
        self.hparams.update(self.resolved_defaults(self.hparams, authors_file=is_authors_file(content)))
        if is_authors_file(content):
            self._warn_unlike_authors_test(f"'{weights}'")
        if pre_processor is True:
            self.pre_processor = self.configure_pre_processor((self.image_size,) * 2)
        model = self.build_model()
        if not isinstance(model, PromptedCLIPModel):
            msg = f"{type(self).__name__}.build_model must return a PromptedCLIPModel, not {type(model).__name__}."
            raise TypeError(msg)
        self.model = model
        self.loss_weights = {term: float(self.hparams[f"{term}_weight"]) for term in self.LOSS_TERMS}
        self.targets = TrainingTargets(self.name, self.image_size, self.hparams.pixel_losses)
        self.zero_shot = False
        # Whether the prompts were learned: trained in this run, or loaded from a checkpoint or `weights`.
        self.learned = False
        if content is not None:
            self.load_trained(content, f"'{weights}' (argument `weights`)")

    @property
    def image_size(self) -> int:
        """Working image side ``S`` (the ``image_size`` hyperparameter)."""
        return self.hparams.image_size

    def build_backbone(self) -> nn.Module:
        """The frozen CLIP backbone of the hyperparameters (``backbone``, ``pretrained``, ``backbone_config``, ...)."""
        hparams = self.hparams
        return build_backbone(
            hparams.backbone, hparams.pretrained, hparams.backbone_config, hparams.image_size, hparams.vv_layers
        )

    def build_model(self) -> PromptedCLIPModel:
        """The torch model, built from ``self.hparams``."""
        raise NotImplementedError

    def compute_losses(
        self, images: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        """Unweighted loss terms of one batch, named as in ``LOSS_TERMS`` (``masks`` ``None``: image-level only)."""
        raise NotImplementedError

    def authors_layout(self) -> AuthorsLayout:
        """Where the tensors of an authors' prompt file go in ``self.model`` (the model folder's ``authors_layout``)."""
        raise NotImplementedError

    def weighted_loss(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """The training objective: the sum of the loss terms, each times its weight."""
        return sum(self.loss_weights[name] * value for name, value in losses.items())

    def training_step(self, batch: Batch, *args, **kwargs) -> torch.Tensor:  # noqa: ARG002
        """One training step: every loss term, each logged, and their weighted sum."""
        labels, masks = self.targets(batch)
        losses = self.compute_losses(batch.image, labels, masks)
        total = self.weighted_loss(losses)
        batch_size = labels.shape[0]
        for name, value in losses.items():
            self.log(f"train_loss_{name}", value, on_step=False, on_epoch=True, batch_size=batch_size, sync_dist=True)
        self.log("train_loss", total, on_step=True, on_epoch=True, prog_bar=True, batch_size=batch_size, sync_dist=True)
        return total

    def validation_step(self, batch: Batch, *args, **kwargs) -> Batch:  # noqa: ARG002
        """Predict scores and maps for a validation batch."""
        predictions = self.model(batch.image)
        return batch.update(**predictions._asdict())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam over the prompt parameters (and the prior network): everything but the frozen CLIP."""
        return torch.optim.Adam(
            self.model.learned_parameters(), lr=self.hparams.learning_rate, betas=tuple(self.hparams.betas)
        )

    @classmethod
    def configure_pre_processor(cls, image_size: tuple[int, int] | None = None) -> PreProcessor:
        """Bicubic resize to the working size (no aspect preservation), OpenAI CLIP mean/std.

        Args:
            image_size: ``(S, S)``; defaults to ``(518, 518)``.

        Returns:
            The pre-processor.
        """
        image_size = image_size or (518, 518)
        transform = Compose(
            [
                Resize(image_size, antialias=True, interpolation=InterpolationMode.BICUBIC),
                Normalize(mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD),
            ]
        )
        return CLIPPreProcessor(transform=transform)

    def configure_post_processor(self) -> ModelLabelsPostProcessor:
        """Label at the calibrated thresholds, else 0.5; no normalisation with statistics of the training data."""
        return ModelLabelsPostProcessor()

    @staticmethod
    def configure_evaluator() -> PerCategoryEvaluator:
        """Image AUROC and AUPR, pixel AUROC and AUPRO, per test category and averaged (validation: AUROCs).

        With one test dataloader this logs what anomalib's ``Evaluator`` logs; with one dataloader per
        category (the zero-shot protocol) it logs each category and the mean over categories.
        """
        return PerCategoryEvaluator()

    @classmethod
    def configure_visualizer(cls) -> CategoryImageVisualizer:
        """Image visualiser of anomalib, writing ``images/<category>/<path in the category>`` once per image."""
        return CategoryImageVisualizer()

    def configure_callbacks(self) -> list:
        """The components of anomalib, and the writer of ``predictions.csv`` (file, score, label) for ``predict``."""
        return [*super().configure_callbacks(), PredictionScoresWriter()]

    @property
    def learning_type(self) -> LearningType:
        """ZERO_SHOT when started from trained weights (the Engine then never trains); else ONE_CLASS, so it trains."""
        return LearningType.ZERO_SHOT if self.zero_shot else LearningType.ONE_CLASS

    @property
    def trainer_arguments(self) -> dict:
        """A checkpoint IO naming a missing or damaged ``ckpt_path`` file in one line (:class:`CheckedCheckpointIO`)."""
        return {"plugins": [CheckedCheckpointIO(type(self))]}

    @classmethod
    def resolved_defaults(cls, hparams: Mapping[str, Any], authors_file: bool) -> dict[str, Any]:
        """The values of the ``None`` defaults of :attr:`AUTHORS_DEFAULTS` in ``hparams`` (theirs with their file)."""
        defaults = cls.AUTHORS_DEFAULTS.items()
        return {name: values[authors_file] for name, values in defaults if hparams.get(name) is None}

    def authors_test_settings(self) -> dict[str, Any]:
        """The :attr:`UNRECORDED_HPARAMS` as the authors' ``test.sh`` runs them with their prompt files."""
        defaults = inspect.signature(type(self).__init__).parameters
        return {
            name: self.AUTHORS_DEFAULTS[name][1] if name in self.AUTHORS_DEFAULTS else defaults[name].default
            for name in self.UNRECORDED_HPARAMS
        }

    def _warn_unlike_authors_test(self, file: str) -> None:
        """Say in one log warning, naming each, which settings differ from the authors' test with their file."""
        differing = [
            f"{name}={self.hparams[name]!r} (their test: {value!r})"
            for name, value in self.authors_test_settings().items()
            if plain_config(self.hparams[name]) != plain_config(value)
        ]
        if differing:
            logger.warning(
                "%s runs the authors' prompt file %s with other settings than their test.py/test.sh: %s. Its scores "
                "and maps will differ from theirs; leave these arguments out to compute what their code computes.",
                self.name,
                file,
                ", ".join(differing),
            )

    def load_trained(self, content: object, where: str) -> None:
        """Start from trained prompts, and be zero-shot from then on.

        ``content`` is a checkpoint written by training this model (``.../weights/lightning/model.ckpt``), or a
        prompt file of the authors' code (:mod:`.authors`). Loads what it holds of ``self.model``: the learned
        parameters (prompts, prior network) and, when a checkpoint has them, the CLIP weights (a randomly
        initialised CLIP travels with the checkpoint; pretrained CLIP weights come from ``pretrained`` and must be
        the ones the prompts were trained on). The model then reports ``LearningType.ZERO_SHOT``, so
        ``Engine.fit`` only validates: anomalib's benchmark, which calls ``fit`` and then ``test`` on the target
        dataset, never trains there.

        Raises:
            ValueError: The file is no anomalib checkpoint nor authors' prompt file, or holds another model, other
                hyperparameters or sizes, or prompts trained on other CLIP weights or prompt texts.
        """
        if is_authors_file(content):
            load_authors_prompts(self.model, self.authors_layout(), self.name, content, where)
        else:
            check_is_checkpoint(content, where)
            check_checkpoint(self, content, where)
            state = content["state_dict"]
            self.keep_or_clear_thresholds(state)
            self.model.load_state_dict(
                {key.removeprefix("model."): value for key, value in state.items() if key.startswith("model.")},
                strict=False,
            )
        self.zero_shot = True
        self.learned = True

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Save a checkpoint that stands on its own, without pretrained CLIP weights (see :mod:`.checkpoint`)."""
        super().on_save_checkpoint(checkpoint)
        strip_frozen(self, checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Check the checkpoint, fill in the CLIP weights it left out, and keep the post-processor this model has.

        The post-processor is the one the model was built with (its thresholds are what the user asked for): the
        checkpoint's post-processor settings and state (e.g. a threshold computed on the training's validation
        images) are not loaded. Calibrated thresholds travel only for the model's own ``false_alarm_rate``.
        """
        path = self.trainer.ckpt_path if self._trainer is not None else None
        check_checkpoint(self, checkpoint, f"'{path}'" if path else "The checkpoint")
        restore_frozen(self, checkpoint)
        keep_post_processor(self, checkpoint)
        self.keep_or_clear_thresholds(checkpoint["state_dict"])
        super().on_load_checkpoint(checkpoint)
        self.learned = True

    def on_train_start(self) -> None:
        """Stop before training when the training data visibly holds no anomalous image."""
        self.targets.start(self.trainer)
        self.learned = True

    def warn_if_unlearned(self, done: str, consequence: str) -> None:
        """Log a warning when the prompts were never learned (no training, checkpoint or ``weights``).

        Args:
            done: What is done with them, e.g. "tested".
            consequence: What that means for the user, e.g. "the table below is that of a random start".
        """
        if not self.learned:
            logger.warning(
                "%s is %s with prompts that were never trained: no `ckpt_path`, no `weights` and no training in this "
                "run, so %s. Pass the checkpoint of a training, `--ckpt_path <run>/weights/lightning/model.ckpt` (or "
                "`--model.weights`).",
                self.name,
                done,
                consequence,
            )

    def on_test_start(self) -> None:
        """Warn when the prompts to be tested were never learned."""
        super().on_test_start()
        self.warn_if_unlearned("tested", "the table below is that of a random start")

    def on_predict_start(self) -> None:
        """Warn when the prompts to predict with were never learned."""
        super().on_predict_start()
        self.warn_if_unlearned("run by `predict`", "its scores and maps are those of a random start")

    def on_train_epoch_end(self) -> None:
        """Stop when a whole epoch of data without a samples table held no anomalous image."""
        self.targets.end_epoch()
