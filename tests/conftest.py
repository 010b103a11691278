"""Shared fixtures: a tiny random open_clip ViT and synthetic defect datasets."""

from __future__ import annotations

import copy

import pytest
import torch

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


@pytest.fixture
def tiny_clip_config() -> dict:
    return copy.deepcopy(TINY_CLIP)


@pytest.fixture
def tiny_model_args() -> dict:
    return copy.deepcopy(TINY_MODEL_ARGS)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
