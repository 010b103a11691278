"""Mixed precision: training and inference of both models under autocast, as on CUDA.

CUDA's autocast refuses ``binary_cross_entropy`` ("unsafe to autocast"); CPU's autocast accepts it. The
``cuda_like_autocast`` fixture (tests/conftest.py) makes the CPU refuse it as CUDA does, so that these CPU tests fail
the way ``--trainer.precision bf16-mixed`` on a GPU would.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from anomalib_faprompt import AnomalyCLIP, FAPrompt
from anomalib_faprompt.components import binary_focal_loss, local_loss, orthogonality_loss, prior_loss
from anomalib_faprompt.components.maps import abnormal_probability
from tests.helpers.autocast import CUDA_BANNED
from tests.helpers.models import each_model, tiny_args

BF16 = {"device_type": "cpu", "dtype": torch.bfloat16}
TORCH_AUTOCAST_LISTS = Path(torch.__file__).parent / "testing" / "_internal" / "autocast_test_lists.py"


def test_banned_list_and_fixture_refuse_bce(cuda_like_autocast: None) -> None:
    if TORCH_AUTOCAST_LISTS.is_file():
        banned = re.search(r"self\.banned = \[(.*?)\n        \]", TORCH_AUTOCAST_LISTS.read_text(), re.DOTALL)
        assert re.findall(r'^\s*\("(\w+)"', banned.group(1), re.MULTILINE) == CUDA_BANNED
    scores, labels = torch.tensor([0.2, 0.9]), torch.tensor([0.0, 1.0])
    with torch.autocast(**BF16), pytest.raises(RuntimeError, match="unsafe to autocast"):
        F.binary_cross_entropy(scores, labels)
    # Outside autocast it is the ordinary op.
    assert F.binary_cross_entropy(scores, labels).item() == pytest.approx(-0.5 * (math.log(0.8) + math.log(0.9)))


def test_losses_fp32_same_value_under_autocast(cuda_like_autocast: None) -> None:
    generator = torch.Generator().manual_seed(0)
    abnormal_map = torch.rand(2, 16, 16, generator=generator)
    mask = (torch.rand(2, 16, 16, generator=generator) > 0.7).float()
    scores, labels = torch.rand(4, generator=generator), torch.tensor([0, 1, 1, 0])
    embeddings, prior = torch.randn(5, 8, generator=generator), torch.randn(4, 6, generator=generator)
    calls = {
        "local": lambda m, s, e, p: local_loss(m, mask),
        "global": lambda m, s, e, p: binary_focal_loss(s, labels),
        "global_logits": lambda m, s, e, p: binary_focal_loss(s, labels, scores_are_logits=True),
        "orthogonality": lambda m, s, e, p: orthogonality_loss(e),
        "prior": lambda m, s, e, p: prior_loss(p, labels),
    }
    for name, call in calls.items():
        expected = call(abnormal_map, scores, embeddings, prior)
        with torch.autocast(**BF16):
            same_inputs = call(abnormal_map, scores, embeddings, prior)
            bf16_inputs = call(abnormal_map.bfloat16(), scores.bfloat16(), embeddings.bfloat16(), prior.bfloat16())
        assert same_inputs.dtype == bf16_inputs.dtype == torch.float32, name
        assert same_inputs.item() == expected.item(), name
        # bf16 inputs are upcast: the value of the rounded inputs, computed in fp32.
        rounded = call(*(tensor.bfloat16().float() for tensor in (abnormal_map, scores, embeddings, prior)))
        assert bf16_inputs.item() == rounded.item(), name


@each_model
def test_training_steps_under_autocast(model_class: type, cuda_like_autocast: None) -> None:
    torch.manual_seed(0)
    model = model_class(**tiny_args())
    model.train()
    optimizer = model.configure_optimizers()
    images = torch.randn(4, 3, 64, 64)
    labels = torch.tensor([0, 1, 0, 1])
    masks = torch.zeros(4, 64, 64)
    masks[1::2, 20:40, 10:30] = 1.0
    before = [parameter.detach().clone() for parameter in model.model.learned_parameters()]
    for _ in range(2):
        optimizer.zero_grad()
        with torch.autocast(**BF16):
            output = model.model(images)
            losses = model.compute_losses(images, labels, masks)
            total = model.weighted_loss(losses)
        # Autocast is really on (the encoder's output is bf16), and every loss is an fp32 number.
        with torch.autocast(**BF16):
            assert model.model.backbone.encode_image(images)[1].dtype == torch.bfloat16
        assert all(value.dtype == torch.float32 and torch.isfinite(value) for value in losses.values()), losses
        assert output.global_logits.dtype == torch.float32
        maps = output.abnormal_maps if model_class is AnomalyCLIP else (output.abnormal_map, output.dap_abnormal_map)
        assert all(abnormal_map.dtype == torch.float32 for abnormal_map in maps)
        total.backward()
        optimizer.step()
    after = list(model.model.learned_parameters())
    assert any(not torch.equal(b, a) for b, a in zip(before, after, strict=True))


@each_model
def test_inference_outputs_fp32_probabilities(model_class: type) -> None:
    torch.manual_seed(0)
    model = model_class(**tiny_args()).model.eval()
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        expected = model(images)
        with torch.autocast(**BF16):
            mixed = model(images)
    for name in ("pred_score", "anomaly_map"):
        value = getattr(mixed, name)
        assert value.dtype == torch.float32, name
        assert value.min() >= 0.0, name
        assert value.max() <= 1.0, name
        assert value.shape == getattr(expected, name).shape
        # bf16 encoder and text encoder, fp32 heads: near the fp32 model. The map's bound allows a bf16 reordering of
        # near-tied patches in FAPrompt's top-k (measured: score 3.3e-3, map 3.2e-2).
        bound = 1e-2 if name == "pred_score" else 5e-2
        torch.testing.assert_close(value, getattr(expected, name), rtol=0, atol=bound)
    # Each image's bf16 score is nearest to its own fp32 score: no mix-up between the images of a batch.
    distances = (mixed.pred_score[:, None] - expected.pred_score[None]).abs()
    assert distances.argmin(dim=1).tolist() == [0, 1, 2]


def test_text_cache_computed_in_fp32_under_autocast() -> None:
    """The eval cache filled by a forward under autocast holds the fp32 embeddings that an fp32 forward reuses."""
    torch.manual_seed(0)
    model = FAPrompt(**tiny_args()).model.eval()
    with torch.no_grad(), torch.autocast(**BF16):
        cached = model.text_embeddings()
    model.text_cache.invalidate()
    with torch.no_grad():
        expected = model.text_embeddings()
    for value, reference in zip(cached[:2], expected[:2], strict=True):
        assert value.dtype == torch.float32
        torch.testing.assert_close(value, reference, rtol=0, atol=0)


def test_patch_probabilities_fp32_from_bf16_features() -> None:
    generator = torch.Generator().manual_seed(0)
    features = F.normalize(torch.randn(2, 10, 8, generator=generator), dim=-1)
    normal, abnormal = F.normalize(torch.randn(2, 8, generator=generator), dim=-1)
    with torch.autocast(**BF16):
        mixed = abnormal_probability(features.bfloat16(), normal.bfloat16(), abnormal.bfloat16(), 0.07)
    assert mixed.dtype == torch.float32
    expected = abnormal_probability(
        features.bfloat16().float(), normal.bfloat16().float(), abnormal.bfloat16().float(), 0.07
    )
    torch.testing.assert_close(mixed, expected, rtol=0, atol=0)
