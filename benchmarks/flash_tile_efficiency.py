"""How efficient PyTorch's CPU flash kernel is on short causal sequences: query-key pairs per second, forward +
backward, as the sequence length L shrinks while the work stays the same (B * L = ``--tokens`` sequences' worth).

Why it matters (issue 16): the Sparse Transformer's fixed pattern, merged head, runs its own-block factor as
n / l causal attentions of l = 64 positions; if the kernel handles those at a fraction of its rate on one long
sequence, the merged head cannot reach the speed its pair count alone would allow.

    python benchmarks/flash_tile_efficiency.py [--lengths 64 128 256 512 4096] [--tokens 16384] [--dim 64]
        [--reps 9] [--threads 2] [--markdown benchmarks/flash_tile_efficiency.md]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from visionattn.argtypes import positive_int

OUT = Path(__file__).with_suffix(".md")


def measure(length: int, tokens: int, dim: int, reps: int) -> float:
    """Median ms of one causal forward + backward over (tokens / length, 1, length, dim) q, k, v."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(tokens // length, 1, length, dim, generator=g, requires_grad=True) for _ in range(3))

    def step() -> None:
        F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()

    step()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", nargs="+", type=positive_int, default=[64, 128, 256, 512, 4096])
    parser.add_argument("--tokens", type=positive_int, default=16384, help="B * L (default 16384: 4 heads of 4096)")
    parser.add_argument("--dim", type=positive_int, default=64)
    parser.add_argument("--reps", type=positive_int, default=9)
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--markdown", type=Path, default=OUT, help=f"write the table here (default {OUT.name})")
    args = parser.parse_args()
    if any(args.tokens % length for length in args.lengths):
        parser.error(f"--tokens ({args.tokens}) must be a multiple of every length")
    torch.set_num_threads(args.threads)
    lines = [f"torch {torch.__version__} on {platform.machine()}, {torch.get_num_threads()} threads; causal "
             f"F.scaled_dot_product_attention, forward + backward, fp32, d = {args.dim}, B * L = {args.tokens}; "
             f"medians of {args.reps}", "", "| L | B | ms | M pairs/s | x the longest's rate |",
             "|---:|---:|---:|---:|---:|"]
    rates = {}
    for length in args.lengths:
        ms = measure(length, args.tokens, args.dim, args.reps)
        rates[length] = (ms, args.tokens * (length + 1) / 2 / ms / 1e3)
    longest = rates[max(rates)][1]
    for length, (ms, rate) in rates.items():
        lines.append(f"| {length} | {args.tokens // length} | {ms:.1f} | {rate:.1f} | {rate / longest:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
