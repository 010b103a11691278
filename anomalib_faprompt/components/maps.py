"""Similarity maps between patch embeddings and text embeddings (docs/faprompt.md, sections 4 and 6)."""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812

from .precision import float32

__all__ = ["abnormal_probability", "binarise_masks", "upsample_patches"]


@float32
def abnormal_probability(
    features: torch.Tensor,
    normal_text: torch.Tensor,
    abnormal_text: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Abnormal probability ``softmax([f.T_n, f.T_a] / tau)[abnormal]`` for every feature vector.

    Args:
        features: ``(B, ..., D)`` L2-normalised image features (patches or global embeddings).
        normal_text: ``(D,)`` or ``(B, D)`` L2-normalised normal text embedding.
        abnormal_text: ``(D,)`` or ``(B, D)`` L2-normalised abnormal text embedding.
        temperature: Softmax temperature ``tau``.

    Returns:
        ``(B, ...)`` abnormal probabilities. Written as a sigmoid of the logit difference, which is
        exactly the two-way softmax. Computed in fp32 also under autocast (half-precision inputs upcast),
        so that near-equal patches keep their order for the top-k selection.
    """
    difference = abnormal_text - normal_text
    if difference.dim() == 2:
        difference = difference.reshape(difference.shape[0], *([1] * (features.dim() - 2)), -1)
    return torch.sigmoid((features * difference).sum(-1) / temperature)


def upsample_patches(patch_values: torch.Tensor, image_size: int) -> torch.Tensor:
    """Reshape ``(B, g*g)`` patch values to a grid and upsample bilinearly to ``(B, S, S)``."""
    grid = round(patch_values.shape[1] ** 0.5)
    grid_map = patch_values.reshape(-1, 1, grid, grid)
    upsampled = F.interpolate(grid_map, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return upsampled[:, 0]


def binarise_masks(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Masks ``(B, [1,] H, W)`` resized bilinearly to ``size``, binarised at 0.5: ``(B, *size)`` bool."""
    masks = masks.reshape(-1, 1, *masks.shape[-2:]).float()
    if masks.shape[-2:] != size:
        masks = F.interpolate(masks, size=size, mode="bilinear", align_corners=False)
    return masks[:, 0] > 0.5
