"""Compound abnormality prompts and the losses (docs/faprompt.md, sections 3, 5 and 7) against hand values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from anomalib_faprompt import FAPrompt
from anomalib_faprompt.components import (
    binary_focal_loss,
    dice_loss,
    focal_loss,
    local_loss,
    orthogonality_loss,
    prior_loss,
)
from tests.helpers.models import tiny_args


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return FAPrompt(**tiny_args()).model


# --- CAP ---------------------------------------------------------------------------------------------------------


def test_abnormal_prompts_share_normal_tokens(model):
    n_ctx = model.normal_ctx.shape[0]
    learned = model._abnormal_learned()
    assert learned.shape == (10, n_ctx + 2, model.backbone.text_width)
    for prompt in learned:
        assert torch.equal(prompt[:n_ctx], model.normal_ctx)
    assert torch.equal(learned[:, n_ctx:], model.abnormal_ctx)
    # The substituted token embeddings carry them at positions 1..E (after SOS).
    embeddings = model.abnormal_template.embed(model.backbone, learned, model.abnormal_template.length)
    torch.testing.assert_close(embeddings[:, 1 : 1 + n_ctx], model.normal_ctx.expand(10, -1, -1), rtol=0, atol=0)
    normal = model.normal_template.embed(model.backbone, model.normal_ctx[None], model.normal_template.length)
    torch.testing.assert_close(normal[0, 1 : 1 + n_ctx], model.normal_ctx, rtol=0, atol=0)


def test_abnormal_only_loss_reaches_normal_ctx(model):
    model.zero_grad()
    _, abnormal = model.static_text()
    assert abnormal.shape == (10, model.backbone.embed_dim)  # K raw abnormal embeddings
    abnormal.pow(2).sum().backward()
    assert model.normal_ctx.grad is not None
    assert model.normal_ctx.grad.abs().sum() > 0
    assert model.abnormal_ctx.grad.abs().sum() > 0
    model.zero_grad()


def _word_id(model, word: str) -> int:
    tokens = model.backbone.tokenize([word])[0]
    return int(tokens[1])


def test_abnormal_word_default_and_removed(model, tiny_model_args):
    damaged = _word_id(model, "damaged")
    obj = _word_id(model, "object")
    assert damaged in model.abnormal_template.tokens.tolist()
    assert damaged not in model.normal_template.tokens.tolist()
    assert "damaged object." in model.abnormal_template.text
    without = FAPrompt(**tiny_model_args, abnormal_word="").model
    tokens = without.abnormal_template.tokens.tolist()
    assert damaged not in tokens
    assert obj in tokens
    # [SOS] X*(E+E') object . [EOS]
    assert without.abnormal_template.eos_index == 1 + 5 + 2 + 2
    assert model.abnormal_template.eos_index == 1 + 5 + 2 + 3


def test_k_abnormal_prompts(tiny_model_args):
    model = FAPrompt(**tiny_model_args, n_abnormal_prompts=3, n_abnormal_ctx=4).model
    assert model.abnormal_ctx.shape == (3, 4, model.backbone.text_width)
    with torch.no_grad():
        _, abnormal = model.static_text()
    assert abnormal.shape == (3, model.backbone.embed_dim)
    # Different learned abnormality tokens give different prompts.
    assert not torch.allclose(abnormal[0], abnormal[1])


# --- losses ------------------------------------------------------------------------------------------------------


def test_orthogonality_loss_hand_value():
    embeddings = torch.tensor([[1.0, 0.0], [2.0, 2.0], [0.0, -3.0]])
    # |cos(e0, e1)| = 1/sqrt2, |cos(e0, e2)| = 0, |cos(e1, e2)| = 1/sqrt2 (pairs i < j only)
    assert orthogonality_loss(embeddings).item() == pytest.approx(math.sqrt(2.0), abs=1e-6)
    parallel = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert orthogonality_loss(parallel).item() == pytest.approx(1.0, abs=1e-6)


def test_prior_loss_hand_value():
    prior = torch.tensor([[1.0, 2.0], [3.0, 4.0], [0.0, 2.0]])
    labels = torch.tensor([0, 1, 0])
    # normal images 0 and 2: mean(1, 4) + mean(0, 4) = 2.5 + 2 (the anomalous image contributes nothing)
    assert prior_loss(prior, labels).item() == pytest.approx(4.5)
    assert prior_loss(prior, torch.tensor([1, 1, 1])).item() == 0.0


MAP = np.array([[[0.8, 0.3], [0.1, 0.6]], [[0.5, 0.9], [0.2, 0.05]]])  # (B=2, 2, 2) abnormal probabilities
MASK = np.array([[[1, 0], [0, 1]], [[0, 1], [0, 0]]])


def _hand_focal(abnormal: np.ndarray, mask: np.ndarray) -> float:
    eps = 1e-5
    terms = []
    for prob, label in zip(abnormal.ravel(), mask.ravel(), strict=True):
        p = [1.0 - prob, prob]
        onehot = [min(max(float(label == c), eps), 1 - eps) for c in (0, 1)]
        pt = onehot[0] * p[0] + onehot[1] * p[1] + eps
        terms.append(-((1 - pt) ** 2) * math.log(pt))
    return float(np.mean(terms))


def _hand_dice(x: np.ndarray, y: np.ndarray) -> float:
    per_image = [(2 * (xi * yi).sum() + 1) / (xi.sum() + yi.sum() + 1) for xi, yi in zip(x, y, strict=True)]
    return 1.0 - float(np.mean(per_image))


def test_focal_loss_hand_value():
    abnormal = torch.tensor(MAP, dtype=torch.float64)
    probabilities = torch.stack([1 - abnormal, abnormal], dim=1)
    value = focal_loss(probabilities, torch.tensor(MASK))
    assert value.item() == pytest.approx(_hand_focal(MAP, MASK), rel=1e-9)
    # One pixel by hand: p_abnormal 0.8, label 1 -> pt = 1e-5 * 0.2 + (1 - 1e-5) * 0.8 + 1e-5
    pt = 1e-5 * 0.2 + (1 - 1e-5) * 0.8 + 1e-5
    one = focal_loss(torch.tensor([[[[0.2]], [[0.8]]]], dtype=torch.float64), torch.tensor([[[1]]]))
    assert one.item() == pytest.approx(-((1 - pt) ** 2) * math.log(pt), rel=1e-9)


def test_dice_loss_hand_value():
    value = dice_loss(torch.tensor(MAP), torch.tensor(MASK))
    # image 0: (2 * 1.4 + 1) / (1.8 + 2 + 1); image 1: (2 * 0.9 + 1) / (1.65 + 1 + 1)
    expected = 1.0 - 0.5 * (3.8 / 4.8 + 2.8 / 3.65)
    assert value.item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(_hand_dice(MAP, MASK))


def test_local_loss_hand_value():
    value = local_loss(torch.tensor(MAP, dtype=torch.float64), torch.tensor(MASK))
    expected = _hand_focal(MAP, MASK) + _hand_dice(MAP, MASK) + _hand_dice(1 - MAP, 1 - MASK)
    assert value.item() == pytest.approx(expected, rel=1e-9)


def test_binary_focal_loss_probability_form():
    scores = torch.tensor([0.8, 0.3, 0.6], dtype=torch.float64)
    labels = torch.tensor([1, 0, 0])
    # label 1, p 0.8: pt = 0.8; label 0, p 0.3: pt = 0.7; label 0, p 0.6: pt = 0.4
    expected = np.mean([(1 - pt) ** 2 * -math.log(pt) for pt in (0.8, 0.7, 0.4)])
    assert binary_focal_loss(scores, labels).item() == pytest.approx(expected, rel=1e-6)


def test_binary_focal_loss_logits_quirk():
    scores = torch.tensor([0.8, 0.3, 0.6], dtype=torch.float64)
    labels = torch.tensor([1, 0, 0])

    def sigmoid(x):
        return 1 / (1 + math.exp(-x))

    # The released code feeds the probability to a logits BCE: pt = sigmoid(s) for label 1, 1 - sigmoid(s) for 0.
    pts = (sigmoid(0.8), 1 - sigmoid(0.3), 1 - sigmoid(0.6))
    expected = np.mean([(1 - pt) ** 2 * -math.log(pt) for pt in pts])
    value = binary_focal_loss(scores, labels, scores_are_logits=True)
    assert value.item() == pytest.approx(expected, rel=1e-9)
    assert value.item() != pytest.approx(binary_focal_loss(scores, labels).item(), rel=1e-3)
