#!/usr/bin/env bash
# One command that checks this package on an NVIDIA GPU (about 4 minutes on one H100/H200):
#
#   1. environment: versions, the GPU;
#   2. the map blur on the GPU against scipy.ndimage.gaussian_filter (TF32 allowed or not);
#   3. both models (tiny random CLIP): training steps and inference under bf16 and fp16 autocast;
#   4. benchmarks/benchmark_faprompt.py, ViT-L-14-336 (random weights) at 518, batch 1, 8, 32, fp32, bf16
#      and fp16 autocast, training step at batch 8, differences of scores and maps to fp32;
#   5. the same benchmark in fp32 with --tf32, and a torch.profiler table of one bf16 inference call at the
#      largest batch (where the time goes);
#   6. the toy zero-shot protocol through anomalib's command line: `anomalib train` (fit + test), then
#      `anomalib test` and `anomalib predict` of its checkpoint, with --trainer.precision bf16-mixed;
#   7. the same with 16-mixed.
#
# Every step runs (a failure does not stop the others) and ends with PASS or FAIL; a summary follows, and
# the exit status is the number of failed steps (0: all passed). Nothing is installed: python3 (or
# $PYTHON) must import torch, anomalib, open_clip and anomalib_faprompt, and scipy for step 2. anomalib's
# command line runs as `anomalib` when that is on PATH, else as `python3 -m anomalib.cli.cli`.
#
# Usage (from anywhere):
#   bash benchmarks/gpu_check.sh
#   GPU_CHECK_DEVICE=cpu bash benchmarks/gpu_check.sh     # dry run on the CPU: tiny backbone, small batches,
#                                                         # bf16 only (Lightning has no fp16 AMP on the CPU)
# Environment:
#   GPU_CHECK_DEVICE   cuda (default) or cpu
#   GPU_CHECK_LOG_DIR  where the full log of every step goes (default: a temporary folder, printed)
#   PYTHON             the Python interpreter (default python3)

set -u

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEVICE=${GPU_CHECK_DEVICE:-cuda}
PYTHON=${PYTHON:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
LOG_DIR=${GPU_CHECK_LOG_DIR:-$WORK/logs}
mkdir -p "$LOG_DIR"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONWARNINGS=ignore

if command -v anomalib >/dev/null 2>&1; then
    ANOMALIB=(anomalib)
else
    ANOMALIB=("$PYTHON" -m anomalib.cli.cli)
fi

case "$DEVICE" in
    cuda)
        ACCELERATOR=gpu
        BENCH=(--device cuda --batch-sizes 1 8 32 --train-batch-size 8 --repeats 3 --warmup 2)
        PRECISIONS=(fp32 bf16 fp16)
        PROFILE_BATCH=32
        CLI_PRECISIONS=(bf16-mixed 16-mixed)
        SLOW=1
        ;;
    cpu)
        ACCELERATOR=cpu
        BENCH=(--device cpu --tiny --batch-sizes 1 2 4 --train-batch-size 2 --repeats 1 --warmup 1)
        PRECISIONS=(fp32 bf16)
        PROFILE_BATCH=4
        CLI_PRECISIONS=(bf16-mixed)
        SLOW=4
        ;;
    *)
        echo "GPU_CHECK_DEVICE=$DEVICE: use cuda (default) or cpu." >&2
        exit 2
        ;;
esac

SUMMARY=()
FAILURES=0

# run_step NAME SECONDS LINES COMMAND...: run with a time limit; stdout to NAME.log (its last LINES lines are
# shown), stderr to NAME.stderr.log (its last lines are shown when the step fails).
run_step() {
    local name=$1 limit=$2 lines=$3
    shift 3
    local start=$SECONDS status
    echo
    echo "=================== [$name] ==================="
    echo "\$ $*"
    timeout --kill-after=10 "$((limit * SLOW))" "$@" >"$LOG_DIR/$name.log" 2>"$LOG_DIR/$name.stderr.log"
    status=$?
    if [ "$lines" -gt 0 ]; then
        tail -n "$lines" "$LOG_DIR/$name.log"
    fi
    if [ "$status" -ne 0 ]; then
        echo "... last lines of $LOG_DIR/$name.stderr.log:"
        tail -n 25 "$LOG_DIR/$name.stderr.log"
    fi
    record "$name" "$status" "$((SECONDS - start))"
}

record() {
    local name=$1 status=$2 seconds=$3 verdict=PASS note=""
    if [ "$status" -ne 0 ]; then
        verdict=FAIL
        FAILURES=$((FAILURES + 1))
        [ "$status" -eq 124 ] || [ "$status" -eq 137 ] && note=" (time limit)"
        note="$note, exit status $status, logs $LOG_DIR/$name.*"
    fi
    echo "--- [$name] $verdict in ${seconds} s$note"
    SUMMARY+=("$(printf '%-28s %s  %4d s%s' "$name" "$verdict" "$seconds" "$note")")
}

echo "gpu_check: device $DEVICE, repository $ROOT, logs $LOG_DIR, anomalib as '${ANOMALIB[*]}'"
cd "$WORK" || exit 2

# 1. Environment.
run_step environment 120 30 "$PYTHON" - "$DEVICE" <<'EOF'
import importlib, platform, sys
import torch
device = sys.argv[1]
print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA build {torch.version.cuda}")
for name in ("lightning", "torchmetrics", "anomalib", "open_clip", "anomalib_faprompt", "scipy", "onnx"):
    try:
        module = importlib.import_module(name)
        print(f"{name} {getattr(module, '__version__', '?')}")
    except ImportError as error:
        print(f"{name}: NOT IMPORTABLE ({error})")
        if name not in ("onnx",):
            raise
if device == "cuda":
    assert torch.cuda.is_available(), "torch.cuda.is_available() is False"
    props = torch.cuda.get_device_properties(0)
    print(f"GPU {props.name}, {props.total_memory / 2**30:.0f} GiB, {torch.cuda.device_count()} device(s), "
          f"bf16 supported: {torch.cuda.is_bf16_supported()}")
EOF

# 2. The blur on the device against scipy.
run_step blur_vs_scipy 120 30 "$PYTHON" - "$DEVICE" <<'EOF'
import sys, time
import numpy as np
import torch
from scipy import ndimage
from anomalib.models.components import GaussianBlur2d
from anomalib_faprompt.components.blur import GaussianBlur, gaussian_blur
device = torch.device(sys.argv[1])
maps = torch.rand(4, 1, 518, 518, generator=torch.Generator().manual_seed(0))
worst = 0.0
for matmul in ("highest", "high"):
    torch.set_float32_matmul_precision(matmul)
    for sigma in (4.0, 10.0):
        blur = GaussianBlur(sigma).to(device)
        expected = np.stack([ndimage.gaussian_filter(m.double().numpy(), sigma, mode="reflect") for m in maps[:, 0]])
        with torch.no_grad():
            new = blur(maps.to(device)).cpu()[:, 0].double().numpy()
            with torch.autocast(device.type, dtype=torch.bfloat16):
                mixed = blur(maps.to(device))
            plain = gaussian_blur(maps.to(device), blur.kernel, split=False).cpu()[:, 0].double().numpy()
        assert mixed.dtype == torch.float32, mixed.dtype
        difference = max(np.abs(new - expected).max(), np.abs(mixed.cpu()[:, 0].double().numpy() - expected).max())
        worst = max(worst, difference)
        print(f"matmul precision {matmul:7s} sigma {sigma:4}: max |blur - scipy| {difference:.2e} "
              f"(products not split: {np.abs(plain - expected).max():.2e})")
count = 32 if device.type == "cuda" else 2
maps = torch.rand(count, 1, 518, 518, device=device)
blurs = {"anomalib GaussianBlur2d": GaussianBlur2d(sigma=(10.0, 10.0), channels=1), "GaussianBlur": GaussianBlur(10.0)}
for name, blur in blurs.items():
    blur = blur.to(device)
    for precision in ("fp32", "bf16") if device.type == "cuda" or name == "GaussianBlur" else ("fp32",):
        context = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
        with torch.no_grad(), context:
            blur(maps)
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(3):
                blur(maps)
            if device.type == "cuda":
                torch.cuda.synchronize()
        milliseconds = (time.perf_counter() - start) / 3 * 1000
        print(f"{name:24s} sigma 10, {count} maps of 518 x 518, {precision}: {milliseconds:.1f} ms")
print(f"largest difference to scipy: {worst:.2e} (bound 1e-5)")
assert worst <= 1e-5
EOF

# 3. Both models, tiny, under autocast on the device: training steps and inference.
run_step models_autocast 180 30 "$PYTHON" - "$DEVICE" "$ROOT" <<'EOF'
import copy, sys
import torch
sys.path.insert(0, f"{sys.argv[2]}/benchmarks")
from benchmark_faprompt import TINY_ARGS
from anomalib_faprompt import AnomalyCLIP, FAPrompt
device = torch.device(sys.argv[1])
dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16} if device.type == "cuda" else {"bf16": torch.bfloat16}
images = torch.randn(4, 3, 64, 64, device=device)
labels = torch.tensor([0, 1, 0, 1], device=device)
masks = torch.zeros(4, 64, 64, device=device)
masks[1::2, 20:40, 10:30] = 1.0
for cls in (FAPrompt, AnomalyCLIP):
    for name, dtype in dtypes.items():
        torch.manual_seed(0)
        model = cls(pretrained=None, image_size=64, **copy.deepcopy(TINY_ARGS)).to(device)
        model.train()
        optimizer = model.configure_optimizers()
        scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        for _ in range(2):
            optimizer.zero_grad()
            with torch.autocast(device.type, dtype=dtype):
                losses = model.compute_losses(images, labels, masks)
                total = sum(model.loss_weights[key] * value for key, value in losses.items())
            assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values()), losses
            scaler.scale(total).backward()
            scaler.step(optimizer)
            scaler.update()
        model.eval()
        with torch.no_grad():
            reference = model.model(images)
            with torch.autocast(device.type, dtype=dtype):
                output = model.model(images)
        for field in ("pred_score", "anomaly_map"):
            value = getattr(output, field)
            assert value.dtype == torch.float32, (field, value.dtype)
            assert 0.0 <= float(value.min()) and float(value.max()) <= 1.0, field
        score = (output.pred_score - reference.pred_score).abs().max().item()
        pixel = (output.anomaly_map - reference.anomaly_map).abs().max().item()
        print(f"{cls.__name__:12s} {name}: 2 training steps, losses fp32 "
              f"({', '.join(f'{k} {v.item():.3f}' for k, v in losses.items())}); "
              f"outputs fp32 in [0, 1], largest difference to fp32: score {score:.1e}, map {pixel:.1e}")
EOF

# 4. and 5. Benchmarks.
run_step benchmark 300 80 "$PYTHON" "$ROOT/benchmarks/benchmark_faprompt.py" "${BENCH[@]}" --precision "${PRECISIONS[@]}"
run_step benchmark_tf32 180 30 "$PYTHON" "$ROOT/benchmarks/benchmark_faprompt.py" "${BENCH[@]}" --precision fp32 --tf32
run_step profile_bf16 180 60 "$PYTHON" "$ROOT/benchmarks/benchmark_faprompt.py" "${BENCH[@]}" --precision bf16 \
    --batch-sizes "$PROFILE_BATCH" --train-batch-size 0 --repeats 1 --profile 25

# 6. and 7. The toy protocol through anomalib's command line.
run_step synthetic_data 120 5 "$PYTHON" - "$WORK" <<'EOF'
import sys
from anomalib_faprompt.data import make_synthetic_dataset
print(make_synthetic_dataset(f"{sys.argv[1]}/source", categories=("alpha", "beta")))
print(make_synthetic_dataset(f"{sys.argv[1]}/target", categories=("gamma", "delta", "epsilon"), seed=1))
EOF
for precision in "${CLI_PRECISIONS[@]}"; do
    results="$WORK/results_$precision"
    common=(--config "$ROOT/configs/faprompt_synthetic_tiny.yaml" --trainer.accelerator "$ACCELERATOR"
        --trainer.precision "$precision" --data.root "$WORK/source" --data.target_root "$WORK/target")
    run_step "cli_train_$precision" 180 0 "${ANOMALIB[@]}" train "${common[@]}" --default_root_dir "$results"
    grep -h "Automatic Mixed Precision\|GPU available\|CUDA_VISIBLE" "$LOG_DIR/cli_train_$precision".*
    table=$(find "$results" -name per_category_results.md 2>/dev/null | head -n 1)
    checkpoint=$(find "$results" -name model.ckpt 2>/dev/null | head -n 1)
    [ -n "$table" ] && cat "$table"
    if [ -z "$checkpoint" ]; then
        echo "no checkpoint under $results"
        record "cli_test_$precision" 1 0
        record "cli_predict_$precision" 1 0
        continue
    fi
    run_step "cli_test_$precision" 120 0 "${ANOMALIB[@]}" test "${common[@]}" --ckpt_path "$checkpoint" \
        --default_root_dir "$WORK/test_$precision"
    table=$(find "$WORK/test_$precision" -name per_category_results.md 2>/dev/null | head -n 1)
    [ -n "$table" ] && cat "$table"
    run_step "cli_predict_$precision" 120 0 "${ANOMALIB[@]}" predict --config "$ROOT/configs/faprompt_synthetic_tiny.yaml" \
        --trainer.accelerator "$ACCELERATOR" --trainer.precision "$precision" --ckpt_path "$checkpoint" \
        --data "$WORK/target/gamma/test" --default_root_dir "$WORK/predict_$precision"
done

echo
echo "=================== summary (device $DEVICE) ==================="
printf '%s\n' "${SUMMARY[@]}"
echo "failed steps: $FAILURES; full logs in $LOG_DIR"
exit "$FAILURES"
