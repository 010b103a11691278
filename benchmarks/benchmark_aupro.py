"""Time and peak memory of pixel AUPRO on VisA-sized test sets: anomalib's ``AUPRO``, this package's, the papers'.

Maps are smooth random fields plus a response on the defects; about half the masks hold one to three
elliptic blobs (connected regions), the rest are empty, as in a VisA test split. Each measurement
runs in a fresh process (peak resident memory is that process's); the maps are fed to the metric in
batches of 8, as the evaluator does. The difference column shows that anomalib's and the fast metric compute
the same AUPRO; the last columns time the papers' definition (``PaperAUPRO``) and give its value beside the exact one.

    python benchmarks/benchmark_aupro.py                       # 100, 200 and 2000 maps at 518
    python benchmarks/benchmark_aupro.py --maps 50 --size 128  # quick

anomalib's metric is skipped for sizes whose estimated memory (about 60 bytes per pixel: its measured growth
from 100 to 200 maps) exceeds ``--memory-gb``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F  # noqa: N812

ANOMALIB_BYTES_PER_PIXEL = 60


def make_batch(start: int, count: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Maps ``(count, 1, size, size)`` and boolean masks ``(count, size, size)``, seeded by ``start``."""
    generator = torch.Generator().manual_seed(start)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    masks = torch.zeros(count, size, size, dtype=torch.bool)
    for index in range(count):
        if torch.rand(1, generator=generator) < 0.5:
            continue
        for _ in range(int(torch.randint(1, 4, (1,), generator=generator))):
            cy, cx = (torch.rand(2, generator=generator) * 0.7 + 0.15) * size
            ry, rx = (torch.rand(2, generator=generator) * 0.1 + 0.02) * size
            masks[index] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    noise = F.interpolate(torch.rand(count, 1, 16, 16, generator=generator), size=(size, size), mode="bicubic")
    response = F.avg_pool2d(masks[:, None].float(), 9, stride=1, padding=4)
    maps = 0.6 * noise + 0.4 * response + 0.05 * torch.rand(count, 1, size, size, generator=generator)
    return maps.clamp(0, 1), masks


def measure(implementation: str, n_maps: int, size: int) -> dict:
    """Feed the maps to one metric and time ``compute``."""
    from anomalib.metrics import aupro as anomalib_aupro  # noqa: PLC0415  (timed in a fresh worker process)

    from anomalib_faprompt.metrics import aupro as fast_aupro  # noqa: PLC0415

    metric_class = {
        "anomalib": anomalib_aupro._AUPRO,  # noqa: SLF001
        "fast": fast_aupro._FastAUPRO,  # noqa: SLF001
        "paper": fast_aupro._PaperAUPRO,  # noqa: SLF001
    }[implementation]
    metric = metric_class(fpr_limit=0.3)
    for start in range(0, n_maps, 8):
        maps, masks = make_batch(start, min(8, n_maps - start), size)
        metric.update(maps, masks)
    begin = time.perf_counter()
    value = float(metric.compute())
    seconds = time.perf_counter() - begin
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"seconds": seconds, "peak_gb": peak, "value": value}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maps", type=int, nargs="+", default=[100, 200, 2000])
    parser.add_argument("--size", type=int, default=518)
    parser.add_argument("--memory-gb", type=float, default=6.0, help="skip anomalib above this estimated peak")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker[0], int(args.worker[1]), int(args.worker[2]))))
        return

    print(
        "| maps | size | anomalib AUPRO s | peak GB | fast AUPRO s | peak GB | speed-up | abs. difference "
        "| paper AUPRO s | peak GB | exact / paper value |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for n_maps in args.maps:
        results = {}
        for implementation in ("anomalib", "fast", "paper"):
            estimate = ANOMALIB_BYTES_PER_PIXEL * n_maps * args.size**2 / 2**30
            if implementation == "anomalib" and estimate > args.memory_gb:
                results[implementation] = None
                continue
            command = [sys.executable, __file__, "--worker", implementation, str(n_maps), str(args.size)]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout  # noqa: S603  (this script)
            results[implementation] = json.loads(output.strip().splitlines()[-1])
        slow, fast = results["anomalib"], results["fast"]
        if slow is None:
            estimate = ANOMALIB_BYTES_PER_PIXEL * n_maps * args.size**2 / 2**30
            slow_cells, ratio, difference = f"skipped (est. {estimate:.0f} GB) | -", "-", "-"
        else:
            slow_cells = f"{slow['seconds']:.1f} | {slow['peak_gb']:.1f}"
            ratio = f"{slow['seconds'] / fast['seconds']:.1f}x"
            difference = f"{abs(slow['value'] - fast['value']):.1e}"
        fast_cells = f"{fast['seconds']:.1f} | {fast['peak_gb']:.1f}"
        paper = results["paper"]
        paper_cells = f"{paper['seconds']:.1f} | {paper['peak_gb']:.1f} | {fast['value']:.4f} / {paper['value']:.4f}"
        print(
            f"| {n_maps} | {args.size} | {slow_cells} | {fast_cells} | {ratio} | {difference} | {paper_cells} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
