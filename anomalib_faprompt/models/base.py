"""What every prompt-learning CLIP model of this package shares as an anomalib module.

The models learn on an auxiliary dataset with defect masks and are then applied zero-shot, so:
the pre-processor resizes to the model's working size with CLIP's normalisation; the post-processor
thresholds the model's probabilities at 0.5 without per-dataset normalisation statistics (which
would distort scores on a dataset the model was not trained on); training data must hold defect
images with masks.
"""

from __future__ import annotations

import pickle
from abc import abstractmethod
from pathlib import Path
from typing import Any

import torch
from anomalib import LearningType
from anomalib.data import Batch
from anomalib.metrics import AUPR, AUROC, Evaluator
from anomalib.models.components import AnomalibModule
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.utils.serialization import anomalib_safe_globals
from anomalib.visualization import Visualizer
from torch import nn
from torchvision.transforms.v2 import Compose, InterpolationMode, Normalize, Resize

from anomalib_faprompt.components import binarise_masks, local_loss
from anomalib_faprompt.deploy import keep_f32
from anomalib_faprompt.metrics import AUPRO, PerCategoryEvaluator

from .pre_processor import CLIPPreProcessor

__all__ = ["NO_DEFECTS_MESSAGE", "PromptLearningModule"]

BACKBONE_PREFIX = "model.backbone.clip."

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

NO_DEFECTS_MESSAGE = (
    "{model} learns from defect images with masks, and its training data holds no anomalous image. "
    "anomalib's usual training splits (e.g. MVTecAD's 'train') contain only normal images. Train on the "
    "test split of an auxiliary dataset instead, e.g. `--data anomalib_faprompt.data.AuxiliaryDataModule "
    "--data.root ./datasets/MVTecAD`, or on a folder with defect images and masks (see the README)."
)


class PromptLearningModule(AnomalibModule):
    """Base of the prompt-learning CLIP models (FAPrompt, AnomalyCLIP).

    Subclasses set ``self.model`` (eval mode returns ``InferenceBatch``), then call
    :meth:`load_trained_weights` with their ``weights`` argument, and set ``self.loss_weights`` (a
    weight for every loss term), and implement :meth:`compute_losses`.

    Args:
        image_size: Working image side; the default pre-processor resizes to it.
        learning_rate: Adam learning rate.
        betas: Adam betas.
        pixel_losses: Train with the pixel (local) losses, which need a mask for every defect image.
            ``False`` trains with the image-level losses only, for data without masks.
        pre_processor: Pre-processor or ``True`` for the default.
        post_processor: Post-processor or ``True`` for the default.
        evaluator: Evaluator or ``True`` for the default.
        visualizer: Visualizer or ``True`` for the default.
    """

    def __init__(
        self,
        image_size: int,
        learning_rate: float,
        betas: tuple[float, float],
        pixel_losses: bool = True,
        pre_processor: nn.Module | bool = True,
        post_processor: nn.Module | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        if pre_processor is True:
            pre_processor = self.configure_pre_processor((image_size, image_size))
        super().__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        self.image_size = image_size
        self.learning_rate = learning_rate
        self.betas = tuple(betas)
        self.pixel_losses = pixel_losses
        self.loss_weights: dict[str, float] = {}
        self._seen_anomalous = False
        self._check_batches = False
        self.weights: str | None = None

    @abstractmethod
    def compute_losses(
        self, images: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        """Unweighted loss terms of one batch (``masks`` is ``None``: image-level terms only)."""

    @staticmethod
    def local_losses(masks: torch.Tensor | None, **abnormal_maps: torch.Tensor) -> dict[str, torch.Tensor]:
        """``L_local`` of each named abnormal map against the masks; none when training image-level only."""
        if masks is None:
            return {}
        return {name: local_loss(abnormal_map, masks) for name, abnormal_map in abnormal_maps.items()}

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimiser updates: everything but the frozen CLIP."""
        return [parameter for parameter in self.model.parameters() if parameter.requires_grad]

    def training_step(self, batch: Batch, *args, **kwargs) -> torch.Tensor:  # noqa: ARG002
        """One training step: every loss term, each logged, and their weighted sum."""
        labels, masks = self.training_targets(batch)
        losses = self.compute_losses(batch.image, labels, masks)
        total = sum(self.loss_weights[name] * value for name, value in losses.items())
        batch_size = labels.shape[0]
        for name, value in losses.items():
            self.log(f"train_loss_{name}", value, on_step=False, on_epoch=True, batch_size=batch_size)
        self.log("train_loss", total, on_step=True, on_epoch=True, prog_bar=True, batch_size=batch_size)
        return total

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

    def configure_post_processor(self) -> PostProcessor:
        """Threshold the probabilities at 0.5; no normalisation with statistics of the training data."""
        return PostProcessor(enable_normalization=False)

    @staticmethod
    def configure_evaluator() -> PerCategoryEvaluator:
        """Image AUROC and AUPR, pixel AUROC and AUPRO, per test category and averaged (validation: AUROCs).

        With one test dataloader this logs what anomalib's ``Evaluator`` logs; with one dataloader per
        category (the zero-shot protocol) it logs each category and the mean over categories.
        """
        val_metrics = [
            AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
            AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
        ]
        test_metrics = [
            AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
            AUPR(fields=["pred_score", "gt_label"], prefix="image_"),
            AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
            AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
        ]
        return PerCategoryEvaluator(val_metrics=val_metrics, test_metrics=test_metrics)

    @property
    def learning_type(self) -> LearningType:
        """ZERO_SHOT with trained ``weights`` (the Engine then never trains); else ONE_CLASS, so that it trains."""
        return LearningType.ZERO_SHOT if self.weights else LearningType.ONE_CLASS

    def load_trained_weights(self, weights: str | None) -> None:
        """Start from a trained checkpoint of this model, and be zero-shot from then on.

        Loads what the checkpoint holds of ``self.model``: the learned parameters (prompts, prior network)
        and, when it has them, the CLIP weights (a randomly initialised CLIP travels with the checkpoint;
        pretrained CLIP weights come from ``pretrained`` and must be the ones the prompts were trained on).
        With weights the model reports ``LearningType.ZERO_SHOT``, so ``Engine.fit`` only validates:
        anomalib's benchmark, which calls ``fit`` and then ``test`` on the target dataset, never trains there.

        Args:
            weights: Path to a checkpoint written by training this model (``.../weights/lightning/model.ckpt``),
                or ``None`` to keep the fresh initialisation (and train as usual).

        Raises:
            FileNotFoundError: The file does not exist.
            ValueError: The file is no anomalib checkpoint, or holds another model, other sizes or prompts
                trained on other CLIP weights.
        """
        self.weights = weights
        if weights is None:
            return
        if not Path(weights).is_file():
            msg = (
                f"{self.name} checkpoint '{weights}' (argument `weights`) does not exist. Pass the checkpoint of a "
                f"trained {self.name}, e.g. the `weights/lightning/model.ckpt` written by `anomalib train --model "
                f"{self.name}`, or `weights=None` to train from scratch."
            )
            raise FileNotFoundError(msg)
        try:
            with anomalib_safe_globals(extra=self.checkpoint_safe_globals()):
                checkpoint = torch.load(weights, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            msg = f"'{weights}' (argument `weights`) is not a readable anomalib checkpoint: {reason}"
            raise ValueError(msg) from error
        state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
        if state is None:
            msg = f"'{weights}' (argument `weights`) is not an anomalib checkpoint: it has no 'state_dict'."
            raise ValueError(msg)
        saved = {key.removeprefix("model."): value for key, value in state.items() if key.startswith("model.")}
        ours = self.model.state_dict()
        unexpected = sorted(set(saved) - set(ours))
        missing = [name for name, value in self.model.named_parameters() if value.requires_grad and name not in saved]
        if unexpected or missing:
            found = f"lacks {missing}" if missing else f"has {unexpected[:5]}, unknown to {self.name}"
            msg = (
                f"'{weights}' (argument `weights`) is not a checkpoint of {self.name}: it {found}. "
                f"Pass a checkpoint written by training {self.name}."
            )
            raise ValueError(msg)
        resized = [
            f"{name} is {tuple(value.shape)} there, {tuple(ours[name].shape)} here"
            for name, value in saved.items()
            if value.shape != ours[name].shape
        ]
        if resized:
            msg = (
                f"'{weights}' (argument `weights`) was trained with other sizes ({'; '.join(resized[:3])}). Construct "
                f"the {self.name} with the hyperparameters it was trained with (backbone, backbone_config, image_size, "
                "n_ctx, prompt_depth, prompt_length, ...)."
            )
            raise ValueError(msg)
        if not any(key.startswith(BACKBONE_PREFIX) for key in state):
            self._check_clip_weights(checkpoint)
        self.model.load_state_dict(saved, strict=False)

    @property
    def trainer_arguments(self) -> dict:
        """No trainer overrides."""
        return {}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam over the prompt parameters (and the prior network)."""
        return torch.optim.Adam(self.trainable_parameters(), lr=self.learning_rate, betas=self.betas)

    def _backbone_fingerprint(self) -> float:
        """A float that changes with the frozen CLIP weights (sum of all their values)."""
        with torch.no_grad():
            return float(sum(parameter.double().sum() for parameter in self.model.backbone.clip.parameters()))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Leave the frozen CLIP weights out of the checkpoint when they come from pretrained weights.

        They are re-created from the ``pretrained`` weights on load, so a checkpoint holds only the learned
        prompts (a few MB instead of the whole CLIP). A randomly initialised CLIP is kept, since it could
        not be re-created.
        """
        super().on_save_checkpoint(checkpoint)
        if self.hparams.get("pretrained") is None:
            return
        state = checkpoint["state_dict"]
        for key in [key for key in state if key.startswith(BACKBONE_PREFIX)]:
            del state[key]
        checkpoint["backbone_fingerprint"] = self._backbone_fingerprint()

    def _check_clip_weights(self, checkpoint: dict) -> None:
        """Refuse a checkpoint without CLIP weights whose prompts were trained on other CLIP weights."""
        expected = checkpoint.get("backbone_fingerprint")
        if expected is not None and abs(self._backbone_fingerprint() - expected) > 1e-6 * max(1.0, abs(expected)):
            msg = (
                f"The checkpoint's prompts were trained on other CLIP weights than this {self.name} loaded "
                f"(backbone={self.hparams.get('backbone')!r}, pretrained={self.hparams.get('pretrained')!r}). "
                "Build the model with the backbone and pretrained weights it was trained with."
            )
            raise ValueError(msg)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Fill in the CLIP weights left out of the checkpoint, after checking they are the same weights."""
        state = checkpoint["state_dict"]
        if not any(key.startswith(BACKBONE_PREFIX) for key in state):
            self._check_clip_weights(checkpoint)
            state.update({key: value for key, value in self.state_dict().items() if key.startswith(BACKBONE_PREFIX)})
        super().on_load_checkpoint(checkpoint)

    def on_train_start(self) -> None:
        """Stop before training when the training data visibly holds no anomalous image."""
        data = getattr(self.trainer.datamodule, "train_data", None) if self.trainer.datamodule else None
        samples = getattr(data, "samples", None)
        self._check_batches = samples is None or "label_index" not in samples
        if not self._check_batches and not (samples["label_index"] == 1).any():
            raise ValueError(NO_DEFECTS_MESSAGE.format(model=self.name))

    def on_train_epoch_end(self) -> None:
        """Stop when a whole epoch of data without a samples table held no anomalous image."""
        if self._check_batches and not self._seen_anomalous:
            raise ValueError(NO_DEFECTS_MESSAGE.format(model=self.name))

    def training_targets(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Image labels ``(B,)`` and binary masks ``(B, S, S)`` of a training batch (``None``: image-level only).

        Masks of another size are resized bilinearly to ``S`` and binarised at 0.5. With ``pixel_losses``,
        a defect image whose sample has no mask file is an error (never an empty mask taken as ground truth).
        """
        if batch.gt_label is None:
            msg = f"{self.name} trains on labelled images; the training batch has no labels."
            raise ValueError(msg)
        labels = batch.gt_label.long()
        if self._check_batches and not self._seen_anomalous:
            self._seen_anomalous = bool((labels == 1).any())
        if not self.pixel_losses:
            return labels, None
        if batch.gt_mask is None:
            msg = (
                f"{self.name} trains its pixel losses on defect masks, and the training batch has no masks. Use a "
                f"datamodule that loads masks, or train with image-level losses only (`pixel_losses=False`)."
            )
            raise ValueError(msg)
        self._check_mask_files(batch, labels)
        return labels, binarise_masks(batch.gt_mask, (self.image_size, self.image_size)).float()

    def _check_mask_files(self, batch: Batch, labels: torch.Tensor) -> None:
        """Raise when a defect image of the batch has no mask file."""
        mask_paths = getattr(batch, "mask_path", None)
        if mask_paths is None:
            return
        for index in (labels == 1).nonzero().flatten().tolist():
            if not mask_paths[index]:
                image = batch.image_path[index] if batch.image_path is not None else f"item {index}"
                msg = (
                    f"Defect image '{image}' has no mask file, and {self.name} trains its pixel losses on masks. "
                    f"Add its mask, or train with image-level losses only (`pixel_losses=False`)."
                )
                raise ValueError(msg)

    def validation_step(self, batch: Batch, *args, **kwargs) -> Batch:  # noqa: ARG002
        """Predict scores and maps for a validation batch."""
        predictions = self.model(batch.image)
        return batch.update(**predictions._asdict())

    def to_onnx(
        self,
        export_root: Path | str,
        model_file_name: str = "model",
        input_size: tuple[int, int] | None = None,
        **kwargs: Any,  # noqa: ANN401
    ) -> Path:
        """Export to ONNX as anomalib does (whole module, dynamo exporter), at opset 18 unless asked otherwise.

        The dynamo exporter implements nothing below opset 18: with anomalib's default of 14 it attempts a
        down-conversion that fails on this graph and keeps opset 18 anyway, after logging a traceback.
        Text embeddings that do not depend on the image are eval-mode buffers and enter the graph as constants;
        everything that depends on the image (for FAPrompt the prior network and the DAP text-encoder pass) is
        traced, with a dynamic batch size.
        """
        kwargs.setdefault("opset_version", 18)
        return super().to_onnx(export_root, model_file_name, input_size, **kwargs)

    def to_openvino(self, *args: Any, **kwargs: Any) -> Path:  # noqa: ANN401
        """Export to OpenVINO as anomalib does, with every operation of the IR marked to stay in f32.

        See :mod:`anomalib_faprompt.deploy`: at the CPU plugin's bf16 default, FAPrompt's outputs move by up to 1e-1.
        """
        return keep_f32(super().to_openvino(*args, **kwargs))
