"""Mixed precision: training and inference of both models under autocast, as on CUDA.

CUDA's autocast refuses ``binary_cross_entropy`` ("unsafe to autocast"); CPU's autocast accepts it. The
``cuda_like_autocast`` fixture makes the CPU refuse it as CUDA does, so that these CPU tests fail the way
``--trainer.precision bf16-mixed`` on a GPU would.
"""

from __future__ import annotations

import copy
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.engine import Engine

from anomalib_faprompt import AnomalyCLIP, FAPrompt
from anomalib_faprompt.components import binary_focal_loss, local_loss, orthogonality_loss, prior_loss
from anomalib_faprompt.components.maps import abnormal_probability
from anomalib_faprompt.data import AuxiliaryDataModule, make_synthetic_dataset
from tests.helpers.commands import REPO
from tests.helpers.models import TINY_MODEL_ARGS

BF16 = {"device_type": "cpu", "dtype": torch.bfloat16}
# The ops CUDA's autocast refuses ("banned" in torch's autocast test lists, checked below).
CUDA_BANNED = ["binary_cross_entropy"]
TORCH_AUTOCAST_LISTS = Path(torch.__file__).parent / "testing" / "_internal" / "autocast_test_lists.py"


@pytest.fixture
def cuda_like_autocast(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every op CUDA's autocast bans raises while CPU autocast is on, with CUDA's message."""
    for name in CUDA_BANNED:
        original = getattr(torch._C._nn, name)

        def refuse(*args, __original=original, __name=name, **kwargs):
            if torch.is_autocast_enabled("cpu"):
                msg = f"torch.nn.functional.{__name} and torch.nn.{__name} are unsafe to autocast."
                raise RuntimeError(msg)
            return __original(*args, **kwargs)

        monkeypatch.setattr(torch._C._nn, name, refuse)


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


@pytest.mark.parametrize("model_class", [FAPrompt, AnomalyCLIP], ids=lambda cls: cls.__name__)
def test_training_steps_under_autocast(model_class: type, cuda_like_autocast: None) -> None:
    torch.manual_seed(0)
    model = model_class(**copy.deepcopy(TINY_MODEL_ARGS))
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


@pytest.mark.parametrize("model_class", [FAPrompt, AnomalyCLIP], ids=lambda cls: cls.__name__)
def test_inference_outputs_fp32_probabilities(model_class: type) -> None:
    torch.manual_seed(0)
    model = model_class(**copy.deepcopy(TINY_MODEL_ARGS)).model.eval()
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
    model = FAPrompt(**copy.deepcopy(TINY_MODEL_ARGS)).model.eval()
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


@pytest.mark.slow
def test_engine_bf16_mixed_fit_test_predict(tmp_path: Path, cuda_like_autocast: None) -> None:
    """anomalib's Engine with ``precision="bf16-mixed"`` (Lightning's CPU autocast) trains, tests and predicts."""
    root = make_synthetic_dataset(tmp_path / "data", categories=("alpha",), n_train=1, n_good=4, n_defect=4)
    torch.manual_seed(0)
    model = FAPrompt(**copy.deepcopy(TINY_MODEL_ARGS), visualizer=False)
    datamodule = AuxiliaryDataModule(
        root=root, val_split_ratio=0.25, train_batch_size=4, eval_batch_size=4, num_workers=0
    )
    engine = Engine(
        accelerator="cpu",
        devices=1,
        precision="bf16-mixed",
        max_steps=2,
        logger=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path / "results",
    )
    engine.fit(model, datamodule=datamodule)
    assert engine.trainer.precision == "bf16-mixed"
    assert engine.trainer.global_step == 2
    metrics = engine.test(model, datamodule=datamodule)[0]
    assert 0.0 <= metrics["image_AUROC"] <= 1.0
    predictions = engine.predict(model, dataloaders=datamodule.test_dataloader())
    for batch in predictions:
        assert batch.pred_score.dtype == batch.anomaly_map.dtype == torch.float32
        assert float(batch.anomaly_map.min()) >= 0.0
        assert float(batch.anomaly_map.max()) <= 1.0


@pytest.mark.slow
def test_benchmark_script_bf16_on_cpu() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    command = [
        sys.executable, str(REPO / "benchmarks" / "benchmark_faprompt.py"), "--tiny", "--precision", "fp32", "bf16",
        "--batch-sizes", "1", "2", "--train-batch-size", "2", "--repeats", "1", "--warmup", "0", "--threads", "1",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert "precision bf16 (autocast)" in result.stdout
    difference = [line for line in result.stdout.splitlines() if line.startswith("largest |bf16 - fp32|")]
    assert len(difference) == 1, result.stdout
    score, pixel_map = (float(part.split()[-1]) for part in difference[0].split(":", 1)[1].split(","))
    # bf16 really ran (the outputs differ), and both outputs are probabilities.
    assert 0.0 < score <= 1.0
    assert 0.0 < pixel_map <= 1.0
