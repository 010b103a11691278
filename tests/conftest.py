"""Shared fixtures: a tiny random open_clip ViT, the synthetic datasets, one trained checkpoint per model.

The session fixtures (datasets, checkpoints) are shared by every test of the run: read them, never write into them
(copy a dataset with ``shutil.copytree`` before changing it). The functions and constants the tests import are in
:mod:`tests.helpers`; no test imports this file.

The tests are laid out as anomalib's: ``unit/`` (fast, no subprocess, export or training through the Engine) and
``integration/``. The ``slow`` marker is given one way: ``integration/conftest.py`` marks every test of its folder,
and no test is marked by hand, so ``python -m pytest -m "not slow"`` runs ``unit/`` alone.
"""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

import pytest
import torch

from anomalib_faprompt import AnomalyCLIP, FAPrompt
from anomalib_faprompt.data import AuxiliaryDataModule, make_synthetic_dataset
from tests.helpers.autocast import refuse_cuda_banned_ops
from tests.helpers.data import SOURCE_CATEGORIES, TARGET_CATEGORIES
from tests.helpers.engine import cpu_engine
from tests.helpers.meta_json import write_meta
from tests.helpers.models import TINY_CLIP, tiny_args, write_checkpoint

# One intra-op thread: on tiny models it is many times faster than several (no fork-join, no threads spinning on a
# shared machine), and it gives the same numbers. Subprocesses (the command line, DDP) inherit it.
torch.set_num_threads(int(os.environ.setdefault("OMP_NUM_THREADS", "1")))


@pytest.fixture
def tiny_clip_config() -> dict:
    """The tiny open_clip config (a fresh copy)."""
    return copy.deepcopy(TINY_CLIP)


@pytest.fixture
def tiny_model_args() -> dict:
    """``tiny_args()`` as a fixture."""
    return tiny_args()


@pytest.fixture
def cuda_like_autocast(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every op CUDA's autocast bans raises while CPU autocast is on, with CUDA's message."""
    refuse_cuda_banned_ops(monkeypatch)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def run_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny FAPrompt's checkpoint in anomalib's run layout, ``<root>/v0`` with ``latest -> v0``.

    One per test module: a module's tests may export into its run folder.
    """
    root = tmp_path_factory.mktemp("results") / "FAPrompt" / "data" / "all"
    folder = root / "v0" / "weights" / "lightning"
    folder.mkdir(parents=True)
    path = write_checkpoint(FAPrompt(**tiny_args()), folder / "model.ckpt")
    (root / "latest").symlink_to("v0", target_is_directory=True)
    return path


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


@pytest.fixture(scope="session")
def indexed_target(synthetic_target: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of ``synthetic_target`` indexed by the authors' ``meta.json``. Read only."""
    root = tmp_path_factory.mktemp("indexed") / "target"
    shutil.copytree(synthetic_target, root)
    return write_meta(root)


@pytest.fixture(scope="session")
def clip_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny CLIP weights in a file, the stand-in for ``pretrained="openai"`` (the same CLIP everywhere). Read only."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("clip") / "tiny_clip.pt"
    torch.save(FAPrompt(**tiny_args()).model.backbone.clip.state_dict(), path)
    return path


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
    engine = cpu_engine(root, max_epochs=1)
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
