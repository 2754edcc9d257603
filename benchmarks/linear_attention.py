"""Time of linear attention against softmax attention as the number of tokens doubles, 256 to 16384.

Linear attention (Katharopoulos et al. 2020; :mod:`visionattn.layers.linear_attention`) costs O(N d^2), softmax
attention O(N^2 d): doubling N should double the first and quadruple the second once N is large enough for the
work to outweigh per-call overheads. Every path runs through the library's one attention module
(:class:`visionattn.layers.attention_core.Attention`): ``kernel="linear"``; softmax on the fused path
(``F.scaled_dot_product_attention``, never storing the N x N matrix) and on the explicit one (weights formed).
Shapes: batch 1, 1 head, d = d_v = 64, fp32; non-causal and causal (the linear kernel's chunked prefix sums;
softmax with the causal mask). Forward (under ``no_grad``) and forward + backward (gradients of q, k, v).

Each cell is the median of ``--reps`` calls after a warm-up; a size is skipped on a path when the explicit
weights would pass ``--max-gib`` (memory), or when the previous size's time times the growth seen so far would
pass ``--max-ms`` (time); the table says which. It prints Markdown tables: milliseconds and the ratio
t(N) / t(N / 2) per path, and the median ratio over the doublings from 2048 on.

    python benchmarks/linear_attention.py [--reps 5] [--threads 1] [--max-ms 8000] [--max-gib 2] [--sizes 256 ...]
"""

from __future__ import annotations

import argparse
import statistics

import torch

from visionattn.bench import median_ms
from visionattn.layers.attention_core import Attention

CPU = torch.device("cpu")
SIZES = tuple(256 * 2**i for i in range(7))  # 256 ... 16384
PATHS = {"linear": {"kernel": "linear"}, "softmax fused": {"impl": "fused"},
         "softmax explicit": {"impl": "explicit"}}
RATIO_FROM = 2048


def _inputs(n: int, dim: int, grad: bool) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(n)
    return tuple(torch.randn(1, 1, n, dim, generator=g).requires_grad_(grad) for _ in range(3))


def _call(step: Attention, n: int, dim: int, backward: bool):
    q, k, v = _inputs(n, dim, backward)
    if not backward:
        def forward() -> None:
            with torch.no_grad():
                step(q, k, v)
        return forward
    grad = torch.randn(1, 1, n, dim, generator=torch.Generator().manual_seed(1))

    def forward_backward() -> None:
        q.grad = k.grad = v.grad = None
        step(q, k, v).backward(grad)
    return forward_backward


def _explicit_gib(n: int, backward: bool) -> float:
    """The explicit path's N x N float32 tensors: logits and weights, and their gradients for the backward."""
    return n * n * 4 * (4 if backward else 2) / 2**30


def time_path(path: str, causal: bool, backward: bool, sizes: tuple[int, ...], args: argparse.Namespace
              ) -> dict[int, float | str]:
    """Median ms per size, or the reason it was skipped."""
    step = Attention(causal=causal, **PATHS[path])
    out: dict[int, float | str] = {}
    prev: float | None = None
    growth = 4.0 if path.startswith("softmax") else 2.0
    for n in sizes:
        if path == "softmax explicit" and _explicit_gib(n, backward) > args.max_gib:
            out[n] = f"skipped: > {args.max_gib:g} GiB"
            continue
        if prev is not None and prev * growth > args.max_ms:
            out[n] = f"skipped: ~{prev * growth / 1e3:.0f} s"
            prev = prev * growth
            continue
        ms = median_ms(_call(step, n, args.dim, backward), CPU, warmup=2, reps=args.reps)
        out[n] = prev = ms
    return out


def _fmt(value: float | str) -> str:
    return value if isinstance(value, str) else (f"{value:.3g}" if value < 100 else f"{value:.0f}")


def table(results: dict[str, dict[int, float | str]], sizes: tuple[int, ...]) -> list[str]:
    paths = list(results)
    head = "| N | " + " | ".join(f"{p} ms | x" for p in paths) + " |"
    lines = [head, "|---:|" + "---:|---:|" * len(paths)]
    for i, n in enumerate(sizes):
        cells = []
        for p in paths:
            t, before = results[p][n], results[p].get(sizes[i - 1]) if i else None
            ratio = f"{t / before:.2f}" if isinstance(t, float) and isinstance(before, float) else ""
            cells += [_fmt(t), ratio]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    summary = []
    for p in paths:
        ratios = [results[p][n] / results[p][m] for m, n in zip(sizes, sizes[1:])
                  if n >= RATIO_FROM and all(isinstance(results[p][s], float) for s in (m, n))]
        summary.append(f"{p} {statistics.median(ratios):.2f}" if ratios else f"{p} -")
    lines.append("")
    lines.append(f"Median time ratio per doubling from N = {RATIO_FROM}: " + ", ".join(summary) + ".")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (1: no spinning on a shared machine)")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--max-ms", type=float, default=8000.0, help="skip a size predicted to take longer")
    parser.add_argument("--max-gib", type=float, default=2.0, help="skip explicit sizes whose N x N tensors pass this")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = tuple(args.sizes)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch 1, 1 head, d = {args.dim}, fp32, "
          f"median of {args.reps}")
    for causal in (False, True):
        for backward in (False, True):
            results = {p: time_path(p, causal, backward, sizes, args) for p in args.paths}
            print(f"\n### {'causal' if causal else 'non-causal'}, {'forward + backward' if backward else 'forward'}"
                  "\n")
            print("\n".join(table(results, sizes)), flush=True)


if __name__ == "__main__":
    main()
