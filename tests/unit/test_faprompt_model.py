"""FAPromptModel: DAP and score/map fusion (docs/faprompt.md, sections 5 and 6), outputs, text cache, parameters."""

from __future__ import annotations

import inspect
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from scipy import ndimage
from torch import nn

from anomalib_faprompt import FAPrompt
from anomalib_faprompt.components import PromptTemplate, binary_focal_loss, encode_prompts, local_loss
from anomalib_faprompt.models.faprompt.torch_model import FAPromptTrainOutput
from tests.helpers.models import TINY_MODEL_ARGS, tiny_args

S = TINY_MODEL_ARGS["image_size"]
N = (S // 8) ** 2  # patch 8


def _model(**kwargs) -> nn.Module:
    torch.manual_seed(0)
    return FAPrompt(**tiny_args(**kwargs)).model


@pytest.fixture(scope="module")
def model():
    return _model()


@pytest.fixture
def images():
    torch.manual_seed(1)
    return torch.randn(3, 3, S, S)


# --- DAP ---------------------------------------------------------------------------------------------------------


def test_topk_selects_most_abnormal_patches_in_descending_order(model):
    batch, n_patches, dim, m = 2, 12, 3, model.n_prior_patches
    patches = torch.arange(batch * n_patches * dim, dtype=torch.float32).reshape(batch, n_patches, dim)
    order = [torch.tensor([7, 2, 11, 0, 5, 9, 1, 3, 10, 4, 6, 8]), torch.tensor([3, 4, 5, 6, 7, 8, 9, 10, 11, 0, 1, 2])]
    probs = torch.zeros(batch, n_patches)
    for b in range(batch):
        probs[b, order[b]] = torch.linspace(0.99, 0.01, n_patches)  # order[b][0] is the most abnormal
    selected = model.select_patches(patches, probs)
    assert selected.shape == (batch, m * dim)
    for b in range(batch):
        expected = torch.cat([patches[b, index] for index in order[b][:m]])
        torch.testing.assert_close(selected[b], expected, rtol=0, atol=0)


def test_gradient_reaches_exactly_the_selected_patches(model):
    patches = torch.randn(1, N, 4, requires_grad=True)
    probs = torch.rand(1, N)
    model.select_patches(patches, probs).sum().backward()
    top = probs[0].topk(model.n_prior_patches).indices
    reached = patches.grad[0].abs().sum(dim=-1) > 0
    assert reached.nonzero()[:, 0].tolist() == sorted(top.tolist())
    torch.testing.assert_close(patches.grad[0, top], torch.ones(model.n_prior_patches, 4), rtol=0, atol=0)


def test_prior_network_sees_the_top_patches_of_the_static_map(model, images):
    """The prior network's input: the M patches with the highest static abnormal probability, most abnormal first."""
    model.eval()
    captured = {}
    hook = model.prior_net.register_forward_hook(lambda _m, inputs, _o: captured.__setitem__("input", inputs[0]))
    try:
        with torch.no_grad():
            model(images)
            patches = F.normalize(model.backbone.encode_image(images)[1], dim=-1)
            normal, abnormal, _ = model.text_embeddings()
    finally:
        hook.remove()
    logits = torch.stack([patches @ normal, patches @ abnormal], dim=-1) / model.temperature
    static = logits.softmax(dim=-1)[..., 1]
    order = static.argsort(dim=1, descending=True)[:, : model.n_prior_patches]
    expected = torch.stack([patches[b, order[b]].flatten() for b in range(images.shape[0])])
    torch.testing.assert_close(captured["input"], expected, atol=1e-6, rtol=0)
    # Not the patches of another rule: the first M, or the least abnormal M.
    assert not torch.allclose(captured["input"], patches[:, : model.n_prior_patches].flatten(1), atol=1e-3)
    lowest = static.argsort(dim=1)[:, : model.n_prior_patches]
    assert not torch.allclose(captured["input"][0], patches[0, lowest[0]].flatten(), atol=1e-3)


def test_first_k_selection_reproduces_released_code():
    first_k = _model(patch_selection="first_k")
    patches = torch.randn(2, N, 5)
    probs = torch.rand(2, N)
    m = first_k.n_prior_patches
    torch.testing.assert_close(first_k.select_patches(patches, probs), patches[:, :m].flatten(1), rtol=0, atol=0)


class _ConstantPrior(nn.Module):
    """A prior network whose output is a fixed Omega per image."""

    def __init__(self, omega: torch.Tensor) -> None:
        super().__init__()
        self.omega = omega

    def forward(self, selected: torch.Tensor) -> torch.Tensor:
        return self.omega[: selected.shape[0]]


def test_prior_shifts_only_abnormal_tokens(model):
    omega = torch.randn(2, model.backbone.text_width)
    n_ctx = model.normal_ctx.shape[0]
    learned = model._abnormal_learned(omega).reshape(2, 10, -1, model.backbone.text_width)
    for b in range(2):
        for prompt in learned[b]:
            assert torch.equal(prompt[:n_ctx], model.normal_ctx)  # shared V tokens untouched
        torch.testing.assert_close(learned[b, :, n_ctx:], model.abnormal_ctx + omega[b], rtol=0, atol=0)


def test_dap_text_is_mean_of_shifted_prompts(model):
    omega = torch.randn(2, model.backbone.text_width)
    with torch.no_grad():
        dap = model.dap_text(omega)
        template: PromptTemplate = model.abnormal_template
        for b in range(2):
            shifted = torch.cat(
                [model.normal_ctx.expand(10, -1, -1), model.abnormal_ctx + omega[b]],
                dim=1,
            )
            embeddings = template.embed(model.backbone, shifted, template.length)
            eos = torch.full((10,), template.eos_index)
            raw = model.backbone.encode_text(embeddings, eos, model.deep_prompts())
            torch.testing.assert_close(dap[b], F.normalize(raw.mean(0), dim=-1), atol=1e-5, rtol=0)


def test_nonzero_prior_leaves_normal_text_and_static_map(images):
    model = _model().train()
    omega = torch.randn(3, model.backbone.text_width)  # not a uniform shift, which ln_1 would remove
    outputs = {}
    for name, scale in (("zero", 0.0), ("nonzero", 1.0)):
        model.prior_net = _ConstantPrior(scale * omega)
        with torch.no_grad():
            outputs[name] = model(images)
    zero, nonzero = outputs["zero"], outputs["nonzero"]
    # Normal logit f_v.F_n and the static maps M^a do not see the prior; the DAP side does.
    torch.testing.assert_close(zero.global_logits[:, 0], nonzero.global_logits[:, 0], rtol=0, atol=0)
    torch.testing.assert_close(zero.abnormal_map, nonzero.abnormal_map, rtol=0, atol=0)
    torch.testing.assert_close(zero.abnormal_text, nonzero.abnormal_text, rtol=0, atol=0)
    assert not torch.allclose(zero.global_logits[:, 1], nonzero.global_logits[:, 1], atol=1e-4)
    assert not torch.allclose(zero.dap_abnormal_map, nonzero.dap_abnormal_map, atol=1e-4)
    # With a zero prior the DAP prompts are the static abnormal prompts.
    normal_text = F.normalize(
        encode_prompts(model.backbone, [(model.normal_template, model.normal_ctx[None])], model.deep_prompts())[0][0],
        dim=-1,
    )
    global_embedding, _ = model.backbone.encode_image(images)
    expected_normal_logit = F.normalize(global_embedding, dim=-1) @ normal_text / model.temperature
    torch.testing.assert_close(zero.global_logits[:, 0], expected_normal_logit.detach(), atol=1e-4, rtol=0)
    torch.testing.assert_close(zero.abnormal_map, zero.dap_abnormal_map, atol=1e-5, rtol=0)


# --- training outputs (the eval outputs of both models: test_models.py) -----------------------------------------------


def test_training_output_fields_and_shapes(images):
    model = _model().train()
    output = model(images)
    assert isinstance(output, FAPromptTrainOutput)
    dim, width = model.backbone.embed_dim, model.backbone.text_width
    assert output.global_logits.shape == (3, 2)
    assert output.pred_score.shape == (3,)
    assert output.abnormal_map.shape == (3, S, S)
    assert output.dap_abnormal_map.shape == (3, S, S)
    assert output.abnormal_text.shape == (10, dim)
    assert output.prior.shape == (3, width)
    for value in (output.pred_score, output.abnormal_map, output.dap_abnormal_map):
        assert 0.0 <= float(value.min()) <= float(value.max()) <= 1.0
    for value in output:
        assert value.requires_grad  # every field carries the graph for its loss


# --- fusion on a hand-made example ---------------------------------------------------------------------------------


def _unit(dim: int, angle: float) -> torch.Tensor:
    vector = torch.zeros(dim)
    vector[0], vector[1] = math.cos(angle), math.sin(angle)
    return vector


@pytest.mark.parametrize("local_score", ["paper", "released"])
def test_fusion_on_hand_made_example(local_score, monkeypatch):
    model = _model(local_score=local_score).eval()
    model.temperature = 0.5
    dim = model.backbone.embed_dim
    normal_text, abnormal_text, dap_text = _unit(dim, 0.0), _unit(dim, math.pi / 2), _unit(dim, math.pi / 4)
    angles = torch.linspace(0.0, math.pi / 2, N)  # patch j at angle a_j
    patches = torch.stack([_unit(dim, float(a)) for a in angles])[None].repeat(2, 1, 1)
    patches[1] = patches[1].flip(0)
    global_embedding = torch.stack([_unit(dim, 0.3), _unit(dim, 1.2)])

    encoded = (2.0 * global_embedding, (3.0 * patches,), ())
    monkeypatch.setattr(model.backbone, "encode_image_tokens", lambda images, layers, ordinary: encoded)
    monkeypatch.setattr(model, "static_text", lambda: (normal_text, abnormal_text[None]))
    monkeypatch.setattr(model, "dap_text", lambda prior: dap_text.expand(prior.shape[0], -1))
    model.text_cache.invalidate()  # the cache holds what the real prompts gave
    model.blur = nn.Identity()

    with torch.no_grad():
        output = model(torch.zeros(2, 3, S, S))

    tau = 0.5

    def probability(normal_logit, abnormal_logit):
        return torch.softmax(torch.stack([normal_logit, abnormal_logit], dim=-1) / tau, dim=-1)[..., 1]

    # Static: cos(a) vs sin(a); DAP: cos(a) vs cos(a - pi/4).
    static = probability(torch.cos(angles), torch.sin(angles))
    dap = probability(torch.cos(angles), torch.cos(angles - math.pi / 4))
    static_max, dap_max = float(static.max()), float(dap.max())
    local = 0.5 * (static_max + dap_max) if local_score == "paper" else (2 * static_max + dap_max) / 3
    for b, angle in enumerate((0.3, 1.2)):
        global_score = float(probability(torch.tensor(math.cos(angle)), torch.tensor(math.cos(angle - math.pi / 4))))
        assert output.pred_score[b].item() == pytest.approx(0.5 * (global_score + local), abs=1e-5)

    def up(values):
        return F.interpolate(values.reshape(1, 1, S // 8, S // 8), size=(S, S), mode="bilinear", align_corners=False)

    static_maps = torch.stack([static, static.flip(0)])
    dap_maps = torch.stack([dap, dap.flip(0)])
    for b in range(2):
        m_a, m_n = up(static_maps[b]), up(1 - static_maps[b])
        d_a, d_n = up(dap_maps[b]), up(1 - dap_maps[b])
        four_maps = 0.25 * (m_a + 1 - m_n + d_a + 1 - d_n)
        torch.testing.assert_close(four_maps, 0.5 * (m_a + d_a), atol=1e-6, rtol=0)
        torch.testing.assert_close(output.anomaly_map[b : b + 1], four_maps, atol=1e-5, rtol=0)


def test_pixel_map_is_the_raw_map_blurred_as_scipy_does_with_sigma(images):
    model = _model().eval()
    with torch.no_grad():
        blurred = model(images).anomaly_map
        model.blur = nn.Identity()
        raw = model(images).anomaly_map
    sigma = TINY_MODEL_ARGS["sigma"]
    expected = np.stack([ndimage.gaussian_filter(m.double().numpy(), sigma, mode="reflect") for m in raw[:, 0]])
    torch.testing.assert_close(blurred[:, 0], torch.tensor(expected).float(), atol=1e-5, rtol=0)
    assert not torch.allclose(blurred, raw, atol=1e-4)


def test_default_sigma_reaches_the_blur():
    """The paper's sigma 10 is the default, and the model's blur uses the sigma it is given."""
    assert inspect.signature(FAPrompt).parameters["sigma"].default == 10
    assert _model(sigma=3.5).blur.sigma == 3.5


# --- text cache ----------------------------------------------------------------------------------------------------


def test_static_text_cached_in_eval_and_refreshed_after_train(images, monkeypatch):
    model = _model()
    calls = []
    encode_text = model.backbone.encode_text

    def counting(embeddings, eos_index, deep_prompts=None):
        calls.append(embeddings.shape[0])
        return encode_text(embeddings, eos_index, deep_prompts)

    monkeypatch.setattr(model.backbone, "encode_text", counting)
    k, batch = 10, images.shape[0]
    model.eval()
    with torch.no_grad():
        first = model(images)
        assert calls == [1 + k, batch * k]  # static prompts, then the B*K DAP prompts
        second = model(images)
        assert calls[2:] == [batch * k]  # static prompts come from the cache
    torch.testing.assert_close(first.pred_score, second.pred_score, rtol=0, atol=0)

    model.train()
    with torch.no_grad():
        model.normal_ctx.add_(0.5 * torch.randn_like(model.normal_ctx))
    calls.clear()
    model(images)
    assert calls == [1 + k, batch * k]  # training recomputes the static text every step

    calls.clear()
    model.eval()
    with torch.no_grad():
        third = model(images)
    assert calls == [1 + k, batch * k]  # cache rebuilt: the prompts changed since it was filled
    assert not torch.allclose(first.pred_score, third.pred_score, atol=1e-5)

    # load_state_dict writes the prompts in place: the next eval forward recomputes the cache, once.
    calls.clear()
    model.load_state_dict(model.state_dict())
    with torch.no_grad():
        model(images)
        model(images)
    assert calls == [1 + k, batch * k, batch * k]


# --- trainable parameters -----------------------------------------------------------------------------------------


def test_trainable_parameters_are_prompts_and_psi():
    lightning = FAPrompt(**tiny_args())
    model = lightning.model
    e, e_abn, k, depth, t, m = 5, 2, 10, TINY_MODEL_ARGS["prompt_depth"], 4, 10
    c, d = model.backbone.text_width, model.backbone.embed_dim
    hidden = m * d // 16
    psi = m * d * hidden + hidden + hidden * c + c
    expected = e * c + k * e_abn * c + (depth - 1) * t * c + psi
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    assert sum(p.numel() for p in trainable.values()) == expected
    assert all(
        name in {"normal_ctx", "abnormal_ctx", "deep_prompts.prompts"} or name.startswith("prior_net.")
        for name in trainable
    )
    optimizer = lightning.configure_optimizers()
    optimised = [p for group in optimizer.param_groups for p in group["params"]]
    assert sum(p.numel() for p in optimised) == expected
    assert {id(p) for p in optimised} == {id(p) for p in trainable.values()}


# --- lightning module: targets and total loss (docs/faprompt.md, section 7) -------------------------------------------


def _batch(images: torch.Tensor, mask_size: int) -> SimpleNamespace:
    masks = torch.zeros(images.shape[0], 1, mask_size, mask_size)
    masks[0, :, 3:9, 2:7] = 1.0
    masks[2, :, :5, -4:] = 0.7
    return SimpleNamespace(image=images, gt_label=torch.tensor([1, 0, 1]), gt_mask=masks)


def test_training_targets_resize_and_binarise_masks(images):
    module = FAPrompt(**tiny_args())
    batch = _batch(images, 16)
    labels, masks = module.targets(batch)
    expected = F.interpolate(batch.gt_mask, size=(S, S), mode="bilinear", align_corners=False)[:, 0] > 0.5
    assert labels.tolist() == [1, 0, 1]
    assert masks.shape == (3, S, S)
    assert set(masks.unique().tolist()) == {0.0, 1.0}
    torch.testing.assert_close(masks, expected.float(), rtol=0, atol=0)
    with pytest.raises(ValueError, match="no masks"):
        module.targets(SimpleNamespace(image=images, gt_label=batch.gt_label, gt_mask=None))


@pytest.mark.parametrize("global_loss_input", ["probability", "logits"])
def test_training_step_total_is_the_weighted_sum(global_loss_input, images):
    module = FAPrompt(**tiny_args(global_loss_input=global_loss_input))
    module.train()
    batch = _batch(images, S)
    total = module.training_step(batch, 0)
    labels, masks = module.targets(batch)
    terms = module.compute_losses(images, labels, masks)
    expected = (
        terms["local"]
        + 0.5 * terms["dap_local"]
        + terms["ce"]
        + terms["global"]
        + 0.1 * terms["orthogonality"]
        + terms["prior"]
    )
    torch.testing.assert_close(total, expected, atol=1e-5, rtol=0)
    output = module.model(images)
    quirk = global_loss_input == "logits"
    torch.testing.assert_close(
        terms["global"], binary_focal_loss(output.pred_score, labels, scores_are_logits=quirk), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(terms["ce"], F.cross_entropy(output.global_logits, labels), atol=1e-6, rtol=0)
    # Each local term on its own map: the static map for L_local, the data-dependent map for the DAP term.
    torch.testing.assert_close(terms["local"], local_loss(output.abnormal_map, masks), atol=1e-6, rtol=0)
    torch.testing.assert_close(terms["dap_local"], local_loss(output.dap_abnormal_map, masks), atol=1e-6, rtol=0)
    assert not torch.allclose(terms["local"], terms["dap_local"], atol=1e-4)
    # The prior term: mean(Omega^2) of the one normal image (labels 1, 0, 1).
    torch.testing.assert_close(terms["prior"], output.prior[1].pow(2).mean(), atol=1e-6, rtol=0)
    assert output.prior[0].pow(2).mean() > 1e-4  # the anomalous images' priors would change it
    # Orthogonality: sum over pairs i < j of |cos| between the K abnormal prompts.
    unit = F.normalize(output.abnormal_text, dim=-1)
    k = unit.shape[0]
    pairs = sum(abs(float(unit[i] @ unit[j])) for i in range(k) for j in range(i + 1, k))
    assert float(terms["orthogonality"]) == pytest.approx(pairs, abs=1e-5)
    total.backward()
    assert all(p.grad is not None for p in module.model.learned_parameters())
