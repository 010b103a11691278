"""Computations kept in fp32 under mixed precision (``torch.autocast``).

Under autocast, matrix products and convolutions run in bf16/fp16, and CUDA's autocast refuses some ops
outright (``binary_cross_entropy``). The losses, the similarity heads and the map blur are cheap next to
the image encoder and decide the numbers users read: :func:`float32` runs them with autocast switched
off and half-precision inputs upcast to fp32. Without autocast and with fp32 (or fp64) inputs nothing
changes: the wrapped function runs as it is.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import torch

__all__ = ["autocast_off", "float32", "upcast"]

_P = ParamSpec("_P")
_R = TypeVar("_R")
_HALF = (torch.float16, torch.bfloat16)


def upcast(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in fp32 when it is fp16 or bf16; any other tensor as it is."""
    return tensor.float() if tensor.dtype in _HALF else tensor


def autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    """A context with autocast switched off for ``device_type`` where it is on; else one that does nothing."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def _upcast_argument(value: object) -> object:
    return upcast(value) if isinstance(value, torch.Tensor) else value


def float32(function: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run ``function`` outside autocast, with its fp16/bf16 tensor arguments upcast to fp32.

    Autocast is switched off for the device of the first tensor argument, and only where it is on, so
    that an exported graph (traced without autocast) holds no autocast nodes.
    """

    @functools.wraps(function)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        tensors = [value for value in (*args, *kwargs.values()) if isinstance(value, torch.Tensor)]
        device_type = tensors[0].device.type if tensors else "cpu"
        args = tuple(_upcast_argument(value) for value in args)
        kwargs = {name: _upcast_argument(value) for name, value in kwargs.items()}
        with autocast_off(device_type):
            return function(*args, **kwargs)

    return wrapper
