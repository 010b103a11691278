"""The torch-model scaffold shared by AnomalyCLIP and FAPrompt.

Both learn text prompts (with deep prompts) for a frozen :class:`CLIPBackbone`, compare normalised
image embeddings with a normal and an abnormal text embedding, and turn patch probabilities into a
blurred pixel map. The static text embeddings do not depend on the image: they are computed once per
training step, and cached in eval mode.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable

import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.models.components import GaussianBlur2d
from torch import nn

from .clip import CLIPBackbone
from .maps import upsample_patches
from .prompts import DeepPrompts

__all__ = ["PromptedCLIPModel", "StaticText"]

StaticText = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class PromptedCLIPModel(nn.Module):
    """Frozen CLIP with learned prompts: text cache, image encoding, global logits and pixel maps.

    Args:
        backbone: The frozen CLIP backbone.
        prompt_depth: Deep-prompt depth (text blocks ``2..depth`` get deep prompts).
        prompt_length: Deep-prompt length ``t``.
        temperature: Softmax temperature ``tau``.
        sigma: Gaussian blur sigma of the pixel map, in pixels of the working image.
    """

    def __init__(
        self,
        backbone: CLIPBackbone,
        prompt_depth: int,
        prompt_length: int,
        temperature: float,
        sigma: float,
    ) -> None:
        super().__init__()
        if not 1 <= prompt_depth <= backbone.text_depth:
            msg = f"prompt_depth={prompt_depth} must be between 1 and the text depth ({backbone.text_depth})."
            raise ValueError(msg)
        self.backbone = backbone
        self.temperature = temperature
        self.deep_prompts = DeepPrompts(prompt_depth, prompt_length, backbone.text_width)
        self.blur = GaussianBlur2d(sigma=(sigma, sigma), channels=1)
        self._text_cache: StaticText | None = None
        self.register_load_state_dict_post_hook(lambda module, _: module.clear_text_cache())

    @abstractmethod
    def static_text(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw normal embedding ``(D,)`` and raw static abnormal embeddings ``(K, D)`` (``K >= 1``)."""

    def clear_text_cache(self) -> None:
        """Forget the cached static text embeddings (after the prompts changed)."""
        self._text_cache = None

    def train(self, mode: bool = True) -> PromptedCLIPModel:
        """Switch mode and drop the eval-time text cache."""
        self.clear_text_cache()
        return super().train(mode)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> PromptedCLIPModel:
        """Drop the text cache when ``to``/``cuda``/``double``/... convert the module: it is no buffer."""
        self.clear_text_cache()
        return super()._apply(fn, recurse)

    def text_embeddings(self) -> StaticText:
        """Normalised ``F_n`` ``(D,)``, normalised ``F_a`` (mean of the K raw embeddings) and the raw ``(K, D)``.

        Computed on every call in training mode, once and then cached in eval mode.
        """
        if self._text_cache is not None and not self.training:
            return self._text_cache
        normal, abnormal = self.static_text()
        texts = (F.normalize(normal, dim=-1), F.normalize(abnormal.mean(dim=0), dim=-1), abnormal)
        if not self.training:
            self._text_cache = tuple(text.detach() for text in texts)
        return texts

    def encode_image(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """L2-normalised global ``(B, D)`` and patch ``(B, N, D)`` embeddings."""
        global_embedding, patches = self.backbone.encode_image(images)
        return F.normalize(global_embedding, dim=-1), F.normalize(patches, dim=-1)

    def global_logits(
        self,
        global_embedding: torch.Tensor,
        normal_text: torch.Tensor,
        abnormal_text: torch.Tensor,
    ) -> torch.Tensor:
        """``[f_v.T_n, f_v.T_a] / tau`` as ``(B, 2)``; ``abnormal_text`` is ``(D,)`` or per image ``(B, D)``."""
        normal = global_embedding @ normal_text
        abnormal = (global_embedding * abnormal_text).sum(-1)
        return torch.stack([normal, abnormal], dim=-1) / self.temperature

    def upsample(self, patch_probabilities: torch.Tensor) -> torch.Tensor:
        """Patch probabilities ``(B, N)`` upsampled to the working image size ``(B, S, S)``."""
        return upsample_patches(patch_probabilities, self.backbone.image_size)

    def pixel_map(self, patch_probabilities: torch.Tensor) -> torch.Tensor:
        """Blurred pixel map ``(B, 1, S, S)`` of patch probabilities ``(B, N)``."""
        return self.blur(self.upsample(patch_probabilities).unsqueeze(1))
