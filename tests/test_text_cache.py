"""The eval-time text cache: buffers filled on entering eval mode, refreshed on load, stale in training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from anomalib_faprompt import AnomalyCLIP, FAPrompt

MODELS = pytest.mark.parametrize("model_class", [FAPrompt, AnomalyCLIP], ids=lambda cls: cls.__name__)


def fresh_static_text(model) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        normal, abnormal = model.static_text()
    return F.normalize(normal, dim=-1), F.normalize(abnormal.mean(dim=0), dim=-1)


@MODELS
def test_eval_fills_buffers_that_are_not_checkpointed(model_class, tiny_model_args):
    model = model_class(**tiny_model_args).model
    assert not model.text_cache.valid
    model.eval()
    assert model.text_cache.valid
    normal, abnormal = fresh_static_text(model)
    assert torch.equal(model.text_cache.normal, normal)
    assert torch.equal(model.text_cache.abnormal, abnormal)
    buffers = dict(model.named_buffers())
    assert buffers["text_cache.normal"] is model.text_cache.normal
    assert not any(key.startswith("text_cache") for key in model.state_dict())


@MODELS
def test_load_state_dict_in_eval_refreshes_and_train_marks_stale(model_class, tiny_model_args):
    model = model_class(**tiny_model_args).model.eval()
    before = model.text_cache.abnormal.clone()
    state = model.state_dict()
    for key in ("normal_ctx", "abnormal_ctx"):
        state[key] = torch.randn_like(state[key])  # not a constant shift: the layer norms remove those
    model.load_state_dict(state)
    assert model.text_cache.valid
    assert not torch.allclose(model.text_cache.abnormal, before)
    assert torch.equal(model.text_cache.abnormal, fresh_static_text(model)[1])
    assert model.text_cache.abnormal_prompts.shape == (
        model.abnormal_ctx.shape[0] if model_class is FAPrompt else 1,
        32,
    )
    model.train()
    assert not model.text_cache.valid


def test_eval_forward_reads_the_buffers(tiny_model_args):
    """The eager eval forward uses the cached tensors: changing the buffer changes the output."""
    model = FAPrompt(**tiny_model_args).model.eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        first = model(images).pred_score
        model.text_cache.abnormal = -model.text_cache.abnormal
        second = model(images).pred_score
    assert not torch.allclose(first, second)


def test_training_forward_recomputes_text_with_gradients(tiny_model_args):
    model = FAPrompt(**tiny_model_args).model.train()
    output = model(torch.randn(2, 3, 64, 64))
    output.abnormal_map.sum().backward()
    assert model.normal_ctx.grad is not None
    assert model.normal_ctx.grad.abs().sum() > 0


def test_conversion_recomputes_the_cache_in_the_new_dtype(tiny_model_args):
    model = FAPrompt(**tiny_model_args).model.eval().double()
    assert model.text_cache.normal.dtype == torch.float64
    normal, abnormal = fresh_static_text(model)
    assert torch.equal(model.text_cache.normal, normal)
    assert torch.equal(model.text_cache.abnormal, abnormal)
