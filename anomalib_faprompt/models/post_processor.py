"""The models' default post-processor: the probabilities as they are, labelled at the calibrated thresholds or 0.5.

anomalib's ``PostProcessor`` labels every score and map pixel at its own threshold (here ``1 - sensitivity``: 0.5)
in its ``forward`` (the exported graph and ``model(images)``), and keeps labels that a batch already holds in the
Lightning loops. Once calibrated, the torch model gives its labels (:mod:`anomalib_faprompt.components.thresholds`):
:class:`ModelLabelsPostProcessor` keeps them on both paths, so that ``test``, ``predict``, ``model(images)`` and an
exported model decide alike. A post-processor the user gives instead sets the thresholds itself (the package's
models then leave their calibrated thresholds out of the labels; docs/calibration.md, "Which threshold decides").
"""

from __future__ import annotations

from anomalib.data import InferenceBatch
from anomalib.post_processing import PostProcessor

__all__ = ["ModelLabelsPostProcessor"]


class ModelLabelsPostProcessor(PostProcessor):
    """anomalib's ``PostProcessor`` without normalisation, keeping the model's own labels and masks where it gives them.

    Without them (no calibration) it is anomalib's ``PostProcessor(enable_normalization=False)``: scores and maps
    labelled at ``1 - image_sensitivity`` and ``1 - pixel_sensitivity`` (0.5).
    """

    def __init__(self) -> None:
        super().__init__(enable_normalization=False)

    def forward(self, predictions: InferenceBatch) -> InferenceBatch:
        """The post-processing of anomalib, then the model's label and mask in place of the thresholded ones."""
        processed = super().forward(predictions)
        if predictions.pred_label is None:
            return processed
        return InferenceBatch(
            pred_label=predictions.pred_label,
            pred_score=processed.pred_score,
            pred_mask=predictions.pred_mask,
            anomaly_map=processed.anomaly_map,
        )
