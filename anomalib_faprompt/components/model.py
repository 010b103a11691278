"""The torch-model scaffold shared by AnomalyCLIP and FAPrompt.

Both learn text prompts (with deep prompts) for a frozen :class:`CLIPBackbone`, compare normalised
image embeddings with a normal and an abnormal text embedding, and turn patch probabilities into a
blurred pixel map. Normal reference images, once stored (:meth:`PromptedCLIPModel.store_references`), add the
few-shot map; calibrated thresholds, once stored (:meth:`PromptedCLIPModel.store_thresholds`), add labels and masks
to the eval-mode output. The static text embeddings do not depend on the image: in training mode they are
computed on every forward pass (with gradients); in eval mode they are read from buffers
(:class:`StaticTextCache`) that are recomputed only when the prompts changed, and that an exported graph
holds as constants.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.data import InferenceBatch
from torch import nn

from .blur import GaussianBlur
from .clip import CLIPBackbone
from .few_shot import FewShotBank, default_few_shot_layers
from .maps import upsample_patches
from .precision import autocast_off, float32
from .prompts import DeepPrompts
from .text_cache import StaticTextCache
from .thresholds import CalibratedThresholds

__all__ = ["PromptedCLIPModel", "StaticText"]


class StaticText(NamedTuple):
    """The text embeddings that do not depend on the image.

    Attributes:
        normal: ``(D,)`` normalised normal embedding ``F_n``.
        abnormal: ``(D,)`` normalised abnormal embedding ``F_a`` (mean of the raw abnormal embeddings).
        abnormal_raw: ``(K, D)`` raw abnormal embeddings in training mode (FAPrompt's ``L_oc`` needs them);
            ``None`` in eval mode.
    """

    normal: torch.Tensor
    abnormal: torch.Tensor
    abnormal_raw: torch.Tensor | None


def _normalise(normal: torch.Tensor, abnormal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``F_n`` and ``F_a``: the normal embedding and the mean of the ``(K, D)`` abnormal ones, L2-normalised."""
    return F.normalize(normal, dim=-1), F.normalize(abnormal.mean(dim=0), dim=-1)


class PromptedCLIPModel(nn.Module):
    """Frozen CLIP with learned prompts: text cache, image encoding, global logits and pixel maps.

    Subclasses implement :meth:`static_text`. The frozen CLIP weights are the state-dict entries under
    :attr:`frozen_prefix`; everything else is learned.

    Args:
        backbone: The frozen CLIP backbone.
        prompt_depth: Deep-prompt depth (text blocks ``2..depth`` get deep prompts).
        prompt_length: Deep-prompt length ``t``.
        temperature: Softmax temperature ``tau`` (positive).
        sigma: Gaussian blur sigma of the pixel map, in pixels of the working image (positive, at most the
            image side).
        few_shot_layers: Image blocks (from 1) whose ordinary-stream patch tokens form the few-shot memory bank;
            ``None``: the quarter points of the depth. The bank is used once references are stored
            (:meth:`store_references`), in eval mode.

    Attributes:
        few_shot: The few-shot memory bank (:class:`FewShotBank`): whether references are stored (``is_set``) and
            their files (``references``). Filled and cleared by :meth:`store_references` and
            :meth:`clear_references`.
        thresholds: The calibrated image and pixel thresholds (:class:`CalibratedThresholds`); once set
            (:meth:`store_thresholds`), the eval-mode output holds ``pred_label`` and ``pred_mask``.
    """

    frozen_prefix = "backbone.clip."

    def __init__(
        self,
        backbone: CLIPBackbone,
        prompt_depth: int,
        prompt_length: int,
        temperature: float,
        sigma: float,
        few_shot_layers: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if not 1 <= prompt_depth <= backbone.text_depth:
            msg = f"prompt_depth={prompt_depth} must be between 1 and the text depth ({backbone.text_depth})."
            raise ValueError(msg)
        if not 1 <= prompt_length < backbone.context_length:
            msg = (
                f"prompt_length={prompt_length} must be between 1 and {backbone.context_length - 1} (the text "
                "context length less the start token)."
            )
            raise ValueError(msg)
        self.backbone = backbone
        self.temperature = temperature
        self.deep_prompts = DeepPrompts(prompt_depth, prompt_length, backbone.text_width)
        self.blur = GaussianBlur(sigma)
        self.text_cache = StaticTextCache()
        layers = tuple(few_shot_layers) if few_shot_layers is not None else default_few_shot_layers(backbone.depth)
        if not layers or any(not 1 <= layer <= backbone.depth for layer in layers):
            msg = f"few_shot_layers={list(layers)} must be block numbers between 1 and {backbone.depth}."
            raise ValueError(msg)
        self.few_shot = FewShotBank(layers)
        self.thresholds = CalibratedThresholds()

    def static_text(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw normal embedding ``(D,)`` and raw static abnormal embeddings ``(K, D)`` (``K >= 1``)."""
        raise NotImplementedError

    def store_references(self, images: torch.Tensor, files: Sequence[str | Path] = ()) -> None:
        """Keep normal reference images as the few-shot memory bank: one encoder pass each, in eval mode.

        Args:
            images: The references ``(k, 3, S, S)``, pre-processed as the images to be scored, on this model's device.
            files: Their files, for the record (``few_shot.references``).
        """
        was_training = self.training
        self.eval()
        with torch.no_grad():
            _, _, tokens = self.backbone.encode_image_tokens(images, (), self.few_shot.layers)
        self.few_shot.store(tokens, [str(file) for file in files])
        self.train(was_training)

    def clear_references(self) -> None:
        """Forget the references: the outputs are the zero-shot ones again."""
        self.few_shot.clear()

    def store_thresholds(self, image: float, pixel: float, false_alarm_rate: float) -> None:
        """Label at calibrated thresholds of scores and map values from now on (a rate of 0: without labels)."""
        self.thresholds.store(image, pixel, false_alarm_rate)

    def learned_parameters(self) -> list[nn.Parameter]:
        """The parameters that training updates (everything but the frozen CLIP)."""
        return [parameter for parameter in self.parameters() if parameter.requires_grad]

    def text_embeddings(self) -> StaticText:
        """The static text embeddings: computed with gradients in training mode, cached in eval mode."""
        if self.training:
            normal, abnormal = self.static_text()
            return StaticText(*_normalise(normal, abnormal), abnormal)
        cached = self.text_cache.read(self._normalised_static_text, self.learned_parameters())
        return StaticText(*cached, None)

    def _normalised_static_text(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``F_n`` and ``F_a`` computed outside autocast: the eval cache outlives the autocast region it is read in."""
        with autocast_off(self.deep_prompts.prompts.device.type):
            return _normalise(*self.static_text())

    def encode_image(
        self, images: torch.Tensor, layers: Sequence[int]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """L2-normalised global ``(B, D)`` and V-V patch ``(B, N, D)`` embeddings of ``layers``, and few-shot tokens.

        The few-shot tokens (the ordinary stream's patch tokens of the bank's blocks) are computed only when the
        bank is in use (references stored, eval mode); otherwise the third element is ``()``.
        """
        in_use = not self.training and self.few_shot.is_set
        global_embedding, patches, tokens = self.backbone.encode_image_tokens(
            images, layers, self.few_shot.layers if in_use else ()
        )
        return F.normalize(global_embedding, dim=-1), tuple(F.normalize(p, dim=-1) for p in patches), tokens

    def fuse_few_shot(
        self, score: torch.Tensor, patch_probabilities: torch.Tensor, tokens: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Image score and patch values with the few-shot map fused in; unchanged without few-shot tokens."""
        if not tokens:
            return score, patch_probabilities
        return FewShotBank.fuse(score, patch_probabilities, self.few_shot.association(tokens))

    @float32
    def global_logits(
        self,
        global_embedding: torch.Tensor,
        normal_text: torch.Tensor,
        abnormal_text: torch.Tensor,
    ) -> torch.Tensor:
        """``[f_v.T_n, f_v.T_a] / tau`` as ``(B, 2)`` in fp32; ``abnormal_text`` is ``(D,)`` or per image ``(B, D)``."""
        normal = global_embedding @ normal_text
        abnormal = (global_embedding * abnormal_text).sum(-1)
        return torch.stack([normal, abnormal], dim=-1) / self.temperature

    def upsample(self, patch_probabilities: torch.Tensor) -> torch.Tensor:
        """Patch probabilities ``(B, N)`` upsampled to the working image size ``(B, S, S)``."""
        return upsample_patches(patch_probabilities, self.backbone.image_size)

    def pixel_map(self, patch_probabilities: torch.Tensor) -> torch.Tensor:
        """Blurred pixel map ``(B, 1, S, S)`` of patch probabilities ``(B, N)``, in fp32 (also under autocast)."""
        return self.blur(self.upsample(patch_probabilities).unsqueeze(1))

    def inference(self, score: torch.Tensor, anomaly_map: torch.Tensor) -> InferenceBatch:
        """The eval-mode output: score and map, with label and mask at the calibrated thresholds once they are set."""
        if not self.thresholds.is_set:
            return InferenceBatch(pred_score=score, anomaly_map=anomaly_map)
        label, mask = self.thresholds.labels(score, anomaly_map)
        return InferenceBatch(pred_score=score, anomaly_map=anomaly_map, pred_label=label, pred_mask=mask)
