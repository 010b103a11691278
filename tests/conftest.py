"""Shared fixtures: a tiny random open_clip ViT, the synthetic datasets, one trained checkpoint per model; the tiers.

Two tiers: ``python -m pytest -m "not slow"`` runs the fast unit tests; ``python -m pytest`` runs everything. A test
is ``slow`` when it starts a subprocess (the ``anomalib`` command line, a script), exports, runs a pipeline, trains
through anomalib's Engine (the trained checkpoints below included) or takes more than about two seconds. It is marked
in its own file, one way: ``@pytest.mark.slow``, or ``pytestmark = pytest.mark.slow`` for a file of such tests.

The session fixtures (datasets, checkpoints) are shared by every test of the run: read them, never write into them
(copy a dataset with ``shutil.copytree`` before changing it).
"""

from __future__ import annotations

import copy
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.engine import Engine
from lightning.pytorch import LightningModule, Trainer
from PIL import Image

from anomalib_faprompt import AnomalyCLIP, FAPrompt
from anomalib_faprompt.data import AuxiliaryDataModule, make_synthetic_dataset

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 3, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 3},
}
TINY_MODEL_ARGS = {
    "pretrained": None,
    "backbone_config": TINY_CLIP,
    "image_size": 64,
    "vv_layers": 2,
    "prompt_depth": 3,
    "sigma": 2.0,
}

# One intra-op thread: on tiny models it is many times faster than several (no fork-join, no threads spinning on a
# shared machine), and it gives the same numbers. Subprocesses (the command line, DDP) inherit it.
torch.set_num_threads(int(os.environ.setdefault("OMP_NUM_THREADS", "1")))

# The synthetic datasets of the README's main job (`python -m anomalib_faprompt.data.synthetic`, default sizes).
SOURCE_CATEGORIES = ("alpha", "beta")
TARGET_CATEGORIES = ("gamma", "delta", "epsilon")
N_GOOD = 6  # normal test images per category
N_DEFECT = 6  # defect test images per category

REPO = Path(__file__).parents[1]
ANOMALIB = str(Path(sys.executable).parent / "anomalib")


def subprocess_env(**env: str) -> dict[str, str]:
    """The environment of a fresh interpreter of this checkout: this environment with this checkout's package first on
    ``PYTHONPATH``, Python's default warning filters (an inherited ``PYTHONWARNINGS`` is dropped), and ``env``."""
    path = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    inherited = {name: value for name, value in os.environ.items() if name != "PYTHONWARNINGS"}
    return {**inherited, "PYTHONPATH": path, **env}


def anomalib_cli(
    *args: str | Path, cwd: Path = REPO, returncode: int | None = 0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``anomalib ARGS`` in a fresh interpreter of this environment (with its start-up hook), output captured.

    The returned process also has ``output``: its stdout, then its stderr.

    Args:
        args: The command line after ``anomalib``.
        cwd: Where it runs.
        returncode: The exit status it must end with (``None``: any).
        env: Environment variables to set for it (a 200-column console is set; see :func:`subprocess_env`).
    """
    environment = subprocess_env(COLUMNS="200", **(env or {}))
    process = subprocess.run(
        [ANOMALIB, *map(str, args)], cwd=cwd, env=environment, capture_output=True, text=True, timeout=900, check=False
    )
    process.output = process.stdout + process.stderr
    if returncode is not None:
        assert process.returncode == returncode, process.output[-5000:]
    return process


def logged_warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    """The warnings this package logged (its advice to the user) that contain ``text``, as caplog captured them."""
    return [
        record.getMessage()
        for record in caplog.records
        if record.name.startswith("anomalib_faprompt.")
        and record.levelno == logging.WARNING
        and text in record.getMessage()
    ]


def tiny_args(**overrides) -> dict:
    """Arguments of a tiny FAPrompt or AnomalyCLIP (random CLIP, 64 x 64 images), a fresh copy, with ``overrides``."""
    return {**copy.deepcopy(TINY_MODEL_ARGS), **overrides}


def as_if_trained(model: LightningModule) -> LightningModule:
    """``model`` with its learned parameters drawn from N(0, 0.05), away from their start as after training; eval mode.

    The prompts count as learned (no never-trained warning); the text cache is recomputed on the next eval call.
    """
    with torch.no_grad():
        for parameter in model.model.learned_parameters():
            parameter.normal_(0, 0.05)
    model.model.text_cache.invalidate()
    model.learned = True
    return model.eval()


def write_checkpoint(model: LightningModule, path: Path) -> Path:
    """Write the model's checkpoint as Lightning does, without training."""
    trainer = Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    return Path(path)


def prediction_fields(seed: int, labels: list[int], size: int = 8) -> dict[str, torch.Tensor]:
    """A category's labels and model outputs for evaluator tests, seeded.

    Scores and ``size`` x ``size`` maps respond to the defects; every defect image's mask has a square.
    """
    generator = torch.Generator().manual_seed(seed)
    labels = torch.tensor(labels, dtype=torch.long)
    masks = torch.zeros(len(labels), size, size, dtype=torch.bool)
    masks[labels == 1, 2:5, 3:6] = True
    return {
        "gt_label": labels,
        "pred_score": 0.7 * torch.rand(len(labels), generator=generator) + 0.3 * labels,
        "anomaly_map": 0.8 * torch.rand(len(labels), 1, size, size, generator=generator) + 0.2 * masks[:, None],
        "gt_mask": masks,
    }


# EXIF Orientation (tag 0x0112 of IFD0, EXIF 2.32 / CIPA DC-008): how a viewer turns the stored pixels upright;
# 3: half a turn, 6: a quarter turn clockwise, 8: a quarter turn counter-clockwise. `np.rot90(a, k)` turns `a` by k
# quarter turns counter-clockwise.
EXIF_ORIENTATION = 0x0112
TURN_UPRIGHT = {3: 2, 6: -1, 8: 1}


def exif_tagged(orientation: int) -> Image.Exif:
    """EXIF data holding only the orientation tag, as ``PIL.Image.save(..., exif=...)`` writes it into a file."""
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    return exif


def camera_photo(folder: Path, name: str, upright: np.ndarray, orientation: int) -> tuple[Path, Path]:
    """A JPEG as a camera held turned writes it, and the same photo upright as a PNG without a tag.

    The camera stores the pixels as its sensor saw them (``upright`` turned the other way) and tags them with how
    to turn them upright. The PNG holds the JPEG's decoded pixels turned upright by hand (losslessly): the photo
    as a viewer shows it, pixel for pixel.

    Returns:
        ``<name>.jpg`` (tagged) and ``<name>_upright.png``.
    """
    turns = TURN_UPRIGHT[orientation]
    photo = folder / f"{name}.jpg"
    stored = np.ascontiguousarray(np.rot90(upright, -turns))
    Image.fromarray(stored).save(photo, quality=95, exif=exif_tagged(orientation))
    with Image.open(photo) as stored:  # as stored: PIL applies no tag by itself
        decoded = np.asarray(stored.convert("RGB"))
    shown = folder / f"{name}_upright.png"
    Image.fromarray(np.ascontiguousarray(np.rot90(decoded, turns))).save(shown)
    return photo, shown


@pytest.fixture
def tiny_clip_config() -> dict:
    """The tiny open_clip config (a fresh copy)."""
    return copy.deepcopy(TINY_CLIP)


@pytest.fixture
def tiny_model_args() -> dict:
    """``tiny_args()`` as a fixture."""
    return tiny_args()


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def synthetic_datasets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of ``synthetic_source`` and ``synthetic_target``."""
    return tmp_path_factory.mktemp("datasets")


@pytest.fixture(scope="session")
def synthetic_source(synthetic_datasets: Path) -> Path:
    """The source dataset (MVTec AD layout): alpha and beta, 6 normal and 6 defect test images each. Read only."""
    return make_synthetic_dataset(synthetic_datasets / "synthetic_source", categories=SOURCE_CATEGORIES, seed=0)


@pytest.fixture(scope="session")
def synthetic_target(synthetic_datasets: Path) -> Path:
    """The target dataset: gamma, delta and epsilon, 6 normal and 6 defect test images each. Read only."""
    return make_synthetic_dataset(synthetic_datasets / "synthetic_target", categories=TARGET_CATEGORIES, seed=1)


def _train_one_epoch(model_class: type, source: Path, target: Path, root: Path) -> Path:
    torch.manual_seed(0)
    datamodule = AuxiliaryDataModule(
        root=source,
        val_split_ratio=0.25,
        target_dataset="MVTecAD",
        target_root=target,
        train_batch_size=8,
        eval_batch_size=8,
        num_workers=0,
    )
    engine = Engine(
        accelerator="cpu", devices=1, max_epochs=1, default_root_dir=root, logger=False, enable_progress_bar=False
    )
    engine.fit(model_class(**tiny_args()), datamodule=datamodule)
    return Path(engine.best_model_path)


@pytest.fixture(scope="session")
def faprompt_checkpoint(
    synthetic_source: Path, synthetic_target: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The tiny FAPrompt trained one epoch on ``synthetic_source``: its Lightning checkpoint. Read only.

    As the README's main job trains it (``fit`` only, no test): in the run folder anomalib writes,
    ``<root>/FAPrompt/synthetic_source_to_synthetic_target/all/v0/weights/lightning/model.ckpt``.
    """
    return _train_one_epoch(FAPrompt, synthetic_source, synthetic_target, tmp_path_factory.mktemp("faprompt_run"))


@pytest.fixture(scope="session")
def anomalyclip_checkpoint(
    synthetic_source: Path, synthetic_target: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The tiny AnomalyCLIP trained one epoch on ``synthetic_source``, as ``faprompt_checkpoint``. Read only."""
    return _train_one_epoch(AnomalyCLIP, synthetic_source, synthetic_target, tmp_path_factory.mktemp("anomalyclip_run"))
