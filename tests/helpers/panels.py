"""The heat-map panels anomalib's ``ImageVisualizer`` draws, read back, and a photo to draw."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

FIELD = 256  # anomalib's ImageVisualizer draws each panel at 256 x 256


def read_panels(path: Path) -> list[np.ndarray]:
    """The panels of a visualisation, side by side at 256 x 256: image, mask, image + map, image + predicted mask."""
    image = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
    assert image.shape[0] == FIELD, image.shape
    return [image[:, left : left + FIELD] for left in range(0, image.shape[1], FIELD)]


def below_title(panel: np.ndarray) -> np.ndarray:
    """The panel without its top quarter, where its title is written."""
    return panel[FIELD // 4 :]


def source_panel(path: Path) -> np.ndarray:
    """The source image as anomalib's visualiser draws it (read from its path, resized to the panel)."""
    return np.asarray(Image.open(path).convert("RGB").resize((FIELD, FIELD)), dtype=np.float64)


def smooth_photo(rng: np.random.Generator) -> np.ndarray:
    """A smooth 48 x 80 colour image (JPEG keeps it close), different in every part."""
    coarse = Image.fromarray(rng.integers(0, 256, (6, 10, 3), dtype=np.uint8))
    return np.asarray(coarse.resize((80, 48), Image.Resampling.BILINEAR))
