"""AUPRO with the value of anomalib's ``AUPRO`` at a fraction of its time and memory, and the papers' AUPRO.

anomalib's ``AUPRO`` builds full-size label, weight and cumulative-sum tensors for every pixel of
every map and sorts all of them: on a VisA-sized test set (about 2,000 maps at 518 x 518, 5e8
pixels) that is tens of GB of memory. The curve is only needed up to the false-positive-rate
limit, so this version:

1. finds, from a sample of the background scores, a score ``t0`` such that more than
   ``fpr_limit`` of the background scores at or above it (checked exactly, lowered if not);
2. labels the connected regions of each mask (OpenCV, 8-connectivity, as anomalib) and keeps only
   the pixels scoring at or above ``t0`` (about ``fpr_limit`` of the background plus the
   well-detected defect pixels);
3. packs each kept pixel into one int64 key (the score's order-preserving bits, then its global region
   number, 0 for background), sorts the keys in place (no index array, no gathers), and accumulates
   false positives as exact integer counts and per-region overlaps in float64.

Every threshold on the truncated curve, and the first one beyond the limit (needed for the
interpolation at the limit), is at or above ``t0``, and all pixels scoring at or above it are kept:
the curve, the interpolation and the area are those of anomalib's computation (which accumulates in
float32; the two agree to about 1e-6).

:class:`PaperAUPRO` is the AUPRO of the FAPrompt and AnomalyCLIP papers' evaluation code (``cal_pro_score``
of their ``metrics.py``, after cflow-ad), which is another number: 200 thresholds stepped from the maps'
minimum to their maximum, the points with FPR below 0.3 kept, those FPRs min-max rescaled to [0, 1], and
the trapezoid area of PRO over the rescaled FPR (see :func:`paper_aupro`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
import torch
from anomalib.metrics import AnomalibMetric
from anomalib.metrics.aupro import _AUPRO

__all__ = ["AUPRO", "PaperAUPRO", "paper_aupro", "pro_curve"]

_SAMPLE_SIZE = 1_000_000
_QUANTILE_MARGINS = (0.01, 0.05, 0.2)


def _as_maps(tensor: torch.Tensor) -> np.ndarray:
    """``(B, H, W)`` array of ``(B, 1, H, W)``, ``(B, H, W)`` or ``(H, W)`` maps."""
    if tensor.dim() == 4 and tensor.shape[1] == 1:
        tensor = tensor[:, 0]
    elif tensor.dim() == 2:
        tensor = tensor.unsqueeze(0)
    return tensor.detach().cpu().numpy()


def _ordered_bits(scores: np.ndarray) -> np.ndarray:
    """int64 whose order is the order of the float32 ``scores`` (sign-magnitude bits to two's complement)."""
    bits = np.ascontiguousarray(scores, dtype=np.float32).view(np.int32).astype(np.int64)
    return np.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


def _candidate_threshold(batches: list[tuple[np.ndarray, np.ndarray]], num_bg: int, fpr_limit: float) -> float:
    """A score at or above which more than ``fpr_limit`` of the background lies (verified exactly), or ``-inf``.

    The score is a quantile of a strided sample of the background scores, a little below the limit's.
    """
    total = sum(preds.size for preds, _ in batches)
    stride = max(1, total // _SAMPLE_SIZE)
    sample = np.concatenate([preds.reshape(-1)[::stride][bg.reshape(-1)[::stride]] for preds, bg in batches])
    needed = fpr_limit * num_bg + 2
    for margin in _QUANTILE_MARGINS:
        if sample.size == 0 or fpr_limit + margin >= 1:
            break
        threshold = float(np.quantile(sample, 1.0 - fpr_limit - margin))
        if sum(int(np.count_nonzero((preds >= threshold) & bg)) for preds, bg in batches) >= needed:
            return threshold
    return -np.inf


def _checked_batches(
    preds: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor | Sequence[torch.Tensor], name: str
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(maps, masks)`` arrays ``(B, H, W)`` of each batch; a shape mismatch or a non-binary mask is an error."""
    preds = [preds] if isinstance(preds, torch.Tensor) else list(preds)
    target = [target] if isinstance(target, torch.Tensor) else list(target)
    batches = []
    for batch_preds, batch_target in zip(preds, target, strict=True):
        maps, masks = _as_maps(batch_preds.float()), _as_maps(batch_target)
        if maps.shape != masks.shape:
            msg = f"{name}: predictions {maps.shape} and masks {masks.shape} differ in shape."
            raise ValueError(msg)
        if masks.size and (masks.min() < 0 or masks.max() > 1):
            msg = f"{name}: masks must be binary (values in [0, 1]); found [{masks.min()}, {masks.max()}]."
            raise ValueError(msg)
        batches.append((maps, masks))
    return batches


def pro_curve(
    preds: torch.Tensor | Sequence[torch.Tensor],
    target: torch.Tensor | Sequence[torch.Tensor],
    fpr_limit: float = 0.3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The PRO curve (global FPR, mean per-region overlap) up to ``fpr_limit``, as anomalib's ``AUPRO``.

    Args:
        preds: Anomaly maps ``(B, H, W)`` or ``(B, 1, H, W)``, or a list of such batches.
        target: Binary masks of the same shapes.
        fpr_limit: False-positive-rate limit of the curve.

    Returns:
        ``(fpr, pro)``, float64, increasing in FPR, ending at ``fpr_limit`` (interpolated) or below.
    """
    batches = [(maps, masks <= 0) for maps, masks in _checked_batches(preds, target, "AUPRO")]
    num_bg = sum(int(np.count_nonzero(background)) for _, background in batches)
    empty = torch.tensor([0.0, fpr_limit], dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    if num_bg == 0:
        return empty
    threshold = _candidate_threshold(batches, num_bg, fpr_limit)

    keys, sizes = [], [np.ones(1)]
    for maps, background in batches:
        for score_map, background_map in zip(maps, background, strict=True):
            keep = score_map >= threshold
            regions = np.zeros(score_map.shape, dtype=np.int64)
            if not background_map.all():
                count, labels = cv2.connectedComponents((~background_map).astype(np.uint8), connectivity=8)
                offset = sum(len(size) for size in sizes) - 1
                regions = np.where(labels > 0, labels + offset, 0)
                sizes.append(np.bincount(labels.ravel(), minlength=count)[1:].astype(np.float64))
            keys.append((_ordered_bits(score_map[keep]) << 32) | regions[keep])
    del batches
    inverse_sizes = 1.0 / np.concatenate(sizes)
    inverse_sizes[0] = 0.0  # background
    num_regions = len(inverse_sizes) - 1
    if num_regions == 0:
        return empty
    keys = np.concatenate(keys)
    keys.sort()
    keys = keys[::-1]
    # Curve points after each pixel, with the origin in front: cumulative sums written in place.
    regions = keys & 0xFFFFFFFF
    fpr = np.zeros(keys.size + 1)
    np.cumsum(regions == 0, dtype=np.float64, out=fpr[1:])  # exact integer counts
    pro = np.zeros(keys.size + 1)
    np.take(inverse_sizes, regions, out=pro[1:])
    del regions
    np.cumsum(pro[1:], out=pro[1:])
    fpr /= num_bg
    pro /= num_regions
    scores = keys >> 32
    last_of_ties = np.ones(keys.size + 1, dtype=bool)
    last_of_ties[1:-1] = scores[:-1] != scores[1:]
    del keys, scores
    if not last_of_ties.all():
        fpr, pro = fpr[last_of_ties], pro[last_of_ties]
    fpr = torch.from_numpy(fpr).clamp_(max=1.0)
    pro = torch.from_numpy(pro).clamp_(max=1.0)

    last = int((fpr <= fpr_limit).nonzero()[-1])
    if fpr[last] < fpr_limit and last + 1 < fpr.numel():
        step = (fpr_limit - fpr[last]) / (fpr[last + 1] - fpr[last])
        limit_pro = pro[last] + (pro[last + 1] - pro[last]) * step
        return (
            torch.cat([fpr[: last + 1], torch.tensor([fpr_limit], dtype=torch.float64)]),
            torch.cat([pro[: last + 1], limit_pro.reshape(1)]),
        )
    return fpr[: last + 1], pro[: last + 1]


class _FastAUPRO(_AUPRO):
    """anomalib's ``_AUPRO`` (same states, same value) with a truncated, streamed curve computation."""

    def _compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        preds = self.preds if isinstance(self.preds, list) else [self.preds]
        target = self.target if isinstance(self.target, list) else [self.target]
        return pro_curve(preds, target, float(self.fpr_limit))

    def compute(self) -> torch.Tensor:
        """Area under the PRO curve up to the limit, divided by the limit's FPR."""
        fpr, pro = self._compute()
        area = torch.trapezoid(pro, fpr)
        return (area / fpr[-1]).float()


class AUPRO(AnomalibMetric, _FastAUPRO):  # type: ignore[misc]
    """Drop-in for ``anomalib.metrics.AUPRO`` (same arguments and value), fast on large test sets.

    Example:
        >>> AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False)  # doctest: +SKIP
    """


def paper_aupro(
    preds: torch.Tensor | Sequence[torch.Tensor],
    target: torch.Tensor | Sequence[torch.Tensor],
    fpr_limit: float = 0.3,
    num_steps: int = 200,
) -> float:
    """AUPRO as the papers' evaluation code computes it (``cal_pro_score``), in one pass over the maps.

    The definition: thresholds ``np.arange(lo, hi, (hi - lo) / num_steps)`` in float32, ``lo`` and ``hi`` the
    smallest and largest score of all maps (200 thresholds, or 201 where float32 rounding adds one below
    ``hi``); at each, a pixel is detected when its score is above the threshold, FPR is the detected share of
    all background pixels and PRO the mean, over every 8-connected defect region of every mask, of the region's
    detected share. The points with FPR below ``fpr_limit`` are kept, their FPRs min-max rescaled to [0, 1],
    and the result is the trapezoid area of PRO over the rescaled FPR.

    Each pixel's number of thresholds below its score (one ``searchsorted``) gives, by histograms and
    cumulative sums, the false positives and every region's overlap at all thresholds at once.

    Args:
        preds: Anomaly maps ``(B, H, W)`` or ``(B, 1, H, W)``, or a list of such batches.
        target: Binary masks of the same shapes.
        fpr_limit: Points with an FPR below this are kept.
        num_steps: Number of threshold steps between the smallest and the largest score.

    Returns:
        The area, or NaN where it is not defined: constant maps, no defect region or no background pixel,
        fewer than two kept points or kept points of a single FPR.
    """
    batches = [(maps, masks > 0) for maps, masks in _checked_batches(preds, target, "AUPRO (paper)") if maps.size]
    if not batches:
        return math.nan
    low = min(maps.min() for maps, _ in batches)
    high = max(maps.max() for maps, _ in batches)
    if not high > low:
        return math.nan
    thresholds = np.arange(low, high, (high - low) / np.float32(num_steps))
    # Pixels with ``k`` thresholds below their score are detected at the first ``k`` thresholds.
    background_counts = np.zeros(thresholds.size + 1, dtype=np.int64)
    overlap_sums = np.zeros(thresholds.size + 1)
    num_regions = 0
    for maps, masks in batches:
        for score_map, mask in zip(maps, masks, strict=True):
            below = np.searchsorted(thresholds, score_map.ravel(), side="left")
            defect = mask.ravel()
            background_counts += np.bincount(below[~defect], minlength=thresholds.size + 1)
            if defect.any():
                count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
                labels = labels.ravel()[defect]
                inverse_areas = 1.0 / np.bincount(labels, minlength=count)[1:]
                overlap_sums += np.bincount(
                    below[defect], weights=inverse_areas[labels - 1], minlength=thresholds.size + 1
                )
                num_regions += count - 1
    num_background = int(background_counts.sum())
    if num_regions == 0 or num_background == 0:
        return math.nan
    # Detected at threshold i: more than i thresholds below the score.
    fpr = np.cumsum(background_counts[::-1])[::-1][1:] / num_background
    pro = np.cumsum(overlap_sums[::-1])[::-1][1:] / num_regions
    kept = fpr < fpr_limit
    fpr, pro = fpr[kept], pro[kept]
    if fpr.size < 2 or fpr.max() == fpr.min():
        return math.nan
    fpr = (fpr - fpr.min()) / (fpr.max() - fpr.min())
    # FPR falls as the threshold rises: integrate in the order of increasing FPR.
    return float(np.trapezoid(pro[::-1], fpr[::-1]))


class _PaperAUPRO(_AUPRO):
    """anomalib's ``_AUPRO`` states (maps and masks), computed with the papers' definition."""

    def __init__(self, fpr_limit: float = 0.3, num_steps: int = 200, **kwargs) -> None:
        super().__init__(fpr_limit=fpr_limit, **kwargs)
        if num_steps < 2:
            msg = f"AUPRO (paper): num_steps={num_steps} must be at least 2."
            raise ValueError(msg)
        self.num_steps = num_steps

    def compute(self) -> torch.Tensor:
        """The papers' AUPRO (NaN where it is not defined)."""
        preds = self.preds if isinstance(self.preds, list) else [self.preds]
        target = self.target if isinstance(self.target, list) else [self.target]
        return torch.tensor(paper_aupro(preds, target, float(self.fpr_limit), self.num_steps), dtype=torch.float64)


class PaperAUPRO(AnomalibMetric, _PaperAUPRO):  # type: ignore[misc]
    """The papers' pixel AUPRO (``cal_pro_score`` of their evaluation code), named ``<prefix>AUPRO_paper``.

    It differs from :class:`AUPRO` (the exact curve, integrated to FPR 0.3 and divided by 0.3) by up to
    a few points; the papers' tables print this one.

    Example:
        >>> PaperAUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False).name  # doctest: +SKIP
        'pixel_AUPRO_paper'
    """

    def __init__(self, *args, prefix: str = "", **kwargs) -> None:
        super().__init__(*args, prefix=prefix, **kwargs)
        self.name = f"{prefix}AUPRO_paper"
