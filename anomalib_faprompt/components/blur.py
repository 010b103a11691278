"""Exact separable Gaussian blur of anomaly maps, equal to ``scipy.ndimage.gaussian_filter``.

The papers' evaluation code blurs the maps with ``scipy.ndimage.gaussian_filter(map, sigma)``: a
Gaussian truncated at ``int(4 sigma + 0.5)`` pixels, border mode ``"reflect"`` (half-sample symmetric:
``d c b a | a b c d | d c b a``, repeated for maps smaller than the kernel). :class:`GaussianBlur` computes
the same thing as two 1-D convolutions, always in fp32 (also under autocast), with ops that export to
ONNX and OpenVINO: the border is an ``index_select`` with a reflected index, not ``F.pad``, whose
``"reflect"`` mode is scipy's ``"mirror"`` (``d c b | a b c d``).

On CUDA, fp32 convolutions may run in TF32 (10-bit mantissa; cuDNN's default), which would move the
blur by about 1e-4. There each pass splits its input and kernel into a bf16-representable high part and
an fp32 remainder, ``(x_hi + x_lo) * (w_hi + w_lo)``, so that every operand is exact in TF32 and the
result is fp32-accurate whatever the TF32 settings.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from .precision import float32

__all__ = ["GaussianBlur", "gaussian_kernel1d", "reflect_index"]


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


def _split(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``tensor`` as ``high + low``: ``high`` representable in bf16 (so in TF32), ``low`` the exact fp32 rest."""
    high = tensor.to(torch.bfloat16).to(tensor.dtype)
    return high, tensor - high


def _blur_pass(maps: torch.Tensor, kernel: torch.Tensor, dim: int, exact_tf32: bool) -> torch.Tensor:
    """Blur ``(N, 1, H, W)`` maps along ``dim`` (2: rows, 3: columns) with reflect borders.

    Args:
        maps: fp32 maps.
        kernel: ``(2 r + 1,)`` fp32 kernel.
        dim: 2 or 3.
        exact_tf32: Split input and kernel so that a TF32 convolution gives the fp32 result.

    Returns:
        The blurred ``(N, 1, H, W)`` maps.
    """
    radius = (kernel.shape[0] - 1) // 2
    if radius == 0:
        return maps * kernel[0]
    padded = maps.index_select(dim, reflect_index(maps.shape[dim], radius, maps.device))
    shape = (1, 1, -1, 1) if dim == 2 else (1, 1, 1, -1)
    if not exact_tf32:
        return F.conv2d(padded, kernel.reshape(shape))
    # (x_hi + x_lo) * (w_hi + w_lo): two input channels, two output channels, summed.
    weight = torch.stack(_split(kernel)).reshape(2, 1, *kernel.reshape(shape).shape[2:])
    weight = weight.expand(2, 2, -1, -1).contiguous()
    return F.conv2d(torch.cat(_split(padded), dim=1), weight).sum(dim=1, keepdim=True)


@float32
def gaussian_blur(maps: torch.Tensor, kernel: torch.Tensor, exact_tf32: bool | None = None) -> torch.Tensor:
    """Blur ``(..., H, W)`` maps with the 1-D ``kernel`` along both axes, reflect borders, in fp32.

    Args:
        maps: Maps of any floating dtype; fp16/bf16 are upcast.
        kernel: ``(2 r + 1,)`` kernel.
        exact_tf32: Use the TF32-exact split (see the module docstring); default: for fp32 on CUDA.

    Returns:
        fp32 (fp64 for fp64 input) blurred maps of the input's shape.
    """
    if maps.dim() < 2:
        msg = f"GaussianBlur needs maps of shape (..., H, W); got a tensor of shape {tuple(maps.shape)}."
        raise ValueError(msg)
    if exact_tf32 is None:
        exact_tf32 = maps.device.type == "cuda" and maps.dtype == torch.float32
    shape = maps.shape
    flat = maps.reshape(-1, 1, *shape[-2:])
    kernel = kernel.to(device=flat.device, dtype=flat.dtype)
    blurred = _blur_pass(_blur_pass(flat, kernel, 3, exact_tf32), kernel, 2, exact_tf32)
    return blurred.reshape(shape)


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

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        """Drop the 2-D ``kernel`` of checkpoints written with anomalib's ``GaussianBlur2d`` (derived from sigma)."""
        state_dict.pop(f"{prefix}kernel", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        """The sigma and the kernel radius."""
        return f"sigma={self.sigma}, radius={(self.kernel.shape[0] - 1) // 2}"
