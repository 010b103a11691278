"""The calibrated thresholds a torch model decides with: buffers that travel in checkpoints and exported graphs.

Not set (all zero: no false-alarm rate is zero), the model gives scores and maps only, as without calibration, and
the post-processor thresholds them at 0.5. Set (:meth:`CalibratedThresholds.store`), the model's eval-mode output
adds ``pred_label = score > image threshold`` and ``pred_mask = map > pixel threshold``, the same operations in an
exported graph. The rule that gives the thresholds is :mod:`.calibration`.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["CalibratedThresholds"]


class CalibratedThresholds(nn.Module):
    """The image and pixel thresholds of one calibration, and the false-alarm rate they were calibrated for.

    Three scalar buffers, zero when not set (a false-alarm rate is above zero): ``image``, ``pixel`` and
    ``false_alarm_rate``. Whether they are set is also kept as a Python flag (:attr:`is_set`), so that an export
    decides without reading a tensor.
    """

    def __init__(self) -> None:
        super().__init__()
        for name in ("image", "pixel", "false_alarm_rate"):
            self.register_buffer(name, torch.tensor(0.0))
        self.is_set = False

    def store(self, image: float, pixel: float, false_alarm_rate: float) -> None:
        """Keep the thresholds (of scores and of map values) calibrated for ``false_alarm_rate`` (0: none, cleared).

        Stored as ordinary tensors also inside Lightning's inference mode, so that they outlive the run (an export).
        """
        device = self.image.device
        with torch.inference_mode(False):
            self.image = torch.tensor(image, dtype=torch.float32, device=device)
            self.pixel = torch.tensor(pixel, dtype=torch.float32, device=device)
            self.false_alarm_rate = torch.tensor(false_alarm_rate, dtype=torch.float32, device=device)
        self.is_set = false_alarm_rate > 0

    def clear(self) -> None:
        """Forget the thresholds."""
        self.store(0.0, 0.0, 0.0)

    def calibrated_for(self, false_alarm_rate: float | None) -> bool:
        """Whether the thresholds are set, for ``false_alarm_rate`` (stored in float32: equal to 1e-6)."""
        if not self.is_set or false_alarm_rate is None:
            return False
        return abs(float(self.false_alarm_rate) - false_alarm_rate) <= 1e-6 * false_alarm_rate

    def values(self) -> tuple[float, float, float]:
        """``(image, pixel, false_alarm_rate)`` as Python floats (zeros when not set)."""
        return float(self.image), float(self.pixel), float(self.false_alarm_rate)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: object, **kwargs: object) -> None:
        """Load the buffers, then set :attr:`is_set` from them."""
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.is_set = float(self.false_alarm_rate) > 0

    def labels(self, score: torch.Tensor, anomaly_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``pred_label`` ``score > image`` and ``pred_mask`` ``anomaly_map > pixel`` (ties are not flagged)."""
        return score > self.image, anomaly_map > self.pixel
