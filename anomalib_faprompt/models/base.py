"""What every prompt-learning CLIP model of this package shares as an anomalib module.

The models learn on an auxiliary dataset with defect masks and are then applied zero-shot, so:
the pre-processor resizes to the model's working size with CLIP's normalisation; the post-processor
thresholds the model's probabilities at 0.5 without per-dataset normalisation statistics (which
would distort scores on a dataset the model was not trained on); training data must hold defect
images with masks (:mod:`.targets`); checkpoints hold the learned prompts (:mod:`.checkpoint`), and a
weights file is read once and told apart (:mod:`.inspection`). With ``false_alarm_rate`` the labels come from
thresholds calibrated on normal images (:mod:`.calibration`).

The contract of a model subclass (its folder: ``lightning_model.py``, ``torch_model.py``, ``authors_layout.py``):

- its ``__init__`` takes the hyperparameters, with their defaults (the one place they are written; anomalib's CLI
  reads the signature and Lightning saves them in ``self.hparams``), and passes the four anomalib components on to
  this class's ``__init__``;
- it takes every hyperparameter of :data:`~.hyperparameters.SHARED_HYPERPARAMETERS` (this class and its mixins read
  them), declares the facts of its own in ``HYPERPARAMETERS`` (:class:`~.hyperparameters.Hyperparameter`), and
  names its loss terms in ``LOSS_TERMS``, each weighted by a hyperparameter ``<term>_weight``;
- it implements :meth:`build_model` (the torch model, from ``self.hparams``), :meth:`compute_losses` and
  :meth:`authors_layout` (where an authors' prompt file's tensors go, :mod:`.authors`).

A class that breaks it is refused with a ``TypeError`` when it is defined. This class checks the hyperparameters'
values before anything expensive is built.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from pathlib import Path
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
from anomalib_faprompt.components.options import check_sigma
from anomalib_faprompt.data.references import folder_candidates
from anomalib_faprompt.metrics import PerCategoryEvaluator

from .authors import AuthorsLayout, load_authors_prompts
from .calibration import CalibrationMixin
from .checkpoint import check_checkpoint, keep_post_processor, restore_frozen, strip_frozen
from .export import PromptExportMixin
from .few_shot import FewShotMixin, run_seed
from .hyperparameters import Hyperparameter, check_values, declared_hyperparameters
from .inspection import CheckedCheckpointIO, WeightsFile, inspect_weights
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

    Each value on its own is checked as its facts say (:mod:`.hyperparameters`); here the checks across arguments.
    The torch models check only what depends on the backbone (depths, the patch grid, the context length).
    """
    hparams = model.hparams
    check_values(type(model), model.hyperparameter_facts(), hparams)
    check_sigma(hparams.sigma, hparams.image_size)
    if hparams.few_shot_source is not None:
        if not hparams.k_shot:
            msg = "few_shot_source is used only with k_shot > 0: set `k_shot` (how many of its images to use)."
            raise ValueError(msg)
        folder_candidates(hparams.few_shot_source)
    if hparams.calibration_source is not None:
        if hparams.false_alarm_rate is None:
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
        TypeError: ``build_model`` returned no :class:`PromptedCLIPModel`.
        ValueError: A hyperparameter is out of range (the message names it).
    """

    LOSS_TERMS: ClassVar[tuple[str, ...]] = ()
    HYPERPARAMETERS: ClassVar[dict[str, Hyperparameter]] = {}
    model: PromptedCLIPModel

    def __init_subclass__(cls, **kwargs: object) -> None:
        """Refuse, when it is defined, a model class that does not follow the contract (the module's docstring).

        Raises:
            TypeError: The class breaks the contract; the message names what to add or correct.
        """
        super().__init_subclass__(**kwargs)
        arguments = inspect.signature(cls.__init__).parameters
        missing = [f"{term}_weight" for term in cls.LOSS_TERMS if f"{term}_weight" not in arguments]
        overridden = all(
            getattr(cls, name) is not getattr(PromptLearningModule, name)
            for name in ("build_model", "compute_losses", "authors_layout")
        )
        if not cls.LOSS_TERMS or missing or not overridden:
            msg = (
                f"{cls.__name__} must set LOSS_TERMS, take a `<term>_weight` argument for each (missing: "
                f"{missing}) and implement build_model, compute_losses and authors_layout."
            )
            raise TypeError(msg)
        cls.hyperparameter_facts()

    def __init__(
        self,
        pre_processor: nn.Module | bool = True,
        post_processor: nn.Module | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
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
        file = inspect_weights(type(self), weights, "argument `weights`") if weights is not None else None
        authors_file = file is not None and file.is_authors
        self.hparams.update(self.resolved_defaults(self.hparams, authors_file=authors_file))
        if authors_file:
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
        if file is not None:
            self.load_trained(file)

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
        """A checkpoint IO reading ``ckpt_path`` once and naming a bad file in one line (:mod:`.inspection`)."""
        return {"plugins": [CheckedCheckpointIO(type(self))]}

    @classmethod
    def hyperparameter_facts(cls) -> dict[str, Hyperparameter]:
        """The facts of every hyperparameter, in the order of the signature: shared, the model's own, loss weights.

        Raises:
            TypeError: The signature and the declared hyperparameters differ (:func:`declared_hyperparameters`).
        """
        components = inspect.signature(PromptLearningModule.__init__).parameters
        return declared_hyperparameters(cls, cls.HYPERPARAMETERS, cls.LOSS_TERMS, components)

    @classmethod
    def resolved_defaults(cls, hparams: Mapping[str, Any], authors_file: bool) -> dict[str, Any]:
        """The values that the ``None``s of ``hparams`` stand for (``none_means``; the authors' with their file)."""
        return {
            name: fact.none_means[authors_file]
            for name, fact in cls.hyperparameter_facts().items()
            if fact.none_means is not None and hparams.get(name) is None
        }

    def authors_test_settings(self) -> dict[str, Any]:
        """The ``unrecorded`` hyperparameters as the authors' ``test.sh`` runs them with their prompt files."""
        defaults = inspect.signature(type(self).__init__).parameters
        return {
            name: fact.none_means[1] if fact.none_means is not None else defaults[name].default
            for name, fact in self.hyperparameter_facts().items()
            if fact.unrecorded
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

    def load_trained(self, file: WeightsFile) -> None:
        """Start from trained prompts, and be zero-shot from then on.

        ``file`` (:func:`.inspection.inspect_weights`, not read again) is a checkpoint written by training this
        model (``.../weights/lightning/model.ckpt``), or a prompt file of the authors' code (:mod:`.authors`). Checks
        it against ``self.model`` and loads what it holds of it: the learned parameters (prompts, prior network)
        and, when a checkpoint has them, the CLIP weights (a randomly initialised CLIP travels with the checkpoint;
        pretrained CLIP weights come from ``pretrained`` and must be the ones the prompts were trained on). The
        model then reports ``LearningType.ZERO_SHOT``, so ``Engine.fit`` only validates: anomalib's benchmark, which
        calls ``fit`` and then ``test`` on the target dataset, never trains there.

        Raises:
            ValueError: The file holds another model, other hyperparameters or sizes, or prompts trained on other
                CLIP weights or prompt texts.
        """
        if file.is_authors:
            load_authors_prompts(self.model, self.authors_layout(), self.name, file.content, file.where)
        else:
            checkpoint = file.checkpoint()
            check_checkpoint(self, checkpoint, file.where)
            state = checkpoint["state_dict"]
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

    def prepare_export(self, folder: Path | str) -> None:
        """Make the model ready for an export into ``folder``, the model file's (:class:`.export.PromptExportMixin`).

        With ``k_shot``, references are needed (:meth:`check_references_for_export`); with ``false_alarm_rate``,
        thresholds for it (:meth:`check_thresholds_for_export`, a calibration listed in ``folder``): both drawn
        from their source folders with the run's seed when the model has none. Warns when the prompts were never
        learned.

        Raises:
            InvalidInputError: References or thresholds are needed and there is no folder to take them from.
        """
        seed = run_seed()
        self.check_references_for_export(seed)
        self.check_thresholds_for_export(folder, seed)
        self.warn_if_unlearned("exported", "the exported model scores as a random start")

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
