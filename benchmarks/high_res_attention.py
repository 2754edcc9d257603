"""Attention at high resolution: time and peak memory of each spatial attention layer as the image side doubles.

The ways to afford attention on a large feature map (reference 002: local, blocked local, shifted windows, axial)
beside global attention over all pixels, each as the registered layer a network uses, at the same map
(batch ``--batch``, ``--channels`` C, 8 heads of C / 8, fp32) and sides 56, 112, 224:

- ``sasa``: SASA local 7 x 7 attention (the library's fused C++ kernel);
- ``halo``: HaloNet blocked local attention, blocks of 8 with a halo of 3 (14 x 14 key windows);
- ``swin``: Swin window attention, 7 x 7 windows, shifted (the mask of the wrapped regions included);
- ``axial``: position-sensitive axial attention, global span along the height, then the width;
- ``mhsa``: global multi-head self-attention over all pixels (the fused ``scaled_dot_product_attention``).

Each layer is timed whole (its projections included): an eval forward without gradients, and forward + backward
(with the input's gradient, as inside a network), the median of ``--reps`` calls after one warm-up. Peak memory
is that of one forward + backward above what was allocated before it (the profiler's tensor accounting; for the
SASA kernel its own scratch buffers are added), in MiB and as a multiple of the input. The growth column is the
time at this side over the time at half the side: 4x is linear in the pixels, 16x quadratic. A cell whose
forward + backward is predicted (from the previous side, at quadratic growth) to exceed ``--max-seconds`` is
skipped and says so. The last table names the cheapest layer at each side.

    python benchmarks/high_res_attention.py [--sides 56 112 224] [--layers sasa halo swin axial mhsa]
        [--channels 64] [--batch 1] [--reps 3] [--threads 2] [--max-seconds 60] [--markdown out.md]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visionattn.bench import median_ms, peak_memory_bytes
from visionattn.cli import positive_int
from visionattn.kernels.local_attention import kernel_scratch_peak_bytes
from visionattn.registry import create_attn_for_size

CPU = torch.device("cpu")
# label: (registered name, keywords, what it is)
LAYERS: dict[str, tuple[str, dict[str, Any], str]] = {
    "sasa": ("sasa", {"kernel_size": 7, "heads": 8}, "SASA 7 x 7 local attention (C++ kernel)"),
    "halo": ("halo", {"heads": 8, "block_size": 8, "halo_size": 3}, "HaloNet blocks of 8, halo 3"),
    "swin": ("swin", {"heads": 8, "window_size": 7}, "Swin 7 x 7 windows, shifted"),
    "axial": ("axial", {"heads": 8}, "axial attention, global span (height, then width)"),
    "mhsa": ("mhsa", {"heads": 8}, "global attention over all pixels (fused SDPA)"),
}


def build(label: str, channels: int, side: int) -> nn.Module:
    name, kwargs, _ = LAYERS[label]
    return create_attn_for_size(name, channels, (side, side), **kwargs)


def measure(layer: nn.Module, x: torch.Tensor, reps: int) -> dict[str, float]:
    """Forward and forward + backward ms, peak memory of forward + backward (MiB and x the input)."""
    grad = torch.randn_like(x)

    def forward() -> None:
        with torch.no_grad():
            layer(x)

    def train() -> None:
        x.grad = None
        layer.zero_grad(set_to_none=True)
        layer(x).backward(grad)

    layer.eval()  # BatchNorm inside a layer (axial) then uses its running statistics in both passes
    row = {"fwd_ms": median_ms(forward, CPU, 1, reps), "train_ms": median_ms(train, CPU, 1, reps)}
    kernel_scratch_peak_bytes(reset=True)
    peak = peak_memory_bytes(train, CPU) + kernel_scratch_peak_bytes()
    row["peak_mib"] = peak / 2**20
    row["peak_x"] = peak / (x.numel() * x.element_size())
    return row


def run(args: argparse.Namespace) -> tuple[dict[tuple[str, int], dict[str, float] | None], str]:
    results: dict[tuple[str, int], dict[str, float] | None] = {}
    for label in args.layers:
        previous: tuple[int, float] | None = None
        for side in args.sides:
            if previous is not None:
                predicted = previous[1] * (side / previous[0]) ** 4 / 1e3  # quadratic in the pixels
                if predicted > args.max_seconds:
                    print(f"{label} at {side}: skipped (forward + backward predicted at {predicted:.0f} s)", flush=True)
                    results[(label, side)] = None
                    continue
            torch.manual_seed(0)
            layer = build(label, args.channels, side)
            x = torch.randn(args.batch, args.channels, side, side, requires_grad=True)
            start = time.perf_counter()
            row = measure(layer, x, args.reps)
            results[(label, side)] = row
            previous = (side, row["train_ms"])
            print(f"{label} at {side}: fwd {row['fwd_ms']:.1f} ms, fwd+bwd {row['train_ms']:.1f} ms, peak "
                  f"{row['peak_mib']:.0f} MiB ({time.perf_counter() - start:.0f} s)", flush=True)
    header = (f"torch {torch.__version__} on {platform.machine()}, {torch.get_num_threads()} threads; batch "
              f"{args.batch}, C = {args.channels}, 8 heads, fp32; medians of {args.reps} calls after one warm-up")
    return results, header


def tables(results: dict[tuple[str, int], dict[str, float] | None], args: argparse.Namespace) -> str:
    lines = ["| layer | side | forward ms | forward + backward ms | growth (x the half side) | peak MiB | "
             "peak (x input) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for label in args.layers:
        before = None
        for side in args.sides:
            row = results[(label, side)]
            if row is None:
                lines.append(f"| `{label}` | {side} | skipped | skipped | | | |")
                before = None
                continue
            growth = f"{row['train_ms'] / before:.1f}x" if before else ""
            lines.append(f"| `{label}` | {side} | {row['fwd_ms']:.1f} | {row['train_ms']:.1f} | {growth} | "
                         f"{row['peak_mib']:.0f} | {row['peak_x']:.1f} |")
            before = row["train_ms"]
    lines += ["", "| side | cheapest forward + backward | time | least memory | peak MiB |", "|---:|---|---:|---|---:|"]
    for side in args.sides:
        done = {label: results[(label, side)] for label in args.layers if results[(label, side)] is not None}
        if not done:
            continue
        fast = min(done, key=lambda k: done[k]["train_ms"])
        small = min(done, key=lambda k: done[k]["peak_mib"])
        lines.append(f"| {side} | `{fast}` | {done[fast]['train_ms']:.1f} ms | `{small}` | "
                     f"{done[small]['peak_mib']:.0f} |")
    lines += ["", "layers: " + "; ".join(f"`{label}` = {LAYERS[label][2]}" for label in args.layers)]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", nargs="+", type=positive_int, default=[56, 112, 224])
    parser.add_argument("--layers", nargs="+", choices=list(LAYERS), default=list(LAYERS))
    parser.add_argument("--channels", type=positive_int, default=64)
    parser.add_argument("--batch", type=positive_int, default=1)
    parser.add_argument("--reps", type=positive_int, default=3)
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--max-seconds", type=float, default=60.0,
                        help="skip a cell whose forward + backward is predicted above this (default 60)")
    parser.add_argument("--markdown", type=Path, help="also write the tables here")
    args = parser.parse_args()
    if args.channels % 8:
        parser.error(f"--channels must divide into 8 heads, got {args.channels}")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    results, header = run(args)
    text = f"{header}\n\n{tables(results, args)}\n\n({time.perf_counter() - start:.0f} s in all)\n"
    print("\n" + text)
    if args.markdown:
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
