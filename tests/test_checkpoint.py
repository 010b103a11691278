"""Checkpoints: learned prompts only when CLIP comes from pretrained weights, whole model otherwise."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_CLIP, tiny_args, write_checkpoint

from anomalib_faprompt import AnomalyCLIP, FAPrompt
from anomalib_faprompt.components import load_open_clip


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> str:
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("weights") / "tiny_clip.pt"
    torch.save(load_open_clip("tiny", None, TINY_CLIP).state_dict(), path)
    return str(path)


@pytest.mark.parametrize("model_class", [FAPrompt, AnomalyCLIP])
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


@pytest.mark.slow  # trains through anomalib's Engine (the session checkpoints)
@pytest.mark.parametrize("model_class", [FAPrompt, AnomalyCLIP])
def test_trained_checkpoint_loads_the_same_by_load_from_checkpoint_and_by_weights(
    model_class, faprompt_checkpoint, anomalyclip_checkpoint
):
    """The checkpoint training writes: both ways of loading it give one model, the trained one."""
    checkpoint = faprompt_checkpoint if model_class is FAPrompt else anomalyclip_checkpoint
    loaded = model_class.load_from_checkpoint(checkpoint).model.eval()
    built = model_class(**tiny_args(weights=str(checkpoint))).model.eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected, actual = loaded(images), built(images)
    torch.testing.assert_close(actual.pred_score, expected.pred_score, rtol=0, atol=0)
    torch.testing.assert_close(actual.anomaly_map, expected.anomaly_map, rtol=0, atol=0)

    torch.manual_seed(0)  # as before training: the same random CLIP and the same initial prompts
    initial = dict(model_class(**tiny_args()).model.named_parameters())
    for name, value in loaded.named_parameters():
        assert torch.equal(value, initial[name]) is not value.requires_grad, name  # training moved the prompts only
