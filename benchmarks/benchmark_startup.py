"""Cost of the start-up hook (anomalib_faprompt_models.pth) at interpreter start-up.

Starts fresh interpreters (``python -c pass``) alternately with the hook and with it switched off
(``ANOMALIB_FAPROMPT_NO_HOOK=1``) and prints, as a Markdown table, the median wall times, their
difference and the hook's import time from ``-X importtime``. Where ``PYTHONDONTWRITEBYTECODE`` is set
and the package was installed without bytecode (an editable install), every start compiles the hook's
source; ``--compile`` writes the bytecode first, as ``pip install`` does.

    python benchmarks/benchmark_startup.py --runs 100 --compile
"""

from __future__ import annotations

import argparse
import compileall
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import anomalib_faprompt


def start_ms(hook: bool) -> float:
    """Wall time of one fresh ``python -c pass`` in milliseconds."""
    env = dict(os.environ)
    if not hook:
        env["ANOMALIB_FAPROMPT_NO_HOOK"] = "1"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True, env=env)
    return (time.perf_counter() - start) * 1000.0


def hook_import_ms() -> float:
    """Cumulative import time of the hook (``anomalib_faprompt`` and its import hook), in milliseconds."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "pass"], capture_output=True, text=True, check=True
    )
    for line in result.stderr.splitlines():
        if line.split("|")[-1].strip() == "anomalib_faprompt":  # the package with its import hook
            return int(line.split("|")[1]) / 1000.0
    return 0.0


def main() -> None:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--compile", action="store_true", help="write the package's bytecode first")
    args = parser.parse_args()
    if args.compile:
        compileall.compile_dir(Path(anomalib_faprompt.__file__).parent, quiet=1, legacy=False, force=False)
    with_hook, without_hook = [], []
    for _ in range(args.runs):
        with_hook.append(start_ms(hook=True))
        without_hook.append(start_ms(hook=False))
    hook_import = statistics.median(hook_import_ms() for _ in range(min(args.runs, 30)))
    on, off = statistics.median(with_hook), statistics.median(without_hook)
    rows = [
        ("`python -c pass` with the hook", f"{on:.2f}"),
        ("`python -c pass` without it (`ANOMALIB_FAPROMPT_NO_HOOK=1`)", f"{off:.2f}"),
        ("difference", f"{on - off:+.2f}"),
        ("hook import (`-X importtime`, cumulative)", f"{hook_import:.3f}"),
    ]
    print(f"{args.runs} interleaved runs each; PYTHONDONTWRITEBYTECODE={os.environ.get('PYTHONDONTWRITEBYTECODE')}")
    print("| measure | median (ms) |")
    print("| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
