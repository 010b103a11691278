"""Checkpoints: learned prompts only when CLIP comes from pretrained weights, whole model otherwise."""

from __future__ import annotations

import pytest
import torch
from anomalib.engine import Engine
from conftest import TINY_CLIP

from anomalib_faprompt import AnomalyCLIP, FAPrompt
from anomalib_faprompt.components import load_open_clip
from anomalib_faprompt.data import AuxiliaryDataModule, make_synthetic_dataset


@pytest.fixture(scope="module")
def datamodule(tmp_path_factory) -> AuxiliaryDataModule:
    root = make_synthetic_dataset(tmp_path_factory.mktemp("data"), n_defect=4, n_good=4)
    return AuxiliaryDataModule(root=root, val_split_ratio=0.25, train_batch_size=4, eval_batch_size=4, num_workers=0)


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> str:
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("weights") / "tiny_clip.pt"
    torch.save(load_open_clip("tiny", None, TINY_CLIP).state_dict(), path)
    return str(path)


def _fit(model, datamodule, root) -> str:
    engine = Engine(max_epochs=1, default_root_dir=root, accelerator="cpu", logger=False, enable_progress_bar=False)
    engine.fit(model, datamodule=datamodule)
    return engine.trainer.checkpoint_callback.last_model_path or engine.trainer.checkpoint_callback.best_model_path


@pytest.mark.parametrize("model_class", [FAPrompt, AnomalyCLIP])
@pytest.mark.parametrize("from_file", [False, True])
def test_checkpoint_round_trip(model_class, from_file, tiny_model_args, datamodule, weights_file, tmp_path):
    if from_file:
        tiny_model_args["pretrained"] = weights_file
    model = model_class(**tiny_model_args)
    path = _fit(model, datamodule, tmp_path)
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    has_clip = any(key.startswith("model.backbone.clip.") for key in state)
    # Pretrained CLIP weights are re-created on load; random ones must travel with the checkpoint.
    assert has_clip is not from_file
    assert any(key.startswith("model.deep_prompts") for key in state)

    loaded = model_class.load_from_checkpoint(path)
    images = torch.randn(2, 3, 64, 64)
    model.model.eval()
    loaded.model.eval()
    with torch.no_grad():
        expected, actual = model.model(images), loaded.model(images)
    torch.testing.assert_close(actual.pred_score, expected.pred_score)
    torch.testing.assert_close(actual.anomaly_map, expected.anomaly_map)


def test_checkpoint_refuses_other_clip_weights(tiny_model_args, datamodule, weights_file, tmp_path):
    tiny_model_args["pretrained"] = weights_file
    path = _fit(FAPrompt(**tiny_model_args), datamodule, tmp_path)
    torch.manual_seed(5)
    other = tmp_path / "other.pt"
    torch.save(load_open_clip("tiny", None, TINY_CLIP).state_dict(), other)
    with pytest.raises(ValueError, match="other CLIP weights"):
        FAPrompt.load_from_checkpoint(path, pretrained=str(other))
