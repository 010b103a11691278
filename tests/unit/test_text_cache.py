"""The eval-time text cache: buffers recomputed exactly when the learned parameters they come from change."""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812

from anomalib_faprompt import FAPrompt
from tests.helpers.models import each_model


def fresh_static_text(model) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        normal, abnormal = model.static_text()
    return F.normalize(normal, dim=-1), F.normalize(abnormal.mean(dim=0), dim=-1)


@each_model
def test_eval_read_fills_buffers_that_are_not_checkpointed(model_class, tiny_model_args):
    model = model_class(**tiny_model_args).model.eval()
    assert model.text_cache.normal.numel() == 0
    normal, abnormal, raw = model.text_embeddings()
    assert raw is None  # eval reads only the normalised pair
    expected_normal, expected_abnormal = fresh_static_text(model)
    assert torch.equal(normal, expected_normal)
    assert torch.equal(abnormal, expected_abnormal)
    buffers = dict(model.named_buffers())
    assert buffers["text_cache.normal"] is model.text_cache.normal
    assert not any(key.startswith("text_cache") for key in model.state_dict())
    assert set(model.text_cache.state_dict(keep_vars=True)) == set()


@each_model
def test_loaded_prompts_are_read_after_load_state_dict(model_class, tiny_model_args):
    model = model_class(**tiny_model_args).model.eval()
    before = model.text_embeddings().abnormal.clone()
    state = model.state_dict()
    for key in ("normal_ctx", "abnormal_ctx"):
        state[key] = torch.randn_like(state[key])  # not a constant shift: the layer norms remove those
    model.load_state_dict(state)
    after = model.text_embeddings().abnormal
    assert not torch.allclose(after, before)
    assert torch.equal(after, fresh_static_text(model)[1])


def test_eval_forward_reads_the_buffers(tiny_model_args, monkeypatch):
    """The eager eval forward uses the cached tensors: with the cached abnormal text negated, its outputs are those
    computed afresh from a negated abnormal prompt embedding."""
    model = FAPrompt(**tiny_model_args).model.eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        first = model(images)
        model.text_cache.abnormal = -model.text_cache.abnormal
        cached = model(images)
        normal, abnormal = model.static_text()
        monkeypatch.setattr(model, "static_text", lambda: (normal, -abnormal))
        model.text_cache.invalidate()
        computed = model(images)
    torch.testing.assert_close(cached.pred_score, computed.pred_score, rtol=0, atol=1e-6)
    torch.testing.assert_close(cached.anomaly_map, computed.anomaly_map, rtol=0, atol=1e-6)
    assert not torch.allclose(cached.pred_score, first.pred_score, atol=1e-3)


def test_training_forward_recomputes_text_with_gradients(tiny_model_args):
    model = FAPrompt(**tiny_model_args).model.train()
    output = model(torch.randn(2, 3, 64, 64))
    output.abnormal_map.sum().backward()
    assert model.normal_ctx.grad is not None
    assert model.normal_ctx.grad.abs().sum() > 0


def test_conversion_recomputes_the_cache_in_the_new_dtype(tiny_model_args):
    model = FAPrompt(**tiny_model_args).model.eval()
    model.text_embeddings()
    model.double()
    normal, abnormal, _ = model.text_embeddings()
    assert normal.dtype == torch.float64
    expected_normal, expected_abnormal = fresh_static_text(model)
    assert torch.equal(normal, expected_normal)
    assert torch.equal(abnormal, expected_abnormal)


def test_data_assignment_needs_invalidate(tiny_model_args):
    """Assigning ``.data`` by hand bumps no version counter: ``invalidate()`` is the documented way."""
    model = FAPrompt(**tiny_model_args).model.eval()
    before = model.text_embeddings().normal.clone()
    model.normal_ctx.data = torch.randn_like(model.normal_ctx)
    model.text_cache.invalidate()
    after = model.text_embeddings().normal
    assert not torch.allclose(after, before)
    assert torch.equal(after, fresh_static_text(model)[0])
