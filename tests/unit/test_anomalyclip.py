"""AnomalyCLIP (docs/faprompt.md, section 8): prompts, training outputs, score and map, loss, feature layers.

Its training through anomalib's Engine: tests/integration/test_end_to_end.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.data import ImageBatch
from scipy import ndimage

from anomalib_faprompt import AnomalyCLIP
from anomalib_faprompt.models.anomalyclip.torch_model import AnomalyCLIPTrainOutput
from tests.helpers.models import TINY_MODEL_ARGS, tiny_args

S = TINY_MODEL_ARGS["image_size"]
N = (S // 8) ** 2  # patch 8


def _module(**kwargs) -> AnomalyCLIP:
    torch.manual_seed(0)
    return AnomalyCLIP(**tiny_args(**kwargs))


@pytest.fixture(scope="module")
def module() -> AnomalyCLIP:
    return _module()


@pytest.fixture
def images() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(3, 3, S, S)


# --- prompts -------------------------------------------------------------------------------------------------------


def test_normal_and_abnormal_prompts_have_separate_contexts(module):
    model = module.model
    width = model.backbone.text_width
    assert model.normal_ctx.shape == (12, width)
    assert model.abnormal_ctx.shape == (12, width)
    assert model.normal_ctx.data_ptr() != model.abnormal_ctx.data_ptr()
    assert model.normal_template.text == " ".join(["X"] * 12 + ["object."])
    assert model.abnormal_template.text == " ".join(["X"] * 12 + ["damaged object."])
    learned = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert learned == {"normal_ctx", "abnormal_ctx", "deep_prompts.prompts"}
    (group,) = module.configure_optimizers().param_groups  # Adam with the released code's settings
    assert {id(parameter) for parameter in group["params"]} == {id(p) for p in model.learned_parameters()}
    assert (group["lr"], group["betas"]) == (1e-3, (0.5, 0.999))


def test_each_context_moves_only_its_own_text_embedding():
    model = _module().model.eval()
    with torch.no_grad():
        normal, abnormal = model.static_text()
        model.abnormal_ctx.add_(torch.randn_like(model.abnormal_ctx))
        normal_1, abnormal_1 = model.static_text()
        model.normal_ctx.add_(torch.randn_like(model.normal_ctx))
        normal_2, abnormal_2 = model.static_text()
    assert abnormal.shape == (1, model.backbone.embed_dim)
    torch.testing.assert_close(normal_1, normal, rtol=0, atol=1e-6)
    assert not torch.allclose(abnormal_1, abnormal, atol=1e-3)
    torch.testing.assert_close(abnormal_2, abnormal_1, rtol=0, atol=1e-6)
    assert not torch.allclose(normal_2, normal_1, atol=1e-3)


# --- training outputs (the eval outputs of both models: test_models.py) ----------------------------------------------


def test_training_output_fields_and_shapes(images):
    model = _module().model.train()
    output = model(images)
    assert isinstance(output, AnomalyCLIPTrainOutput)
    assert output.global_logits.shape == (3, 2)
    assert output.abnormal_maps[0].shape == (3, S, S)
    assert 0.0 <= float(output.abnormal_maps[0].min()) <= float(output.abnormal_maps[0].max()) <= 1.0
    assert len(output.abnormal_maps) == 1
    assert output.global_logits.requires_grad
    assert output.abnormal_maps[0].requires_grad


def test_score_is_global_only_and_map_is_patch_probability_blurred_with_sigma_4(images, monkeypatch):
    args = tiny_args()
    del args["sigma"]  # the default
    torch.manual_seed(0)
    model = AnomalyCLIP(**args).model.eval()
    dim = model.backbone.embed_dim
    torch.manual_seed(2)
    normal_text, abnormal_text = torch.randn(dim), torch.randn(1, dim)
    global_embedding, patches = torch.randn(3, dim), torch.randn(3, N, dim)
    monkeypatch.setattr(model, "static_text", lambda: (normal_text, abnormal_text))
    monkeypatch.setattr(model.backbone, "encode_image_tokens", lambda *_: (global_embedding, (patches,), ()))
    model.text_cache.invalidate()  # the cache holds what the real prompts gave
    with torch.no_grad():
        output = model(images)

    tau = 0.07
    f_v, f_p = F.normalize(global_embedding, dim=-1), F.normalize(patches, dim=-1)
    t_n, t_a = F.normalize(normal_text, dim=-1), F.normalize(abnormal_text[0], dim=-1)
    s_n, s_a = (f_v @ t_n) / tau, (f_v @ t_a) / tau
    expected_score = torch.exp(s_a) / (torch.exp(s_n) + torch.exp(s_a))
    torch.testing.assert_close(output.pred_score, expected_score, atol=1e-5, rtol=0)

    patch_probability = torch.exp(f_p @ t_a / tau) / (torch.exp(f_p @ t_n / tau) + torch.exp(f_p @ t_a / tau))
    grid = S // 8
    upsampled = F.interpolate(patch_probability.reshape(3, 1, grid, grid), size=(S, S), mode="bilinear")
    expected_map = np.stack([ndimage.gaussian_filter(m.double().numpy(), 4.0, mode="reflect") for m in upsampled[:, 0]])
    torch.testing.assert_close(output.anomaly_map[:, 0], torch.tensor(expected_map).float(), atol=1e-5, rtol=0)

    # The score ignores the patches: other patches change the map only.
    flipped = (global_embedding, (patches.flip(1),), ())
    monkeypatch.setattr(model.backbone, "encode_image_tokens", lambda *_: flipped)
    with torch.no_grad():
        other = model(images)
    torch.testing.assert_close(other.pred_score, output.pred_score, rtol=0, atol=0)
    assert not torch.allclose(other.anomaly_map, output.anomaly_map, atol=1e-4)


# --- loss ----------------------------------------------------------------------------------------------------------


def _hand_local_loss(abnormal: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    eps = 1e-5
    normal = 1.0 - abnormal
    pt = torch.where(mask > 0, (1 - eps) * abnormal + eps * normal, eps * abnormal + (1 - eps) * normal) + eps
    focal = (-((1 - pt) ** 2) * torch.log(pt)).mean()

    def dice(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        per_image = [(2 * (a * b).sum() + 1) / (a.sum() + b.sum() + 1) for a, b in zip(x, y, strict=True)]
        return 1 - torch.stack(per_image).mean()

    return focal + dice(abnormal, mask) + dice(normal, 1 - mask)


def test_loss_is_ce_plus_four_local_by_hand(images, monkeypatch):
    module = _module()
    module.train()
    labels = torch.tensor([0, 1, 1])
    masks = torch.zeros(3, S, S)
    masks[1, 10:30, 20:40] = 1.0
    masks[2, 40:60, 5:25] = 1.0
    logged = {}
    monkeypatch.setattr(module, "log", lambda name, value, **_: logged.__setitem__(name, value))

    total = module.training_step(ImageBatch(image=images, gt_label=labels, gt_mask=masks.bool()))

    with torch.no_grad():
        output = module.model(images)
        logits = output.global_logits
        ce = (torch.logsumexp(logits, dim=1) - logits[torch.arange(3), labels]).mean()
        local = _hand_local_loss(output.abnormal_maps[0], masks)
    torch.testing.assert_close(logged["train_loss_ce"].detach(), ce, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logged["train_loss_local"].detach(), local, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(total.detach(), ce + 4.0 * local, atol=1e-5, rtol=1e-5)


# --- feature layers: several V-V blocks, as the authors' train.py/test.py default ----------------------------------


def test_feature_layers_sum_the_local_losses_and_average_the_maps(images):
    """Two layers against a direct computation from the backbone's per-layer patch tokens."""
    module = _module(feature_layers=[2, 3])
    model = module.model.eval()
    with torch.no_grad():
        output = model(images)
        normal, abnormal, _ = model.text_embeddings()
        global_embedding, layer_patches = model.backbone.encode_image_layers(images, (2, 3))
        tau = 0.07
        probabilities = []
        for patches in layer_patches:
            f_p = F.normalize(patches, dim=-1)
            s_n, s_a = f_p @ normal / tau, f_p @ abnormal / tau
            probabilities.append(torch.exp(s_a) / (torch.exp(s_n) + torch.exp(s_a)))
        expected_map = model.pixel_map((probabilities[0] + probabilities[1]) / 2)
        f_v = F.normalize(global_embedding, dim=-1)
        expected_score = torch.sigmoid((f_v @ abnormal - f_v @ normal) / tau)
    torch.testing.assert_close(output.anomaly_map, expected_map, atol=1e-6, rtol=0)
    torch.testing.assert_close(output.pred_score, expected_score, atol=1e-6, rtol=0)

    model.train()
    masks = torch.zeros(3, S, S)
    masks[0, 5:20, 10:30] = 1.0
    losses = module.compute_losses(images, torch.tensor([1, 0, 0]), masks)
    train_output = model(images)
    assert len(train_output.abnormal_maps) == 2
    expected_local = sum(_hand_local_loss(layer, masks) for layer in train_output.abnormal_maps)
    torch.testing.assert_close(losses["local"], expected_local, atol=1e-5, rtol=1e-5)


def test_default_feature_layer_is_the_last_block(images):
    last = _module(feature_layers=[3]).model.eval()  # the tiny image tower has 3 blocks
    default = _module().model.eval()
    with torch.no_grad():
        torch.testing.assert_close(last(images).anomaly_map, default(images).anomaly_map, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"feature_layers=\[1\] must be block numbers with the value-value path"):
        _module(feature_layers=[1])
