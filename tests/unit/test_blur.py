"""The separable Gaussian blur against ``scipy.ndimage.gaussian_filter`` (mode "reflect", truncate 4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from anomalib_faprompt.components import blur as blur_module
from anomalib_faprompt.components.blur import (
    GaussianBlur,
    banded_kernel_matrix,
    gaussian_blur,
    gaussian_kernel1d,
    reflect_index,
)

SIZES = [(64, 64), (37, 53), (100, 9), (5, 5), (3, 7), (1, 4), (2, 1)]


def scipy_blur(maps: np.ndarray, sigma: float) -> np.ndarray:
    """scipy's blur of every ``(H, W)`` map, in float64."""
    return np.stack([ndimage.gaussian_filter(m.astype(np.float64), sigma, mode="reflect") for m in maps])


@pytest.mark.parametrize("sigma", [4.0, 10.0])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_equals_scipy_whole_map(size: tuple[int, int], sigma: float) -> None:
    maps = torch.rand(3, 1, *size, generator=torch.Generator().manual_seed(size[0] * 100 + size[1]))
    blurred = GaussianBlur(sigma)(maps)
    assert blurred.dtype == torch.float32
    assert blurred.shape == maps.shape
    expected = scipy_blur(maps[:, 0].numpy(), sigma)
    np.testing.assert_allclose(blurred[:, 0].numpy(), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("sigma", [4.0, 10.0])
def test_split_products_equal_scipy(sigma: float) -> None:
    """The GPU path (high/low split of every product operand), run on the CPU, gives the same map."""
    maps = torch.rand(2, 1, 40, 67, generator=torch.Generator().manual_seed(1))
    blurred = gaussian_blur(maps, gaussian_kernel1d(sigma), split=True)
    np.testing.assert_allclose(blurred[:, 0].numpy(), scipy_blur(maps[:, 0].numpy(), sigma), rtol=0, atol=1e-5)
    plain = gaussian_blur(maps, gaussian_kernel1d(sigma), split=False)
    torch.testing.assert_close(blurred, plain, rtol=0, atol=1e-6)


def test_split_by_default_where_fp32_products_may_be_reduced(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a CPU at "medium" fp32 matmul precision (bf16 products where the CPU has them) the products split."""
    used = []
    matmul = blur_module._matmul
    monkeypatch.setattr(blur_module, "_matmul", lambda a, b, split: used.append(split) or matmul(a, b, split))
    maps = torch.rand(2, 1, 30, 41, generator=torch.Generator().manual_seed(2))
    expected = scipy_blur(maps[:, 0].numpy(), 4.0)
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        reduced = GaussianBlur(4.0)(maps)
    finally:
        torch.set_float32_matmul_precision(previous)
    np.testing.assert_allclose(reduced[:, 0].numpy(), expected, rtol=0, atol=1e-5)
    GaussianBlur(4.0)(maps)
    GaussianBlur(4.0)(maps.double())
    assert used == [True, True, False, False, False, False]


def test_banded_kernel_matrix() -> None:
    a, b, c = 0.25, 0.5, 0.25
    expected = [[a, b, c, 0, 0], [0, a, b, c, 0], [0, 0, a, b, c]]
    assert banded_kernel_matrix(torch.tensor([a, b, c]), 3).tolist() == expected


def test_kernel_is_scipys() -> None:
    # scipy: radius int(truncate * sigma + 0.5) with truncate 4; weights exp(-x^2 / (2 sigma^2)), normalised.
    for sigma, radius in [(4.0, 16), (10.0, 40), (2.0, 8), (0.3, 1)]:
        kernel = gaussian_kernel1d(sigma)
        assert kernel.shape == (2 * radius + 1,)
        impulse = np.zeros(2 * radius + 1)
        impulse[radius] = 1.0
        expected = ndimage.gaussian_filter1d(impulse, sigma, mode="constant")
        np.testing.assert_allclose(kernel.numpy(), expected, rtol=1e-6, atol=1e-9)


def test_reflect_index_half_sample_symmetric() -> None:
    # ... c b a | a b c | c b a ...: b a | a b c | c b
    assert reflect_index(3, 2).tolist() == [1, 0, 0, 1, 2, 2, 1]
    # numpy's "symmetric" padding is the same extension, repeated for radii beyond the length.
    for length, radius in [(3, 7), (1, 3), (5, 5), (4, 16), (518, 40)]:
        expected = np.pad(np.arange(length), radius, mode="symmetric")
        assert reflect_index(length, radius).tolist() == expected.tolist()


def test_shapes_batches_and_fp64() -> None:
    maps = torch.rand(2, 3, 20, 30, dtype=torch.float64)
    blurred = GaussianBlur(2.0)(maps)
    assert blurred.dtype == torch.float64
    for b in range(2):
        for c in range(3):
            expected = ndimage.gaussian_filter(maps[b, c].numpy(), 2.0, mode="reflect")
            # The kernel is stored in fp32 (rounded at about 1e-8).
            np.testing.assert_allclose(blurred[b, c].numpy(), expected, rtol=0, atol=1e-7)
    # A single (H, W) map works too.
    torch.testing.assert_close(GaussianBlur(2.0)(maps[0, 0]), blurred[0, 0], rtol=0, atol=1e-12)


def test_fp32_under_autocast_and_from_bf16() -> None:
    maps = torch.rand(2, 1, 32, 32)
    blur = GaussianBlur(4.0)
    expected = blur(maps)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = blur(maps)
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, expected, rtol=0, atol=0)
    from_bf16 = blur(maps.bfloat16())
    assert from_bf16.dtype == torch.float32
    torch.testing.assert_close(from_bf16, blur(maps.bfloat16().float()), rtol=0, atol=0)


def test_sigma_zero_is_identity_and_negative_refused() -> None:
    maps = torch.rand(1, 1, 8, 8)
    torch.testing.assert_close(GaussianBlur(0.0)(maps), maps, rtol=0, atol=0)
    np.testing.assert_array_equal(ndimage.gaussian_filter(maps[0, 0].numpy(), 0.0), maps[0, 0].numpy())
    with pytest.raises(ValueError, match=r"sigma=-1.0 .* must be >= 0"):
        GaussianBlur(-1.0)
    with pytest.raises(ValueError, match=r"shape \(..., H, W\)"):
        GaussianBlur(1.0)(torch.rand(5))


def test_kernel_not_in_state_dict() -> None:
    assert GaussianBlur(4.0).state_dict() == {}


def test_old_checkpoint_blur_kernel_is_ignored(tiny_model_args: dict) -> None:
    """Checkpoints written with anomalib's GaussianBlur2d hold its 2-D kernel; they still load strictly."""
    from anomalib_faprompt import FAPrompt

    model = FAPrompt(**tiny_model_args).model
    state = model.state_dict()
    assert "blur.kernel" not in state
    model.load_state_dict({**state, "blur.kernel": torch.ones(1, 1, 17, 17)}, strict=True)
