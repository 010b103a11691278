"""Mixed precision through anomalib's Engine: ``precision="bf16-mixed"`` trains, tests and predicts on the CPU.

The ``cuda_like_autocast`` fixture (tests/conftest.py) makes the CPU's autocast refuse what CUDA's refuses.
"""

from __future__ import annotations

from pathlib import Path

import torch

from anomalib_faprompt import FAPrompt
from anomalib_faprompt.data import AuxiliaryDataModule, make_synthetic_dataset
from tests.helpers.engine import cpu_engine
from tests.helpers.models import tiny_args


def test_engine_bf16_mixed_fit_test_predict(tmp_path: Path, cuda_like_autocast: None) -> None:
    """anomalib's Engine with ``precision="bf16-mixed"`` (Lightning's CPU autocast) trains, tests and predicts."""
    root = make_synthetic_dataset(tmp_path / "data", categories=("alpha",), n_train=1, n_good=4, n_defect=4)
    torch.manual_seed(0)
    model = FAPrompt(**tiny_args(visualizer=False))
    datamodule = AuxiliaryDataModule(
        root=root, val_split_ratio=0.25, train_batch_size=4, eval_batch_size=4, num_workers=0
    )
    engine = cpu_engine(tmp_path / "results", precision="bf16-mixed", max_steps=2)
    engine.fit(model, datamodule=datamodule)
    assert engine.trainer.precision == "bf16-mixed"
    assert engine.trainer.global_step == 2
    metrics = engine.test(model, datamodule=datamodule)[0]
    assert 0.0 <= metrics["image_AUROC"] <= 1.0
    predictions = engine.predict(model, dataloaders=datamodule.test_dataloader())
    for batch in predictions:
        assert batch.pred_score.dtype == batch.anomaly_map.dtype == torch.float32
        assert float(batch.anomaly_map.min()) >= 0.0
        assert float(batch.anomaly_map.max()) <= 1.0
