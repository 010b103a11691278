"""The real loading path: an open_clip model *name* with a local weights file (no config dict)."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch

from anomalib_faprompt import FAPrompt
from anomalib_faprompt.components import load_open_clip
from tests.helpers.models import TINY_CLIP, tiny_args

NAME = "anomalib-faprompt-tiny-test"


@pytest.fixture(scope="module")
def named_weights(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("model_configs")
    (folder / f"{NAME}.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(folder)
    torch.manual_seed(3)
    path = folder / "weights.pt"
    torch.save(load_open_clip("unused", None, TINY_CLIP).state_dict(), path)
    return str(path)


def test_named_model_loads_the_local_file(named_weights):
    expected = torch.load(named_weights, weights_only=True)
    model = load_open_clip(NAME, named_weights)
    state = model.state_dict()
    assert set(state) == set(expected)
    for key, value in state.items():
        torch.testing.assert_close(value, expected[key], msg=key)


def test_faprompt_from_named_model_and_file(named_weights):
    model = FAPrompt(**tiny_args(backbone=NAME, pretrained=named_weights, backbone_config=None))  # the name, no dict
    clip = model.model.backbone.clip
    expected = torch.load(named_weights, weights_only=True)
    torch.testing.assert_close(clip.token_embedding.weight, expected["token_embedding.weight"])
    model.model.eval()
    with torch.no_grad():
        output = model.model(torch.randn(2, 3, 64, 64))
    assert output.anomaly_map.shape == (2, 1, 64, 64)
