"""Eval-time buffers for the text embeddings that do not depend on the image.

In eval mode the normal and the static abnormal text embeddings are the same for every image. They
are computed once, when the model switches to eval mode, and kept in non-persistent buffers: the
eager eval forward reads them, they follow ``.to(device)``, and an exported graph (ONNX, OpenVINO)
holds them as constants, so the torch model and the exported model use the very same tensors.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["StaticTextCache"]


class StaticTextCache(nn.Module):
    """Normalised normal ``(D,)`` and abnormal ``(D,)`` text embeddings and the raw abnormal ones ``(K, D)``.

    Valid from :meth:`fill` until :meth:`clear`. The buffers are not persistent: checkpoints keep only the
    prompts they are computed from.
    """

    normal: torch.Tensor
    abnormal: torch.Tensor
    abnormal_prompts: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        for name in ("normal", "abnormal", "abnormal_prompts"):
            self.register_buffer(name, torch.empty(0), persistent=False)
        self.valid = False

    def fill(self, normal: torch.Tensor, abnormal: torch.Tensor, abnormal_prompts: torch.Tensor) -> None:
        """Store detached copies of the embeddings and mark the cache valid."""
        self.normal = normal.detach().clone()
        self.abnormal = abnormal.detach().clone()
        self.abnormal_prompts = abnormal_prompts.detach().clone()
        self.valid = True

    def clear(self) -> None:
        """Mark the cache stale (the prompts it was computed from may change)."""
        self.valid = False
