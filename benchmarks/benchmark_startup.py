"""Cost of the start-up hook (anomalib_faprompt_models.pth) at interpreter start-up.

Runs fresh interpreters with ``-X importtime`` and prints, as a Markdown table, the median time spent
importing the hook (``anomalib_faprompt._register`` and the package ``__init__`` it needs) next to the
median wall time of a bare ``python -c pass``.

    python benchmarks/benchmark_startup.py --runs 30
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def hook_import_us() -> int:
    """Cumulative microseconds of the hook's import in one fresh interpreter (0 when absent)."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "pass"], capture_output=True, text=True, check=True
    )
    for line in result.stderr.splitlines():
        if line.rstrip().endswith("anomalib_faprompt._register"):
            return int(line.split("|")[1])
    return 0


def bare_start_ms() -> float:
    """Wall time of one fresh ``python -c pass`` in milliseconds."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return (time.perf_counter() - start) * 1000.0


def main() -> None:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    hook = statistics.median(hook_import_us() for _ in range(args.runs)) / 1000.0
    start = statistics.median(bare_start_ms() for _ in range(args.runs))
    print("| measure | median (ms) |")  # noqa: T201
    print("| --- | --- |")  # noqa: T201
    print(f"| interpreter start-up (`python -c pass`, hook included) | {start:.2f} |")  # noqa: T201
    print(f"| import of the hook (`-X importtime`, cumulative) | {hook:.3f} |")  # noqa: T201
    print(f"| hook share of start-up | {100.0 * hook / start:.1f} % |")  # noqa: T201


if __name__ == "__main__":
    main()
