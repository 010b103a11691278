"""Checkpoints: learned prompts only when CLIP comes from pretrained weights, whole model otherwise; read once."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from anomalib_faprompt import AnomalyCLIP, FAPrompt
from anomalib_faprompt.components import load_open_clip
from anomalib_faprompt.models.inspection import CheckedCheckpointIO, reading_once
from anomalib_faprompt.pipelines import checks
from tests.helpers.models import TINY_CLIP, each_model, tiny_args, write_checkpoint


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> str:
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("weights") / "tiny_clip.pt"
    torch.save(load_open_clip("tiny", None, TINY_CLIP).state_dict(), path)
    return str(path)


@each_model
@pytest.mark.parametrize("from_file", [False, True])
def test_checkpoint_round_trip(model_class, from_file, weights_file, tmp_path):
    model = model_class(**tiny_args(pretrained=weights_file if from_file else None))
    path = write_checkpoint(model, tmp_path / "model.ckpt")
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    has_clip = any(key.startswith("model.backbone.clip.") for key in state)
    # Pretrained CLIP weights are re-created on load; random ones must travel with the checkpoint.
    assert has_clip is not from_file
    assert any(key.startswith("model.deep_prompts") for key in state)

    torch.manual_seed(7)  # the loaded model starts from other random prompts (and CLIP): only loading makes it equal
    loaded = model_class.load_from_checkpoint(path)
    images = torch.randn(2, 3, 64, 64)
    model.model.eval()
    loaded.model.eval()
    with torch.no_grad():
        expected, actual = model.model(images), loaded.model(images)
    torch.testing.assert_close(actual.pred_score, expected.pred_score)
    torch.testing.assert_close(actual.anomaly_map, expected.anomaly_map)


def test_checkpoint_refuses_other_clip_weights(weights_file, tmp_path):
    path = write_checkpoint(FAPrompt(**tiny_args(pretrained=weights_file)), tmp_path / "model.ckpt")
    torch.manual_seed(5)
    other = tmp_path / "other.pt"
    torch.save(load_open_clip("tiny", None, TINY_CLIP).state_dict(), other)
    with pytest.raises(ValueError, match="other CLIP weights"):
        FAPrompt.load_from_checkpoint(path, pretrained=str(other))


def _counted_reads(monkeypatch: pytest.MonkeyPatch) -> Counter:
    """Every ``torch.load`` from now on (the package's reader and Lightning's, which opens the file), by file."""
    reads: Counter = Counter()
    load = torch.load

    def counting(file, *args, **kwargs):
        name = file if isinstance(file, str | Path) else getattr(file, "path", None) or file.name  # Lightning: a file
        reads[str(Path(name))] += 1
        return load(file, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting)
    return reads


def test_a_ckpt_path_is_read_once_and_given_to_lightning_as_its_reader_gives_it(tmp_path, monkeypatch):
    path = write_checkpoint(AnomalyCLIP(**tiny_args()), tmp_path / "model.ckpt")
    expected = TorchCheckpointIO().load_checkpoint(path)  # Lightning's own reader
    reads = _counted_reads(monkeypatch)
    checkpoint = CheckedCheckpointIO(AnomalyCLIP).load_checkpoint(path)
    assert reads == {str(path): 1}
    assert checkpoint.keys() == expected.keys()
    assert checkpoint["state_dict"].keys() == expected["state_dict"].keys()
    for key, value in expected["state_dict"].items():
        torch.testing.assert_close(checkpoint["state_dict"][key], value, rtol=0, atol=0, equal_nan=True, msg=key)
    assert checkpoint["hyper_parameters"] == expected["hyper_parameters"]


def test_within_one_run_a_weights_file_is_read_once_for_its_check_and_every_model(tmp_path, monkeypatch):
    """A benchmark run: the config check and each job's model read the job's `weights` once in all."""
    path = write_checkpoint(FAPrompt(**tiny_args()), tmp_path / "model.ckpt")
    config = {
        "benchmark": {
            "seed": 1,
            "model": {"class_path": "FAPrompt", "init_args": tiny_args(weights=str(path))},
            "data": {"class_path": "MVTecAD", "init_args": {"category": {"grid": ["a", "b"]}}},
        }
    }
    reads = _counted_reads(monkeypatch)
    with reading_once():
        assert checks.unusable_weights(config) == []
        models = [FAPrompt(**tiny_args(weights=str(path))) for _ in range(2)]
        edited = CheckedCheckpointIO(FAPrompt).load_checkpoint(path)  # Lightning's hooks edit what they are given
        edited["state_dict"].clear()
        models.append(FAPrompt(**tiny_args(weights=str(path))))
    assert reads == {str(path): 1}
    FAPrompt(**tiny_args(weights=str(path)))  # outside a run, each model reads the file it is built with
    assert reads == {str(path): 2}
    saved = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    for model in models:
        for name, value in model.model.named_parameters():
            assert torch.equal(value, saved[f"model.{name}"]), name
