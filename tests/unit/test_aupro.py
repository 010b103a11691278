"""The fast AUPRO against a straightforward reference and against anomalib's AUPRO."""

import numpy as np
import pytest
import torch
from anomalib.data import ImageBatch
from anomalib.metrics import AUPRO as ANOMALIB_AUPRO
from scipy import ndimage
from sklearn.metrics import auc

from anomalib_faprompt.metrics import AUPRO, PaperAUPRO, paper_aupro, pro_curve


def reference_aupro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float) -> float:
    """Definition, threshold by threshold: global FPR, mean overlap of each 8-connected region."""
    regions = []
    for index, mask in enumerate(masks):
        labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [(index, labels == label) for label in range(1, count + 1)]
    background = masks == 0
    points = [(0.0, 0.0)]
    for threshold in np.unique(maps)[::-1]:
        detected = maps >= threshold
        fpr = detected[background].mean()
        pro = np.mean([detected[index][region].mean() for index, region in regions])
        points.append((fpr, pro))
    fpr, pro = np.array(points).T
    last = np.nonzero(fpr <= fpr_limit)[0][-1]
    if fpr[last] < fpr_limit and last + 1 < len(fpr):
        limit_pro = pro[last] + (pro[last + 1] - pro[last]) * (fpr_limit - fpr[last]) / (fpr[last + 1] - fpr[last])
        fpr, pro = np.append(fpr[: last + 1], fpr_limit), np.append(pro[: last + 1], limit_pro)
    else:
        fpr, pro = fpr[: last + 1], pro[: last + 1]
    return float(np.trapezoid(pro, fpr) / fpr[-1])


def random_case(seed: int, count: int = 4, size: int = 20, levels: int | None = None) -> tuple:
    """Maps responding to rectangular and L-shaped defects, about half the masks empty."""
    generator = torch.Generator().manual_seed(seed)
    masks = torch.zeros(count, size, size)
    for index in range(1, count, 2):
        y, x = torch.randint(1, size - 8, (2,), generator=generator).tolist()
        masks[index, y : y + 5, x : x + 3] = 1
        masks[index, y + 4, x : x + 7] = 1
        masks[index, 0:2, size - 3 :] = 1
    maps = 0.7 * torch.rand(count, size, size, generator=generator) + 0.4 * masks * torch.rand(1, generator=generator)
    if levels:
        maps = (maps * levels).round() / levels
    return maps, masks


def metric_value(metric: AUPRO | PaperAUPRO, maps: torch.Tensor, masks: torch.Tensor, batch: int) -> float:
    """``metric`` fed with ``(N, H, W)`` maps and masks in batches of ``batch``."""
    for start in range(0, len(maps), batch):
        metric.update(
            ImageBatch(
                image=maps[start : start + batch, None].expand(-1, 3, -1, -1),
                anomaly_map=maps[start : start + batch, None],
                gt_mask=masks[start : start + batch].bool(),
            )
        )
    return float(metric.compute())


def fast_value(maps: torch.Tensor, masks: torch.Tensor, fpr_limit: float = 0.3, batch: int = 3) -> float:
    return metric_value(AUPRO(fields=["anomaly_map", "gt_mask"], fpr_limit=fpr_limit), maps, masks, batch)


def anomalib_value(maps: torch.Tensor, masks: torch.Tensor, fpr_limit: float = 0.3) -> float:
    metric = ANOMALIB_AUPRO(fields=["anomaly_map", "gt_mask"], fpr_limit=fpr_limit)
    metric.update(
        ImageBatch(image=maps[:, None].expand(-1, 3, -1, -1), anomaly_map=maps[:, None], gt_mask=masks.bool())
    )
    return float(metric.compute())


@pytest.mark.parametrize(
    ("seed", "levels", "fpr_limit"),
    [(0, None, 0.3), (1, None, 0.3), (2, 10, 0.3), (3, 4, 0.3), (4, None, 0.05), (5, None, 1.0), (6, 7, 0.6)],
)
def test_equals_reference_and_anomalib(seed, levels, fpr_limit):
    maps, masks = random_case(seed, levels=levels)
    reference = reference_aupro(maps.numpy().astype(np.float64), masks.numpy(), np.float32(fpr_limit).item())
    fast = fast_value(maps, masks, fpr_limit)
    assert fast == pytest.approx(reference, abs=1e-6)
    assert fast == pytest.approx(anomalib_value(maps, masks, fpr_limit), abs=1e-6)
    assert 0.0 < fast < 1.0


def test_large_case_takes_the_truncated_path_and_agrees_with_anomalib():
    maps, masks = random_case(7, count=24, size=96)
    maps = torch.nn.functional.avg_pool2d(maps[:, None], 5, stride=1, padding=2)[:, 0]
    fpr, pro = pro_curve(maps, masks)
    assert fpr[-1] == pytest.approx(np.float32(0.3).item())
    assert torch.all(fpr[1:] >= fpr[:-1])
    assert torch.all(pro[1:] >= pro[:-1] - 1e-12)
    assert fast_value(maps, masks, batch=8) == pytest.approx(anomalib_value(maps, masks), abs=1e-6)


def test_hand_computed_case():
    # One map, one 2-pixel region scoring 0.9 and 0.5; background scores 0.8, 0.4, 0.3, 0.2, 0.1, 0.0.
    maps = torch.tensor([[[0.9, 0.5, 0.8, 0.4], [0.3, 0.2, 0.1, 0.0]]])
    masks = torch.tensor([[[1, 1, 0, 0], [0, 0, 0, 0]]])
    # Curve: (0, .5) at 0.9, (1/6, .5) at 0.8, (1/6, 1) at 0.5, (2/6, 1) at 0.4; limit 0.3 lies on the last segment.
    expected_area = 0.5 * (1 / 6) + 1.0 * (0.3 - 1 / 6)
    assert fast_value(maps, masks) == pytest.approx(expected_area / 0.3, abs=1e-6)


def test_no_defect_region_gives_zero_as_anomalib():
    maps, masks = random_case(8)
    masks.zero_()
    assert fast_value(maps, masks) == anomalib_value(maps, masks) == 0.0


def test_name_fields_and_bad_masks():
    metric = AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_")
    assert metric.name == "pixel_AUPRO"
    with pytest.raises(ValueError, match="binary"):
        pro_curve(torch.rand(1, 4, 4), torch.full((1, 4, 4), 2.0))
    with pytest.raises(ValueError, match="shape"):
        pro_curve(torch.rand(1, 4, 4), torch.zeros(1, 4, 5))


def reference_paper_aupro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3, steps: int = 200) -> float:
    """The papers' definition, threshold by threshold: float32 thresholds from min to max, FPR < limit, rescaled."""
    low, high = maps.min(), maps.max()
    regions = []
    for index, mask in enumerate(masks):
        labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [(index, labels == label) for label in range(1, count + 1)]
    background = masks == 0
    fprs, pros = [], []
    for threshold in np.arange(low, high, (high - low) / steps):
        detected = maps > threshold
        fprs.append(detected[background].sum() / background.sum())
        pros.append(np.mean([detected[index][region].sum() / region.sum() for index, region in regions]))
    fprs, pros = np.array(fprs), np.array(pros)
    kept = fprs < fpr_limit
    fprs = fprs[kept]
    return float(auc((fprs - fprs.min()) / (fprs.max() - fprs.min()), pros[kept]))


def paper_value(maps: torch.Tensor, masks: torch.Tensor, batch: int = 3, **kwargs) -> float:
    return metric_value(PaperAUPRO(fields=["anomaly_map", "gt_mask"], **kwargs), maps, masks, batch)


@pytest.mark.parametrize(
    ("seed", "levels", "fpr_limit", "steps"),
    [(0, None, 0.3, 200), (1, None, 0.3, 200), (2, 10, 0.3, 200), (3, None, 0.1, 50), (4, 5, 0.6, 200)],
)
def test_paper_aupro_equals_the_definition(seed, levels, fpr_limit, steps):
    maps, masks = random_case(seed, count=6, size=24, levels=levels)
    expected = reference_paper_aupro(maps.numpy(), masks.numpy(), fpr_limit, steps)
    assert paper_value(maps, masks, fpr_limit=fpr_limit, num_steps=steps) == pytest.approx(expected, abs=1e-9)
    assert paper_aupro(maps[:, None], masks, fpr_limit, steps) == pytest.approx(expected, abs=1e-9)


def test_paper_aupro_is_another_number_than_the_exact_one():
    maps, masks = random_case(9, count=8, size=32)
    maps = torch.nn.functional.avg_pool2d(maps[:, None], 3, stride=1, padding=1)[:, 0]
    paper, exact = paper_value(maps, masks), fast_value(maps, masks)
    assert paper == pytest.approx(reference_paper_aupro(maps.numpy(), masks.numpy()), abs=1e-9)
    assert abs(paper - exact) > 1e-3


def test_paper_aupro_hand_computed_case():
    # Scores 0, 0.1, ..., 0.9 on one 2x5 map; 20 steps: thresholds 0.045 i, i = 0 ... 19 (0 to 0.855).
    maps = torch.arange(10, dtype=torch.float32).reshape(1, 2, 5) / 10
    masks = torch.zeros(1, 2, 5)
    masks[0, 0, 3:] = 1  # one region scoring 0.3 and 0.4
    # FPR < 0.3: at most 2 of the 8 background pixels above the threshold, i.e. i >= 16 (0.72): FPR 2/8, 2/8,
    # 1/8, 1/8, rescaled 1, 1, 0, 0; the region is never detected there: PRO 0, area 0.
    assert paper_aupro(maps, masks, num_steps=20) == 0.0
    masks = torch.zeros(1, 2, 5)
    masks[0, 1, 1] = masks[0, 1, 4] = 1  # two 1-pixel regions scoring 0.6 and 0.9
    # Background 0 ... 0.5, 0.7, 0.8: kept i >= 12 (0.54); FPR 2/8 for i = 12 ... 15, 1/8 for 16, 17 (0.72, 0.765),
    # 0 for 18, 19; rescaled 1 (x4), 0.5 (x2), 0 (x2). PRO 1 for i = 12, 13 (both regions), then 0.5.
    # Area: 0.5 * 0.5 (FPR 0 to 0.5) + 0.5 * 0.5 (0.5 to 1); the rise to 1 lies at FPR 1, width 0.
    assert paper_aupro(maps, masks, num_steps=20) == pytest.approx(0.5, abs=1e-12)
    assert fast_value(maps, masks) != pytest.approx(0.5, abs=1e-3)


def test_paper_aupro_undefined_cases_are_nan():
    maps, masks = random_case(10)
    assert np.isnan(paper_aupro(torch.full_like(maps, 0.5), masks))
    assert np.isnan(paper_aupro(maps, torch.zeros_like(masks)))
    assert np.isnan(paper_aupro(maps, torch.ones_like(masks)))
    assert PaperAUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_").name == "pixel_AUPRO_paper"
    with pytest.raises(ValueError, match="num_steps"):
        PaperAUPRO(fields=["anomaly_map", "gt_mask"], num_steps=1)
