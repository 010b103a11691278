"""CPU autocast that refuses what CUDA's refuses, so that CPU tests fail as ``bf16-mixed`` on a GPU would."""

from __future__ import annotations

import pytest
import torch

# The ops CUDA's autocast refuses ("banned" in torch's autocast test lists; tests/unit/test_mixed_precision.py checks).
CUDA_BANNED = ["binary_cross_entropy"]


def refuse_cuda_banned_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every op CUDA's autocast bans raise while CPU autocast is on, with CUDA's message."""
    for name in CUDA_BANNED:
        original = getattr(torch._C._nn, name)

        def refuse(*args, __original=original, __name=name, **kwargs):
            if torch.is_autocast_enabled("cpu"):
                msg = f"torch.nn.functional.{__name} and torch.nn.{__name} are unsafe to autocast."
                raise RuntimeError(msg)
            return __original(*args, **kwargs)

        monkeypatch.setattr(torch._C._nn, name, refuse)
