"""The scripts of ``benchmarks/`` run end to end on a tiny backbone and print their tables (no timing assertions).

Among them ``benchmarks/gpu_check.sh``, the one command a GPU machine runs, in its CPU dry run: GPU time is short and
lent rarely, and a broken step found there costs a whole device session.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from anomalib_faprompt import FAPrompt
from anomalib_faprompt.data import make_synthetic_dataset
from tests.helpers.commands import REPO, subprocess_env
from tests.helpers.models import as_if_trained, tiny_args, write_checkpoint

SCRIPT = REPO / "benchmarks" / "benchmark_faprompt.py"
ROWS = [
    "FAPrompt inference (images/s)",
    "FAPrompt inference (s/batch)",
    "bare image encoder (images/s)",
    "bare image encoder (s/batch)",
    "ratio FAPrompt / bare encoder",
    "bare encoder, SDPA attention (s/batch)",
    "ratio FAPrompt / bare encoder with SDPA",
    "inference memory (MiB, peak RSS)",
    "training step (s/step)",
    "training memory (MiB, peak RSS)",
]

GPU_CHECK_STEPS = [
    "environment",
    "blur_vs_scipy",
    "models_autocast",
    "benchmark",
    "benchmark_tf32",
    "profile_bf16",
    "synthetic_data",
    "cli_train_bf16-mixed",
    "cli_test_bf16-mixed",
    "cli_predict_bf16-mixed",
]


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=subprocess_env(), timeout=120,
        check=False,
    )  # fmt: skip


def parse_table(stdout: str) -> tuple[list[str], dict[str, list[str]]]:
    lines = [line for line in stdout.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert set(lines[1].replace("|", "")) == {"-"}
    rows = {}
    for line in lines[2:]:
        name, *cells = (cell.strip() for cell in line.strip("|").split("|"))
        rows[name] = cells
    return header, rows


@pytest.mark.skipif(sys.platform != "linux", reason="peak RSS row label assumes Linux /proc")
def test_tiny_run_prints_every_row() -> None:
    result = run_script(
        "--tiny", "--batch-sizes", "1", "2", "--train-batch-size", "2", "--repeats", "1", "--threads", "1",
        "--sdpa-floor",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    header, rows = parse_table(result.stdout)
    assert header == ["measurement", "batch 1", "batch 2"]
    assert list(rows) == ROWS
    for name, cells in rows.items():
        if name.startswith("training"):
            assert cells[0] == "-"
            assert float(cells[1]) > 0
        else:
            assert all(float(cell) > 0 for cell in cells), name


def test_bad_argument_is_named() -> None:
    result = run_script("--warmup", "-1")
    assert result.returncode == 2
    assert "--warmup and --train-batch-size must be >= 0" in result.stderr


@pytest.fixture(scope="module")
def half_precisions() -> subprocess.CompletedProcess:
    """One tiny run at fp32, bf16 and fp16 (CPU autocast), read by the two tests below."""
    result = run_script(
        "--tiny", "--batch-sizes", "1", "2", "--train-batch-size", "2", "--repeats", "1", "--warmup", "0",
        "--threads", "1", "--precision", "fp32", "bf16", "fp16",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result


def test_half_precision_difference_is_to_the_current_weights(half_precisions) -> None:
    """Each precision's training steps move the prompts: its difference to fp32 uses the same weights.

    With a reference kept from an earlier precision, fp16 differed from it by about 0.1 here (0.39 on
    ViT-L) although fp16 inference agrees with fp32 to a few 1e-4.
    """
    lines = [line for line in half_precisions.stdout.splitlines() if line.startswith("largest |fp16 - fp32|")]
    assert len(lines) == 1, half_precisions.stdout
    score, anomaly_map = (float(part.split()[-1]) for part in lines[0].split(":")[-1].split(","))
    assert score < 2e-3
    assert anomaly_map < 5e-3


def test_tiny_few_shot_rows_compare_with_the_zero_shot_time() -> None:
    result = run_script(
        "--tiny", "--batch-sizes", "2", "--train-batch-size", "0", "--repeats", "1", "--threads", "1", "--k-shot", "2"
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    _, rows = parse_table(result.stdout)
    assert float(rows["few-shot inference (s/batch)"][0]) > 0
    ratio = float(rows["ratio few-shot / zero-shot"][0])
    # The times are printed to 3 decimals (a few ms on the tiny model): their ratio agrees only roughly.
    expected = float(rows["few-shot inference (s/batch)"][0]) / float(rows["FAPrompt inference (s/batch)"][0])
    assert ratio == pytest.approx(expected, rel=0.3)
    assert "few-shot bank: k_shot 2, layers [1, 2, 3]" in result.stdout


def test_export_benchmark_runs_torch_and_openvino_at_equal_threads() -> None:
    command = [
        sys.executable, str(REPO / "benchmarks" / "benchmark_export.py"), "--tiny", "--threads", "1", "--repeats", "1",
        "--warmup", "0", "--compressions", "INT8_PTQ",  # the other compressions: test_export_compression.py
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=subprocess_env(), timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert any(line.startswith("torch ") and line.endswith(": 1 threads") for line in result.stdout.splitlines())
    assert "1 threads (INFERENCE_NUM_THREADS)" in result.stdout
    rows = [line for line in result.stdout.splitlines() if line.startswith("| OpenVINO")]
    labels = [line.split("|")[1].strip() for line in rows]
    assert labels[0] == "OpenVINO, f32 hint"
    assert any(label.endswith(", INT8_PTQ") for label in labels)
    ptq = next(line for line in rows if line.split("|")[1].strip().endswith("INT8_PTQ"))
    assert " int8 (" in ptq.split("|")[7]


def test_benchmark_script_bf16_on_cpu(half_precisions) -> None:
    assert "precision bf16 (autocast)" in half_precisions.stdout
    difference = [line for line in half_precisions.stdout.splitlines() if line.startswith("largest |bf16 - fp32|")]
    assert len(difference) == 1, half_precisions.stdout
    score, pixel_map = (float(part.split()[-1]) for part in difference[0].split(":", 1)[1].split(","))
    # bf16 really ran (the outputs differ), and both outputs are probabilities.
    assert 0.0 < score <= 1.0
    assert 0.0 < pixel_map <= 1.0


@pytest.mark.skipif(sys.platform != "linux", reason="a bash script")
def test_cpu_dry_run_passes_every_step(tmp_path):
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "GPU_CHECK_DEVICE": "cpu",
        "GPU_CHECK_LOG_DIR": str(tmp_path / "logs"),
        "PYTHON": sys.executable,
        "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")]),
        "TMPDIR": str(tmp_path),
    }
    result = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh")],
        capture_output=True, text=True, env=env, timeout=900, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-5000:]
    summary = result.stdout.split("=== summary (device cpu) ===")[-1]
    verdicts = dict(re.findall(r"^(\S+) +(PASS|FAIL) ", summary, flags=re.MULTILINE))
    assert verdicts == dict.fromkeys(GPU_CHECK_STEPS, "PASS")
    assert "failed steps: 0" in result.stdout
    # The profile step prints torch.profiler's table.
    assert "Self CPU time total" in result.stdout


@pytest.fixture(scope="module")
def checkpoint_and_normal_images(tmp_path_factory) -> tuple[Path, Path]:
    """A trained-like tiny FAPrompt's checkpoint, and a dataset of 30 normal images (its ``*/*/good`` folders)."""
    root = tmp_path_factory.mktemp("benchmark_checkpoint")
    torch.manual_seed(0)
    checkpoint = write_checkpoint(as_if_trained(FAPrompt(**tiny_args())), root / "model.ckpt")
    normal = make_synthetic_dataset(root / "normal", categories=("gamma", "delta", "epsilon"), n_defect=0, seed=8)
    return checkpoint, normal


def _run_checkpoint_script(script: str, checkpoint: Path, data: Path, normal: Path, *args: str) -> str:
    env = subprocess_env()
    command = [
        sys.executable, str(REPO / "benchmarks" / script), "--checkpoint", str(checkpoint), "--data", str(data),
        "--calibration-data", str(normal), "--threads", "1", *args,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def _table(stdout: str, header: str) -> dict[str, list[str]]:
    """The rows (by first cell) of the Markdown table whose header line starts with ``header``."""
    lines = stdout.splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith(header))
    rows = {}
    for line in itertools.takewhile(lambda line: line.startswith("|"), lines[start + 2 :]):
        name, *cells = (cell.strip() for cell in line.strip("|").split("|"))
        rows[name] = cells
    return rows


def test_export_benchmark_compares_a_checkpoints_exports_on_every_held_out_image(
    checkpoint_and_normal_images, synthetic_target
):
    checkpoint, normal = checkpoint_and_normal_images
    stdout = _run_checkpoint_script(
        "benchmark_export.py", checkpoint, synthetic_target, normal, "--repeats", "1", "--warmup", "0",
        "--compressions", "INT8_PTQ",
    )  # fmt: skip
    tested = len(list(synthetic_target.glob("*/test/*/*.png")))
    assert tested == 36
    assert f"the 30 normal images of {normal}" in stdout
    flags = next(line for line in stdout.splitlines() if line.startswith("instruction sets: "))
    assert all(f"{name} yes" in flags or f"{name} no" in flags for name in ("avx2", "avx512_vnni", "amx_int8"))
    assert f"Each of the {tested} test images of {synthetic_target} alone" in stdout
    rows = _table(stdout, "| export | max diff score")
    assert list(rows) == ["f32", "f32, images + noise of 1/255", "INT8_PTQ"]
    assert rows["f32"][3:] == [str(tested), "100.0%"]  # every score distinct, labels equal to its own
    int8 = rows["INT8_PTQ"]
    assert float(int8[0]) >= float(int8[1]) >= 0  # max and median score differences
    assert int(int8[3]) >= 0.95 * tested
    assert float(int8[4].rstrip("%")) >= 90


def test_int8_recipes_compares_each_recipe_on_every_held_out_image(checkpoint_and_normal_images, synthetic_target):
    checkpoint, normal = checkpoint_and_normal_images
    stdout = _run_checkpoint_script("int8_recipes.py", checkpoint, synthetic_target, normal)
    rows = _table(stdout, "| recipe | max diff score")
    assert len(rows) == 15  # the noise row and 14 recipes
    package = rows["**the package's: MLP of the blocks after the first, 7-bit weights**"]
    plain = rows["anomalib's INT8_PTQ (`nncf.quantize(model, data)`: every product)"]
    assert float(package[0]) < float(plain[0])  # the package's recipe moves the scores less than NNCF's default
    assert int(package[4]) == 36
