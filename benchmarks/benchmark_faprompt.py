"""Speed and memory of FAPrompt against the bare open_clip image encoder (the floor).

Random weights of the real architecture (no download): the timings are those of the released
model. Prints a Markdown table:

* FAPrompt inference (``FAPromptModel`` in eval mode under ``torch.inference_mode``, static text
  cache warm) in seconds per batch and images per second;
* the bare image encoder ``clip.visual(images)`` of the same backbone at the same image size (after
  the positional-embedding resize), and the ratio FAPrompt / bare encoder; with ``--sdpa-floor``
  also that encoder with ``nn.MultiheadAttention``'s fused fast path off, so that its attention runs
  by SDPA like FAPrompt's (on CPU the fast path materialises the attention matrix and is slower);
* one training step (forward, every loss of ``FAPrompt.compute_losses`` weighted as in
  ``training_step``, backward, Adam step) on synthetic images and masks, half of them anomalous;
* peak memory of each phase: on CUDA ``torch.cuda.max_memory_allocated``; on CPU the process's
  peak resident set size (``VmHWM``, reset before each phase where Linux allows, else ``ru_maxrss``),
  the model's weights included;
* with ``--precision bf16`` / ``fp16`` (several may be given: one table each, the model built once), all of
  it under ``torch.autocast`` (training with a gradient scaler for fp16), and the largest difference of
  scores and maps to fp32 on the same images (one untimed call per batch size);
  ``--tf32`` lets fp32 matrix products use TF32 (``torch.set_float32_matmul_precision("high")``).

FAPrompt and bare-encoder repeats alternate so that a change of machine load hits both alike;
the table shows the median of the timed repeats. A batch-1 call fills FAPrompt's static text cache
before any measurement. The inference memory is that of FAPrompt's first timed call.

Examples:
    python benchmarks/benchmark_faprompt.py                       # ViT-L-14-336 at 518, CPU
    python benchmarks/benchmark_faprompt.py --device cuda --repeats 10
    python benchmarks/benchmark_faprompt.py --device cuda --precision fp32 bf16 fp16 --batch-sizes 1 8 32
    python benchmarks/benchmark_faprompt.py --tiny                # tiny random ViT, seconds
    python benchmarks/benchmark_faprompt.py --profile 25 --batch-sizes 1 --train-batch-size 0
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from anomalib_faprompt.models.faprompt.lightning_model import FAPrompt

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 3, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 3},
}
TINY_ARGS = {"backbone_config": TINY_CLIP, "vv_layers": 2, "prompt_depth": 3, "sigma": 2.0}
VARIANTS = ("paper", "released")
MISSING = "-"
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--backbone", default="ViT-L-14-336", help="open_clip model name (random weights)")
    parser.add_argument("--image-size", type=int, default=None, help="working image side (default 518; tiny: 64)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8], help="inference batch sizes")
    parser.add_argument("--train-batch-size", type=int, default=8, help="training-step batch size (0: skip)")
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats per measurement")
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed calls before each measurement (the text cache is filled first)"
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads (default: all)")
    parser.add_argument(
        "--variant", default="paper", choices=VARIANTS, help="FAPrompt variant (released: FAPrompt.released_code)"
    )
    parser.add_argument("--tiny", action="store_true", help="tiny random ViT (quick test of this script)")
    parser.add_argument(
        "--precision",
        nargs="+",
        default=["fp32"],
        choices=sorted(PRECISIONS),
        help="fp32, or bf16/fp16 autocast; several: one table each, and the difference to fp32",
    )
    parser.add_argument("--tf32", action="store_true", help='torch.set_float32_matmul_precision("high")')
    parser.add_argument(
        "--sdpa-floor",
        action="store_true",
        help="also time the bare encoder with nn.MultiheadAttention's fast path off (attention by SDPA)",
    )
    parser.add_argument("--profile", type=int, default=0, metavar="ROWS", help="print a torch.profiler table")
    parser.add_argument(
        "--k-shot", type=int, default=0, help="also time few-shot inference with a bank of this many references"
    )
    args = parser.parse_args(argv)
    if args.image_size is None:
        args.image_size = 64 if args.tiny else 518
    for name in ("repeats", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1.")
    if args.warmup < 0 or args.train_batch_size < 0:
        parser.error("--warmup and --train-batch-size must be >= 0 (--train-batch-size 0: no training step).")
    if min(args.batch_sizes) < 1:
        parser.error("--batch-sizes must be at least 1.")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available on this machine; use --device cpu.")
    return args


class PeakMemory:
    """Peak memory of a phase in MiB: CUDA allocator peak, or the process's peak RSS on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.resettable = device.type == "cpu" and self._reset_rss()

    @staticmethod
    def _reset_rss() -> bool:
        """Reset the kernel's peak-RSS counter ``VmHWM`` (Linux >= 4.0); False where that is not possible."""
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            return False
        return True

    def reset(self) -> None:
        """Start a new phase."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.resettable:
            self._reset_rss()

    def current_mib(self) -> float:
        """Memory in use now: CUDA allocated, or the resident set size on CPU."""
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device) / 2**20
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def peak_mib(self) -> float:
        """Peak since the last :meth:`reset` (on CPU without reset: since the process started)."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        if self.resettable:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux.
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20

    @property
    def label(self) -> str:
        """What :meth:`peak_mib` measures."""
        if self.device.type == "cuda":
            return "CUDA max allocated"
        return "peak RSS" if self.resettable else "peak RSS since start"


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``precision`` on ``device``; nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=PRECISIONS[precision])


def progress(message: str) -> None:
    """A progress line on stderr (seconds per call), so that a long run shows partial results."""
    print(message, file=sys.stderr, flush=True)


def fill_text_cache(model: FAPrompt, args: argparse.Namespace, device: torch.device) -> float:
    """One untimed batch-1 inference: FAPrompt's static text embeddings are cached from then on."""
    images = synthetic_batch(1, args.image_size, device)[0]
    with torch.inference_mode():
        return timed(lambda: model.model.eval()(images), device)


def synchronize(device: torch.device) -> None:
    """Wait for queued device work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of ``function`` takes."""
    synchronize(device)
    start = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - start


def without_mha_fastpath(visual: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``visual(images)`` with nn.MultiheadAttention's fused fast path off, so attention runs through SDPA."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        return visual(images)
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


def synthetic_batch(batch: int, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalised-looking images, labels (odd indices anomalous) and masks (a square defect per anomaly).

    The images depend only on ``batch`` and ``size`` (seeded), so that every precision sees the same ones.
    """
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch)).to(device)
    labels = (torch.arange(batch, device=device) % 2).long()
    masks = torch.zeros(batch, size, size, device=device)
    side = max(size // 4, 1)
    masks[labels == 1, size // 3 : size // 3 + side, size // 2 : size // 2 + side] = 1.0
    return images, labels, masks


def build_model(args: argparse.Namespace, device: torch.device) -> FAPrompt:
    """FAPrompt with random backbone weights."""
    from anomalib_faprompt.models.faprompt.lightning_model import FAPrompt  # noqa: PLC0415  (slow: after the argument checks)

    extra = TINY_ARGS if args.tiny else {}
    build = FAPrompt.released_code if args.variant == "released" else FAPrompt
    model = build(backbone=args.backbone, pretrained=None, image_size=args.image_size, **extra)
    return model.to(device)


def set_bank(model: FAPrompt, args: argparse.Namespace, device: torch.device) -> tuple[float, float]:
    """Fill the few-shot bank from ``--k-shot`` random reference images: seconds taken and the bank's MiB."""
    torch_model = model.model.eval()
    references = synthetic_batch(args.k_shot, args.image_size, device)[0]

    def store() -> None:
        with torch.inference_mode():
            torch_model.store_references(references)

    seconds = timed(store, device)
    bank_mib = sum(bank.numel() * bank.element_size() for bank in torch_model.few_shot.banks()) / 2**20
    return seconds, bank_mib


def measure_inference(
    model: FAPrompt,
    batch: int,
    args: argparse.Namespace,
    device: torch.device,
    memory: PeakMemory,
    precision: str,
    with_floors: bool = True,
) -> dict[str, float]:
    """FAPrompt and bare-encoder (floor) seconds per batch (medians) at ``precision``, and FAPrompt's peak memory."""
    torch_model = model.model.eval()
    visual = torch_model.backbone.clip.visual
    images = synthetic_batch(batch, args.image_size, device)[0]
    floors = {"encoder_s": lambda: visual(images)} if with_floors else {}
    if with_floors and args.sdpa_floor:
        floors["sdpa_encoder_s"] = lambda: without_mha_fastpath(visual, images)
    times: dict[str, list[float]] = {"faprompt_s": [], **{name: [] for name in floors}}
    with torch.inference_mode(), autocast(precision, device):
        for _ in range(args.warmup):
            torch_model(images)
            for floor in floors.values():
                floor()
        memory.reset()
        for repeat in range(args.repeats):
            times["faprompt_s"].append(timed(lambda: torch_model(images), device))
            if repeat == 0:
                peak = memory.peak_mib()
            for name, floor in floors.items():
                times[name].append(timed(floor, device))
            timings = ", ".join(f"{n} {t[-1]:.3f}" for n, t in times.items())
            progress(f"{precision} batch {batch}, repeat {repeat + 1}: {timings}")
    return {**{name: statistics.median(values) for name, values in times.items()}, "inference_mib": peak}


def measure_training(
    model: FAPrompt, batch: int, args: argparse.Namespace, device: torch.device, memory: PeakMemory, precision: str
) -> dict[str, float]:
    """Seconds per training step (median) at ``precision`` and the peak memory of training.

    The prompts are trained further by every step; the steps of one precision start where the previous
    precision's left them (the timings do not depend on the values).
    """
    model.train()
    optimizer = model.configure_optimizers()
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    images, labels, masks = synthetic_batch(batch, args.image_size, device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(precision, device):
            losses = model.compute_losses(images, labels, masks)
            total = model.weighted_loss(losses)
        scaler.scale(total).backward()
        scaler.step(optimizer)
        scaler.update()

    memory.reset()
    for _ in range(args.warmup):
        step()
    times = []
    for repeat in range(args.repeats):
        times.append(timed(step, device))
        progress(f"{precision} training batch {batch}, repeat {repeat + 1}: {times[-1]:.3f} s")
    peak = memory.peak_mib()
    model.eval()
    return {"train_s": statistics.median(times), "train_mib": peak}


def largest_difference(
    model: FAPrompt, args: argparse.Namespace, device: torch.device, precision: str
) -> tuple[float, float]:
    """Largest absolute difference of scores and of maps between ``precision`` and fp32, over every batch size.

    The fp32 reference is computed right before, with the same weights: the training steps of each
    precision move the prompts, so a reference kept from an earlier precision would measure training.
    """
    torch_model = model.model.eval()
    score_difference = map_difference = 0.0
    with torch.inference_mode():
        for batch in args.batch_sizes:
            images = synthetic_batch(batch, args.image_size, device)[0]
            reference = torch_model(images)
            with autocast(precision, device):
                output = torch_model(images)
            score_difference = max(score_difference, (output.pred_score - reference.pred_score).abs().max().item())
            map_difference = max(map_difference, (output.anomaly_map - reference.anomaly_map).abs().max().item())
    return score_difference, map_difference


def profile(model: FAPrompt, batch: int, args: argparse.Namespace, device: torch.device, precision: str) -> str:
    """torch.profiler table of one warm FAPrompt inference call at ``precision``, by self time."""
    torch_model = model.model.eval()
    images = synthetic_batch(batch, args.image_size, device)[0]
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.inference_mode(), autocast(precision, device):
        torch_model(images)
        with torch.profiler.profile(activities=activities) as profiler:
            torch_model(images)
            synchronize(device)
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return profiler.key_averages().table(sort_by=sort_by, row_limit=args.profile)


def load_average() -> str:
    """The machine's load averages, to judge how much other processes disturbed the timings."""
    if not hasattr(os, "getloadavg"):
        return "unknown"
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def fmt(value: float | None, digits: int = 3) -> str:
    """A table cell."""
    return MISSING if value is None else f"{value:.{digits}f}"


def table(results: dict[int, dict[str, float]], memory_label: str) -> str:
    """Markdown table: one row per measurement, one column per batch size."""
    sizes = sorted(results)

    def row(name: str, compute: Callable[[int, dict[str, float]], float | None], digits: int = 3) -> str:
        cells = [fmt(compute(size, results[size]), digits) for size in sizes]
        return "| " + " | ".join([name, *cells]) + " |"

    def get(key: str, scale: float = 1.0) -> Callable[[int, dict[str, float]], float | None]:
        return lambda _, result: result[key] * scale if key in result else None

    def per_second(key: str) -> Callable[[int, dict[str, float]], float | None]:
        return lambda size, result: size / result[key] if key in result else None

    lines = [
        "| measurement | " + " | ".join(f"batch {size}" for size in sizes) + " |",
        "|---" * (len(sizes) + 1) + "|",
        row("FAPrompt inference (images/s)", per_second("faprompt_s")),
        row("FAPrompt inference (s/batch)", get("faprompt_s")),
        row("bare image encoder (images/s)", per_second("encoder_s")),
        row("bare image encoder (s/batch)", get("encoder_s")),
        row(
            "ratio FAPrompt / bare encoder",
            lambda _, r: r["faprompt_s"] / r["encoder_s"] if "faprompt_s" in r else None,
            2,
        ),
        *(
            [
                row("bare encoder, SDPA attention (s/batch)", get("sdpa_encoder_s")),
                row(
                    "ratio FAPrompt / bare encoder with SDPA",
                    lambda _, r: r["faprompt_s"] / r["sdpa_encoder_s"] if "sdpa_encoder_s" in r else None,
                    2,
                ),
            ]
            if any("sdpa_encoder_s" in result for result in results.values())
            else []
        ),
        row(f"inference memory (MiB, {memory_label})", get("inference_mib"), 0),
        *(
            [
                row("few-shot inference (s/batch)", get("few_shot_s")),
                row("ratio few-shot / zero-shot", lambda _, r: r["few_shot_s"] / r["faprompt_s"], 2),
                row(f"few-shot inference memory (MiB, {memory_label})", get("few_shot_mib"), 0),
            ]
            if any("few_shot_s" in result for result in results.values())
            else []
        ),
        row("training step (s/step)", get("train_s")),
        row(f"training memory (MiB, {memory_label})", get("train_mib"), 0),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Build the model, measure, print the table."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.tf32:
        torch.set_float32_matmul_precision("high")
    torch.manual_seed(0)
    device = torch.device(args.device)
    memory = PeakMemory(device)
    model = build_model(args, device)
    backbone = "tiny random ViT" if args.tiny else f"{args.backbone} (random weights)"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"FAPrompt ({args.variant}) on {backbone} at {args.image_size}x{args.image_size}, device {device} ({name}), "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"fp32 matmul precision {torch.get_float32_matmul_precision()!r}, "
        f"{args.warmup} warm-up + {args.repeats} timed repeats (median); "
        f"memory in use after building the model: {memory.current_mib():.0f} MiB; "
        f"load average (1, 5, 15 min): {load_average()}",
        flush=True,
    )
    progress(f"text cache filled by a batch-1 call of {fill_text_cache(model, args, device):.2f} s")
    for precision in args.precision:
        if args.profile:
            print(profile(model, min(args.batch_sizes), args, device, precision), flush=True)
        results: dict[int, dict[str, float]] = {}
        for batch in args.batch_sizes:
            results.setdefault(batch, {}).update(measure_inference(model, batch, args, device, memory, precision))
        if args.k_shot:
            bank_seconds, bank_mib = set_bank(model, args, device)
            for batch in args.batch_sizes:
                few = measure_inference(model, batch, args, device, memory, precision, with_floors=False)
                results[batch].update(few_shot_s=few["faprompt_s"], few_shot_mib=few["inference_mib"])
            model.model.clear_references()
            print(
                f"\nfew-shot bank: k_shot {args.k_shot}, layers {list(model.model.few_shot.layers)}, "
                f"{bank_mib:.1f} MiB, set up in {bank_seconds:.2f} s ({args.k_shot} encoder passes)"
            )
        if args.train_batch_size:
            results.setdefault(args.train_batch_size, {}).update(
                measure_training(model, args.train_batch_size, args, device, memory, precision)
            )
        print(f"\nprecision {precision if precision == 'fp32' else f'{precision} (autocast)'}:\n")
        print(table(results, memory.label), flush=True)
        if precision != "fp32":
            score, anomaly_map = largest_difference(model, args, device, precision)
            sizes = ", ".join(str(size) for size in args.batch_sizes)
            print(
                f"largest |{precision} - fp32| difference (same images, batches {sizes}): "
                f"score {score:.2e}, map {anomaly_map:.2e}",
                flush=True,
            )
    print(f"\nload average (1, 5, 15 min) at the end: {load_average()}")


if __name__ == "__main__":
    main()
