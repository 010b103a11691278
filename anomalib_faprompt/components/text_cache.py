"""Eval-time buffers for the text embeddings that do not depend on the image.

In eval mode the normal and the static abnormal text embeddings are the same for every image. They are
kept in non-persistent buffers: the eager eval forward reads them, they follow ``.to(device)``, and an
exported graph (ONNX, OpenVINO) holds them as constants, so the torch model and the exported model use the
very same tensors.

One rule keeps them right: the buffers hold what the learned parameters gave when they were computed, and
they are recomputed on the next read whenever a learned parameter has changed since. A change is an
in-place update (an optimiser step, ``load_state_dict``), which bumps the tensor's version counter, or a
conversion (``to``, ``double``, ...), which changes its device or dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

__all__ = ["StaticTextCache"]

TextPair = tuple[torch.Tensor, torch.Tensor]


def _state(parameters: Iterable[torch.Tensor]) -> tuple:
    """What identifies the current values of ``parameters``: version counter, device and dtype of each."""
    return tuple((parameter._version, parameter.device, parameter.dtype) for parameter in parameters)  # noqa: SLF001


class StaticTextCache(nn.Module):
    """Normalised normal ``(D,)`` and abnormal ``(D,)`` text embeddings, recomputed when their sources change.

    The buffers are not persistent: checkpoints keep only the prompts they are computed from.
    """

    normal: torch.Tensor
    abnormal: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("normal", torch.empty(0), persistent=False)
        self.register_buffer("abnormal", torch.empty(0), persistent=False)
        self._state: tuple | None = None

    def read(self, compute: Callable[[], TextPair], sources: Iterable[torch.Tensor]) -> TextPair:
        """The cached embeddings, recomputed first (without gradients) if a source parameter changed.

        While a graph is being exported the buffers are read as they are: they enter the graph as constants
        (the exporting module reads them once before tracing, which fills them).

        Args:
            compute: Computes ``(normal, abnormal)`` from the current parameters.
            sources: The learned parameters the embeddings depend on.

        Returns:
            ``(normal, abnormal)``.
        """
        if not torch.compiler.is_exporting():
            state = _state(sources)
            if state != self._state:
                with torch.no_grad():
                    normal, abnormal = compute()
                self.normal, self.abnormal = normal.detach().clone(), abnormal.detach().clone()
                self._state = state
        return self.normal, self.abnormal

    def invalidate(self) -> None:
        """Recompute on the next read (needed only after assigning a parameter's ``.data`` by hand)."""
        self._state = None
