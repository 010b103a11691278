"""Exact separable Gaussian blur of anomaly maps, equal to ``scipy.ndimage.gaussian_filter``.

The papers' evaluation code blurs the maps with ``scipy.ndimage.gaussian_filter(map, sigma)``: a
Gaussian truncated at ``int(4 sigma + 0.5)`` pixels, border mode ``"reflect"`` (half-sample symmetric:
``d c b a | a b c d | d c b a``, repeated for maps smaller than the kernel). :class:`GaussianBlur` computes
the same thing as two 1-D passes, always in fp32 (also under autocast), with ops that export to ONNX and
OpenVINO. Each pass extends the axis by a reflected ``index_select`` (not ``F.pad``, whose ``"reflect"``
mode is scipy's ``"mirror"``, ``d c b | a b c d``) and multiplies by the banded ``(L, L + 2 r)`` matrix of
the kernel. A matrix product, not a ``conv2d`` with a ``1 x (2 r + 1)`` kernel: on a GPU it is one GEMM,
where cuDNN's two fp32 convolutions of 81 taps took 16 ms of the 129 ms of a bf16 inference batch of 32
images at 518 x 518 (H200); on a CPU it is 3x faster than those convolutions.

fp32 matrix products may run with a shorter mantissa: TF32 (10 bits) on CUDA where allowed,
bf16 on a CPU under ``torch.set_float32_matmul_precision("medium")``. That would move the blur by about
1e-4. There each product splits its operands into a bf16-representable high part and an fp32
remainder, ``a_hi b_hi + a_hi b_lo + a_lo b``, so that the result is fp32-accurate (about 1e-6) whatever
those settings.
"""

from __future__ import annotations

import torch
from torch import nn

from .precision import float32

__all__ = ["GaussianBlur", "banded_kernel_matrix", "gaussian_blur", "gaussian_kernel1d", "reflect_index"]


def gaussian_kernel1d(sigma: float) -> torch.Tensor:
    """The truncated Gaussian kernel of scipy: radius ``int(4 sigma + 0.5)``, normalised to sum 1, fp32."""
    radius = int(4.0 * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return (kernel / kernel.sum()).float()


def reflect_index(length: int, radius: int, device: torch.device | None = None) -> torch.Tensor:
    """Indices ``(length + 2 radius,)`` of a half-sample symmetric extension of a ``length``-long axis.

    Position ``i`` (from ``-radius`` to ``length + radius - 1``) reads ``i mod 2 length``, mirrored into
    ``[0, length)``: ``d c b a | a b c d | d c b a``, repeated as often as the radius needs.
    """
    period = 2 * length
    index = torch.arange(-radius, length + radius, device=device).remainder(period)
    return torch.where(index >= length, period - 1 - index, index)


def banded_kernel_matrix(kernel: torch.Tensor, length: int) -> torch.Tensor:
    """The ``(length, length + 2 r)`` matrix ``T[i, p] = kernel[p - i]`` (zero off the band).

    ``T @ x`` of an axis ``x`` extended by ``r`` on each side is the correlation with ``kernel`` (the
    Gaussian is symmetric, so also the convolution).
    """
    width = kernel.shape[0]
    offsets = (
        torch.arange(length + width - 1, device=kernel.device) - torch.arange(length, device=kernel.device)[:, None]
    )
    inside = (offsets >= 0) & (offsets < width)
    return torch.where(
        inside, kernel[offsets.clamp(0, width - 1)], torch.zeros((), dtype=kernel.dtype, device=kernel.device)
    )


def _high_low(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``tensor`` as ``high + low``: ``high`` representable in bf16 (so in TF32), ``low`` the exact fp32 rest."""
    high = tensor.to(torch.bfloat16).to(tensor.dtype)
    return high, tensor - high


def _matmul(a: torch.Tensor, b: torch.Tensor, split: bool) -> torch.Tensor:
    """``a @ b``; with ``split``, fp32-accurate also where fp32 products run in TF32 or bf16."""
    if not split:
        return a @ b
    a_high, a_low = _high_low(a)
    b_high, b_low = _high_low(b)
    return a_high @ b_high + a_high @ b_low + a_low @ b


@float32
def gaussian_blur(maps: torch.Tensor, kernel: torch.Tensor, split: bool | None = None) -> torch.Tensor:
    """Blur ``(..., H, W)`` maps with the 1-D ``kernel`` along both axes, reflect borders, in fp32.

    Args:
        maps: Maps of any floating dtype; fp16/bf16 are upcast.
        kernel: ``(2 r + 1,)`` kernel.
        split: Split the operands of each product (see the module docstring). Default: for fp32 maps
            on a GPU, or on a CPU whose fp32 matrix-product precision is not ``"highest"``.

    Returns:
        fp32 (fp64 for fp64 input) blurred maps of the input's shape.
    """
    if maps.dim() < 2:
        msg = f"GaussianBlur needs maps of shape (..., H, W); got a tensor of shape {tuple(maps.shape)}."
        raise ValueError(msg)
    if split is None:
        reduced = maps.device.type != "cpu" or torch.get_float32_matmul_precision() != "highest"
        split = reduced and maps.dtype == torch.float32
    kernel = kernel.to(device=maps.device, dtype=maps.dtype)
    radius = (kernel.shape[0] - 1) // 2
    if radius == 0:
        return maps * kernel[0]
    height, width = maps.shape[-2:]
    rows = maps.index_select(-1, reflect_index(width, radius, maps.device))
    rows = _matmul(rows, banded_kernel_matrix(kernel, width).mT, split)
    columns = rows.index_select(-2, reflect_index(height, radius, maps.device))
    return _matmul(banded_kernel_matrix(kernel, height), columns, split)


class GaussianBlur(nn.Module):
    """``scipy.ndimage.gaussian_filter(map, sigma)`` (``mode="reflect"``, truncate 4) for every map of a batch.

    Maps of any size are defined, also smaller than the kernel radius: the reflection repeats, as in
    scipy. ``sigma=0`` leaves the maps as they are (as scipy does).

    Args:
        sigma: Standard deviation in pixels, ``>= 0``.
    """

    kernel: torch.Tensor

    def __init__(self, sigma: float) -> None:
        super().__init__()
        if not sigma >= 0:
            msg = f"sigma={sigma} (the Gaussian blur of the anomaly map) must be >= 0; 0 switches the blur off."
            raise ValueError(msg)
        self.sigma = float(sigma)
        kernel = gaussian_kernel1d(sigma) if sigma > 0 else torch.ones(1)
        self.register_buffer("kernel", kernel, persistent=False)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        """Blurred ``(..., H, W)`` maps, in fp32 (fp64 for fp64 input), also under autocast."""
        return gaussian_blur(maps, self.kernel)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        """Drop the 2-D ``kernel`` of checkpoints written with anomalib's ``GaussianBlur2d`` (derived from sigma)."""
        state_dict.pop(f"{prefix}kernel", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        """The sigma and the kernel radius."""
        return f"sigma={self.sigma}, radius={(self.kernel.shape[0] - 1) // 2}"
