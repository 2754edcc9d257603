"""Sparse Transformer attention against dense causal attention: forward + backward time and peak memory as n grows.

Child et al. 2019 factorize causal attention so that each position attends O(sqrt(n)) others
(:mod:`visionattn.layers.sparse_attention`). Compared at the same shapes (batch ``--batch``, ``--heads`` heads of
``--dim`` channels, fp32, causal, n in ``--sizes``):

- ``dense``: ``F.scaled_dot_product_attention(is_causal=True)`` (the flash kernel; it skips the masked half);
- ``strided`` and ``fixed``, ``merged`` (one head over A(1) u A(2), eq. 7) and ``per_head`` (half the heads on
  each factor, eq. 8; also the cost of two ``interleaved`` blocks, eq. 6, per block): the fast path of
  :class:`~visionattn.layers.sparse_attention.SparseAttention`.

The stride is l = sqrt(n) (``--stride sqrt``, the paper's choice; 64 at n = 4096, the issue's target) or a fixed
``--stride L``; fixed uses c = l / 8 summary positions. Each cell is one forward + backward (gradients of q, k, v),
the median of ``--reps`` calls after one warm-up call; the repetitions are interleaved (every method once per
round), so that a slow patch of the machine hits all methods alike; ``--clock cpu`` times each call by this
process's CPU time instead of the wall clock, so that other processes on shared cores do not inflate it (use it
with ``--threads 1``: with more threads it counts their spin-waits too). Peak memory is that of one more forward +
backward above what was allocated before it (:func:`visionattn.bench.peak_memory_bytes`: the profiler's tensor
accounting). "pairs" is the number of query-key pairs the pattern attends over the dense causal count (the fast
path computes somewhat more: whole blocks, then masked). The slope is the least-squares slope of log time against
log n over the sizes measured: 2 is quadratic, 1.5 is n sqrt(n). A cell predicted (from the previous size at
quadratic growth) to exceed ``--max-seconds`` is skipped and says so.

    python benchmarks/sparse_attention.py [--sizes 256 1024 4096 16384] [--stride sqrt] [--heads 4] [--dim 64]
        [--batch 1] [--reps 5] [--threads 2] [--clock wall] [--methods ...] [--max-seconds 60]
        [--markdown benchmarks/sparse_attention.md]
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from visionattn.bench import peak_memory_bytes
from visionattn.cli import positive_int
from visionattn.layers.sparse_attention import SparseAttention
from visionattn.layers.sparse_patterns import default_summary, heads_on_first

CPU = torch.device("cpu")
METHODS = ("dense", "strided merged", "strided per_head", "fixed merged", "fixed per_head")
OUT = Path(__file__).with_suffix(".md")


def stride_for(n: int, stride: str) -> int:
    return max(1, round(math.sqrt(n))) if stride == "sqrt" else int(stride)


def step_for(method: str, n: int, stride: str) -> Callable[..., torch.Tensor]:
    if method == "dense":
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)
    pattern, combine = method.split()
    return SparseAttention(pattern, stride_for(n, stride), combine=combine)


def pair_ratio(method: str, n: int, stride: str, heads: int) -> float:
    """Query-key pairs the pattern attends, over the dense causal n (n + 1) / 2 (row sizes in closed form)."""
    if method == "dense":
        return 1.0
    pattern, combine = method.split()
    span, i = stride_for(n, stride), torch.arange(n, dtype=torch.float64)
    block = torch.div(i, span, rounding_mode="floor")
    if pattern == "strided":
        first, second, overlap = torch.clamp(i + 1, max=span), block + 1, 1.0
    else:
        c = default_summary(span)
        overlap = torch.clamp(i % span - (span - c) + 1, min=0)
        first, second = i % span + 1, block * c + overlap
    if combine == "merged":
        rows = first + second - overlap
    else:
        on_first = heads_on_first(heads)
        rows = (on_first * first + (heads - on_first) * second) / heads
    return rows.sum().item() / (n * (n + 1) / 2)


def train_call(step: Callable[..., torch.Tensor], n: int, args: argparse.Namespace) -> Callable[[], None]:
    g = torch.Generator().manual_seed(n)
    q, k, v = (torch.randn(args.batch, args.heads, n, args.dim, generator=g).requires_grad_() for _ in range(3))
    grad = torch.randn(args.batch, args.heads, n, args.dim, generator=g)

    def call() -> None:
        q.grad = k.grad = v.grad = None
        step(q, k, v).backward(grad)
    return call


def measure_size(n: int, methods: list[str], args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Interleaved medians of forward + backward ms, then the peak memory, for the methods at this n."""
    calls = {m: train_call(step_for(m, n, args.stride), n, args) for m in methods}
    times: dict[str, list[float]] = {m: [] for m in methods}
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    for call in calls.values():
        call()  # warm-up
    for _ in range(args.reps):
        for m, call in calls.items():
            start = clock()
            call()
            times[m].append((clock() - start) * 1e3)
    return {m: {"ms": statistics.median(times[m]), "peak_mib": peak_memory_bytes(calls[m], CPU) / 2**20}
            for m in methods}


def run(args: argparse.Namespace) -> dict[tuple[str, int], dict[str, float] | None]:
    results: dict[tuple[str, int], dict[str, float] | None] = {}
    last: dict[str, tuple[int, float]] = {}
    skipped: set[str] = set()
    for n in args.sizes:
        for m in args.methods:
            if m in last and last[m][1] * (n / last[m][0]) ** 2 / 1e3 > args.max_seconds:
                print(f"{m} from n = {n} on: skipped (predicted above {args.max_seconds:g} s)", flush=True)
                skipped.add(m)
        results.update({(m, n): None for m in skipped})
        start = time.perf_counter()
        for m, row in measure_size(n, [m for m in args.methods if m not in skipped], args).items():
            results[(m, n)] = row
            last[m] = (n, row["ms"])
            print(f"n = {n}, {m}: fwd+bwd {row['ms']:.1f} ms, peak {row['peak_mib']:.0f} MiB", flush=True)
        print(f"  ({time.perf_counter() - start:.0f} s for n = {n})", flush=True)
    return results


def slope(points: list[tuple[int, float]]) -> float | None:
    """Least-squares slope of log t against log n."""
    if len(points) < 2:
        return None
    xs, ys = [math.log(n) for n, _ in points], [math.log(t) for _, t in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def tables(results: dict[tuple[str, int], dict[str, float] | None], args: argparse.Namespace) -> str:
    lines = ["| method | n | l | fwd + bwd ms | x faster than dense | peak MiB | pairs (x dense causal) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for m in args.methods:
        for n in args.sizes:
            row, dense = results.get((m, n)), results.get(("dense", n))
            span = "" if m == "dense" else str(stride_for(n, args.stride))
            if row is None:
                lines.append(f"| `{m}` | {n} | {span} | skipped | | | |")
                continue
            speedup = f"{dense['ms'] / row['ms']:.1f}" if dense else ""
            lines.append(f"| `{m}` | {n} | {span} | {row['ms']:.1f} | {speedup} | {row['peak_mib']:.0f} | "
                         f"{pair_ratio(m, n, args.stride, args.heads):.3f} |")
    lines += ["", "| method | log-log slope of time against n |", "|---|---:|"]
    for m in args.methods:
        s = slope([(n, results[(m, n)]["ms"]) for n in args.sizes if results.get((m, n))])
        lines.append(f"| `{m}` | {'' if s is None else f'{s:.2f}'} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=positive_int, default=[256, 1024, 4096, 16384])
    parser.add_argument("--stride", default="sqrt", help="'sqrt' (l = sqrt(n), default) or an integer l")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--batch", type=positive_int, default=1)
    parser.add_argument("--heads", type=positive_int, default=4)
    parser.add_argument("--dim", type=positive_int, default=64)
    parser.add_argument("--reps", type=positive_int, default=5)
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="time per call: wall clock (default), or this process's CPU time, which other "
                             "processes on shared cores do not inflate (meaningful with --threads 1)")
    parser.add_argument("--max-seconds", type=float, default=60.0,
                        help="skip a cell whose forward + backward is predicted above this (default 60)")
    parser.add_argument("--markdown", type=Path, default=OUT, help=f"write the tables here (default {OUT.name})")
    args = parser.parse_args()
    if args.stride != "sqrt" and not (args.stride.isdigit() and int(args.stride) > 0):
        parser.error(f"--stride must be 'sqrt' or a positive integer, got {args.stride!r}")
    if args.heads < 2 and any(m.endswith("per_head") for m in args.methods):
        parser.error("--heads must be at least 2 for the per_head methods")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    results = run(args)
    header = (f"torch {torch.__version__} on {platform.machine()}, {torch.get_num_threads()} threads; batch "
              f"{args.batch}, {args.heads} heads of d = {args.dim}, fp32, causal; l = "
              f"{'sqrt(n)' if args.stride == 'sqrt' else args.stride}, fixed c = l / 8; forward + backward, "
              f"medians of {args.reps} interleaved calls after one warm-up ({args.clock} clock)")
    text = f"{header}\n\n{tables(results, args)}\n\n({time.perf_counter() - start:.0f} s in all)\n"
    print("\n" + text)
    args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
