"""Losses shared by FAPrompt and AnomalyCLIP (docs/faprompt.md, sections 3, 5 and 7).

Every loss is computed in fp32 outside autocast (:func:`~.precision.float32`): under mixed precision the
models' outputs may be bf16/fp16, and CUDA's autocast refuses ``binary_cross_entropy`` altogether.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812

from .precision import float32

__all__ = [
    "binary_focal_loss",
    "dice_loss",
    "focal_loss",
    "local_loss",
    "local_losses",
    "orthogonality_loss",
    "prior_loss",
]

_EPS = 1e-5


@float32
def focal_loss(probabilities: torch.Tensor, mask: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Focal loss over a per-pixel class-probability map.

    Args:
        probabilities: ``(B, C, H, W)`` probabilities (``C = 2``: normal, abnormal).
        mask: ``(B, H, W)`` integer class map (0 normal, 1 abnormal).
        gamma: Focusing parameter.

    Returns:
        Mean over pixels and images of ``-(1 - pt)^gamma * log(pt)``, with
        ``pt = sum_c clamp(onehot_c, 1e-5, 1 - 1e-5) * P_c + 1e-5``.
    """
    onehot = F.one_hot(mask.long(), probabilities.shape[1]).permute(0, 3, 1, 2).to(probabilities.dtype)
    pt = (onehot.clamp(_EPS, 1.0 - _EPS) * probabilities).sum(dim=1) + _EPS
    return (-((1.0 - pt) ** gamma) * pt.log()).mean()


@float32
def dice_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft dice loss with smoothing 1, sums per image, mean over images.

    Args:
        prediction: ``(B, H, W)`` probabilities.
        target: ``(B, H, W)`` binary target.

    Returns:
        ``1 - mean_b (2 * sum(X*Y) + 1) / (sum X + sum Y + 1)``.
    """
    prediction = prediction.flatten(1)
    target = target.flatten(1).to(prediction.dtype)
    dice = (2.0 * (prediction * target).sum(1) + 1.0) / (prediction.sum(1) + target.sum(1) + 1.0)
    return 1.0 - dice.mean()


@float32
def local_loss(abnormal_map: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Segmentation loss ``Focal([M^n, M^a], G) + Dice(M^a, G) + Dice(M^n, 1 - G)``.

    Args:
        abnormal_map: ``(B, H, W)`` abnormal probability map ``M^a``; ``M^n = 1 - M^a``.
        mask: ``(B, H, W)`` binary ground truth ``G``.

    Returns:
        The scalar loss.
    """
    normal_map = 1.0 - abnormal_map
    focal = focal_loss(torch.stack([normal_map, abnormal_map], dim=1), mask)
    return focal + dice_loss(abnormal_map, mask) + dice_loss(normal_map, 1.0 - mask.to(abnormal_map.dtype))


def local_losses(
    masks: torch.Tensor | None, **abnormal_maps: torch.Tensor | tuple[torch.Tensor, ...]
) -> dict[str, torch.Tensor]:
    """``L_local`` of each named abnormal map (summed over a tuple of maps); none when training image-level only."""
    if masks is None:
        return {}
    layers = {name: maps if isinstance(maps, tuple) else (maps,) for name, maps in abnormal_maps.items()}
    return {name: sum(local_loss(layer, masks) for layer in maps) for name, maps in layers.items()}


@float32
def binary_focal_loss(
    scores: torch.Tensor,
    labels: torch.Tensor,
    gamma: float = 2.0,
    scores_are_logits: bool = False,
) -> torch.Tensor:
    """Binary focal loss of image scores against image labels, mean over images.

    Args:
        scores: ``(B,)`` anomaly probabilities in [0, 1].
        labels: ``(B,)`` labels, 1 = anomalous.
        gamma: Focusing parameter.
        scores_are_logits: Feed ``scores`` to a logits-based BCE, as the released FAPrompt code does
            with its probabilities (a quirk kept for reproduction).

    Returns:
        ``mean((1 - pt)^gamma * BCE)`` with ``pt = exp(-BCE)``.
    """
    labels = labels.to(scores.dtype)
    if scores_are_logits:
        bce = F.binary_cross_entropy_with_logits(scores, labels, reduction="none")
    else:
        bce = F.binary_cross_entropy(scores.clamp(_EPS, 1.0 - _EPS), labels, reduction="none")
    pt = torch.exp(-bce)
    return ((1.0 - pt) ** gamma * bce).mean()


@float32
def orthogonality_loss(embeddings: torch.Tensor) -> torch.Tensor:
    """``sum_{i<j} |cos(e_i, e_j)|`` over ``(K, D)`` embeddings."""
    normed = F.normalize(embeddings, dim=-1)
    cosine = normed @ normed.T
    upper = torch.triu(torch.ones_like(cosine, dtype=torch.bool), diagonal=1)
    return cosine.abs()[upper].sum()


@float32
def prior_loss(prior: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``sum over normal images x of mean(Omega_x^2)``; anomalous images contribute 0.

    Args:
        prior: ``(B, C)`` data-dependent abnormality prior ``Omega``.
        labels: ``(B,)`` image labels, 1 = anomalous.

    Returns:
        The scalar loss.
    """
    normal = (labels == 0).to(prior.dtype)
    return ((prior**2).mean(dim=1) * normal).sum()
