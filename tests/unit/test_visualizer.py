"""The package's visualiser on its own: 16-bit images, categories naming folders, photos tagged with their turn.

tests/integration/test_run_outputs.py checks the heat-maps of whole runs.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from anomalib.data import ImageBatch, ImageItem, PredictDataset
from PIL import Image

from anomalib_faprompt.data.dataset import ImagePredictDataset
from anomalib_faprompt.errors import InvalidInputError
from anomalib_faprompt.models.visualizer import CategoryImageVisualizer
from tests.helpers.data import camera_photo
from tests.helpers.panels import below_title, read_panels, smooth_photo, source_panel


def test_a_sixteen_bit_image_is_drawn_as_its_eight_bit_copy(tmp_path):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (48, 48), dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "eight.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "sixteen.png")
    anomaly_map = torch.rand(1, 48, 48, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(48, 48, dtype=torch.bool)
    mask[10:20, 10:30] = True
    drawn = []
    for name in ("eight", "sixteen"):
        item = ImageItem(
            image=torch.zeros(3, 48, 48),
            image_path=str(tmp_path / f"{name}.png"),
            anomaly_map=anomaly_map,
            pred_score=torch.tensor(0.7),
            pred_label=torch.tensor(True),
            pred_mask=anomaly_map[0] > 0.5,
            gt_mask=mask,
            gt_label=torch.tensor(1),
        )
        drawn.append(np.asarray(CategoryImageVisualizer().visualize(item), dtype=np.int16))
    assert drawn[0].shape == drawn[1].shape
    assert np.abs(drawn[0] - drawn[1]).max() <= 1
    assert drawn[1].mean() < 250  # not white


@pytest.mark.parametrize("category", ["../../../../outside/x", "..", "a\\b"])
def test_the_visualiser_refuses_a_category_that_would_lead_out_of_its_folder(tmp_path, category):
    """A category from any datamodule (not only a checked ``meta.json``) names a folder: it must be one folder name."""
    trainer = SimpleNamespace(
        testing=True,
        test_dataloaders=[SimpleNamespace(dataset=None), SimpleNamespace(dataset=None)],
        datamodule=SimpleNamespace(test_categories=["gamma", category]),
        default_root_dir=tmp_path / "run",
    )
    visualizer = CategoryImageVisualizer()
    with pytest.raises(InvalidInputError) as caught:
        visualizer.on_test_start(trainer, None)
    assert str(caught.value).startswith(
        f"Category {category!r} (dataloader 1) names the folder of its heat-maps under '{tmp_path / 'run' / 'images'}'"
    )
    trainer.datamodule.test_categories = ["gamma", "delta"]
    visualizer.on_test_start(trainer, None)
    assert visualizer.output_path(trainer, str(tmp_path / "good" / "000.png"), 1) == (
        tmp_path / "run" / "images" / "delta" / "good" / "000.png"
    )


@pytest.mark.parametrize("reader", ["package", "anomalib"])
def test_a_tagged_photo_is_drawn_as_the_model_read_it(tmp_path, reader):
    """Upright from this package's datasets; as stored from anomalib's, whose reader ignores the tag (as the model)."""
    photo, upright = camera_photo(tmp_path, "photo", smooth_photo(np.random.default_rng(1)), 6)
    dataset = ImagePredictDataset(photo) if reader == "package" else PredictDataset(photo)
    item = dataset[0]
    anomaly_map = torch.rand(1, *item.image.shape[-2:], generator=torch.Generator().manual_seed(0))
    item = item.update(
        anomaly_map=anomaly_map,
        pred_score=torch.tensor(0.7),
        pred_label=torch.tensor(True),
        pred_mask=anomaly_map[0] > 0.5,
    )
    trainer = SimpleNamespace(
        testing=False,
        predict_dataloaders=[SimpleNamespace(dataset=dataset)],
        datamodule=None,
        default_root_dir=tmp_path / "run",
    )
    visualizer = CategoryImageVisualizer()
    visualizer.on_predict_start(trainer, None)
    visualizer.on_predict_batch_end(trainer, None, None, ImageBatch.collate([item]), 0)

    drawn = below_title(read_panels(tmp_path / "run" / "images" / "photo.jpg")[0])
    as_read, other = (upright, photo) if reader == "package" else (photo, upright)  # anomalib draws the file as stored
    assert np.abs(drawn - below_title(source_panel(as_read))).mean() < 5.0
    assert np.abs(drawn - below_title(source_panel(other))).mean() > 20.0
