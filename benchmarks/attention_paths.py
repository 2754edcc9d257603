"""Where the attention core's two paths cross on the CPU: the fused kernel against the explicit weights.

``visionattn.layers.attention_core.attention`` with ``impl="auto"`` takes the explicit path (Q K^T, softmax, times
V) for at most ``CPU_EXPLICIT_MAX_PAIRS`` query-key pairs per head on the CPU and
``F.scaled_dot_product_attention`` otherwise. This measures why: for sequence lengths N of 16 to 400 (N query
and N keys) and head sizes d of 16, 32 and 64, with the batch x heads chosen so every row does about the same
work (2^21 / N^2 products, at most 2048), the forward without gradients and forward + backward of both paths,
interleaved (who goes first alternates), the median of ``--reps`` calls of each. The ratio fused / explicit is
above 1 where the explicit path is faster; the last column says which path ``auto`` takes there.

    python benchmarks/attention_paths.py [--lengths 16 49 64 100 144 196 256 400] [--dims 16 32 64]
        [--reps 7] [--threads 2] [--markdown out.md]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from visionattn.cli import positive_int
from visionattn.layers.attention_core import CPU_EXPLICIT_MAX_PAIRS, attention, resolve_impl

PATHS = ("fused", "explicit")


def _ms(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def measure(rows: int, n: int, d: int, reps: int) -> dict[str, tuple[float, float]]:
    """Median forward and forward + backward ms of each path on (rows, 1, n, d) queries, keys and values."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(rows, 1, n, d, generator=g, requires_grad=True) for _ in range(3))
    grad = torch.randn(rows, 1, n, d, generator=g)

    def forward(impl: str) -> None:
        with torch.no_grad():
            attention(q, k, v, impl=impl)

    def train(impl: str) -> None:
        attention(q, k, v, impl=impl).backward(grad)

    for impl in PATHS:  # warm-up
        forward(impl)
        train(impl)
    times: dict[str, tuple[list[float], list[float]]] = {impl: ([], []) for impl in PATHS}
    for rep in range(reps):
        for impl in PATHS if rep % 2 else PATHS[::-1]:
            times[impl][0].append(_ms(lambda impl=impl: forward(impl)))
            times[impl][1].append(_ms(lambda impl=impl: train(impl)))
    return {impl: (statistics.median(f), statistics.median(t)) for impl, (f, t) in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", nargs="+", type=positive_int, default=[16, 49, 64, 100, 144, 196, 256, 400])
    parser.add_argument("--dims", nargs="+", type=positive_int, default=[16, 32, 64])
    parser.add_argument("--reps", type=positive_int, default=7)
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lines = [f"torch {torch.__version__} on {platform.machine()}, {torch.get_num_threads()} threads, fp32; medians of "
             f"{args.reps} interleaved calls; `auto` takes the explicit path up to {CPU_EXPLICIT_MAX_PAIRS} pairs",
             "", "| N | d | batch x heads | forward ms fused / explicit | ratio | forward + backward ms fused / "
             "explicit | ratio | auto takes |", "|---:|---:|---:|---|---:|---|---:|---|"]
    for d in args.dims:
        for n in args.lengths:
            rows = max(1, min(2048, 2**21 // (n * n)))
            m = measure(rows, n, d, args.reps)
            (ff, ft), (ef, et) = m["fused"], m["explicit"]
            auto = resolve_impl("auto", torch.empty(1, 1, n, 1), torch.empty(1, 1, n, 1))
            lines.append(f"| {n} | {d} | {rows} | {ff:.2f} / {ef:.2f} | {ff / ef:.2f} | {ft:.2f} / {et:.2f} | "
                         f"{ft / et:.2f} | {auto} |")
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    if args.markdown:
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
