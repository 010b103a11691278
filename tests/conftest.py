"""Shared fixtures: a tiny random open_clip ViT, the synthetic datasets, one trained checkpoint per model.

The session fixtures (datasets, checkpoints) are shared by every test of the run: read them, never write into them
(copy a dataset with ``shutil.copytree`` before changing it). The functions and constants the tests import are in
:mod:`tests.helpers`.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch

from anomalib_faprompt import AnomalyCLIP, FAPrompt
from anomalib_faprompt.data import AuxiliaryDataModule, make_synthetic_dataset
from tests.helpers.data import SOURCE_CATEGORIES, TARGET_CATEGORIES
from tests.helpers.engine import cpu_engine
from tests.helpers.models import TINY_CLIP, tiny_args

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
