"""The tiny models the tests build: a random open_clip ViT from a config dict, both prompt models on it."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer

import anomalib_faprompt
from anomalib_faprompt.names import MODEL_NAMES

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
MODEL_CLASSES = tuple(getattr(anomalib_faprompt, name) for name in MODEL_NAMES)  # the package's models

each_model = pytest.mark.parametrize("model_class", MODEL_CLASSES, ids=lambda cls: cls.__name__)
"""Runs a test taking ``model_class`` once for each of the package's models."""


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


def trained_like(model_class: type, **overrides) -> LightningModule:
    """``as_if_trained`` of a tiny ``model_class`` built with ``tiny_args(**overrides)`` after ``manual_seed(0)``."""
    torch.manual_seed(0)
    return as_if_trained(model_class(**tiny_args(**overrides)))


def write_checkpoint(model: LightningModule, path: Path) -> Path:
    """Write the model's checkpoint as Lightning does, without training."""
    trainer = Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    return Path(path)
