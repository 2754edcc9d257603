"""Start-up cost of the package and the command line, against ``import torch``.

Each case runs in a fresh interpreter (``python -c ...`` or ``python -m visionattn ...``), ``--reps`` times after one
warm-up run (so every case reads its files from the page cache), the cases interleaved (one run of each, then the
next round) so that a slow minute of a shared machine falls on all of them; the median wall time is reported. Targets of
issue 12: importing visionattn with every layer and model registered costs at most 0.3 s more than importing torch,
and every ``--help`` finishes in under 0.5 s (the command line parses before it imports torch).

    python benchmarks/startup_time.py [--reps 7]
    PYTHONPATH=path/to/older/checkout/src python benchmarks/startup_time.py   # the same cases for older code

A case that fails (an older checkout without ``visionattn models``) is reported as "failed" and left out of the
verdict.
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
import time

IMPORT_CASES = {
    "import torch": "import torch",
    "import visionattn (lazy: no torch)": "import visionattn",
    "import visionattn + every layer and model": "import visionattn; visionattn.list_models(); visionattn.list_attn()",
}
COMMANDS = ["layers", "models", "info", "bench", "train", "compare"]


def _run(argv: list[str]) -> float:
    """Wall seconds of one run, NaN when it fails."""
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True)
    return time.perf_counter() - start if done.returncode == 0 else float("nan")


def _time_all(cases: dict[str, list[str]], reps: int) -> dict[str, float]:
    for argv in cases.values():  # warm-up: page cache, .pyc files
        _run(argv)
    times: dict[str, list[float]] = {label: [] for label in cases}
    for _ in range(reps):
        for label, argv in cases.items():
            times[label].append(_run(argv))
    return {label: statistics.median(t) if not any(math.isnan(x) for x in t) else float("nan")
            for label, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7, help="runs per case; the median is reported (default 7)")
    args = parser.parse_args()
    py = sys.executable
    cases = {label: [py, "-c", code] for label, code in IMPORT_CASES.items()}
    cases["visionattn --version"] = [py, "-m", "visionattn", "--version"]
    cases["visionattn --help"] = [py, "-m", "visionattn", "--help"]
    cases.update({f"visionattn {cmd} --help": [py, "-m", "visionattn", cmd, "--help"] for cmd in COMMANDS})
    rows = list(_time_all(cases, args.reps).items())
    width = max(len(label) for label, _ in rows)
    print(f"| {'case':<{width}} | median s |")
    print(f"|{'-' * (width + 2)}|----------|")
    for label, seconds in rows:
        print(f"| {label:<{width}} | {'failed' if math.isnan(seconds) else f'{seconds:8.3f}':>8} |")
    times = dict(rows)
    extra = times["import visionattn + every layer and model"] - times["import torch"]
    worst_help = max(s for label, s in rows if label.endswith("--help") and not math.isnan(s))
    print(f"\nfull import minus import torch: {extra:+.3f} s (target <= 0.3 s: {'met' if extra <= 0.3 else 'NOT met'})")
    print(f"slowest --help: {worst_help:.3f} s (target < 0.5 s: {'met' if worst_help < 0.5 else 'NOT met'})")


if __name__ == "__main__":
    main()
