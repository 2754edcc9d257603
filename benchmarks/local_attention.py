"""Speed and memory of SASA local attention: the fused kernel, the unfold and gather references, a 3x3 conv.

For each shape (batch 8, k = 7, 8 heads, fp32) it times the whole layer (its q/k/v projection included),
forward and forward + backward (the input's gradient too, as inside a network), against two pure-PyTorch
versions with the same projection and embeddings: ``unfold`` (the common open implementations' formulation:
unfolded zero-padded key and value windows, the q x k products materialised, "zero" border;
``local_attention_unfold``) and the library's gather reference (``local_attention_reference``, "mask"
border), and against a same-shape 3x3 convolution. It prints the issue's targets as ratios measured in this
one run:

- forward + backward at least 20x faster than the ``unfold`` version (the speed-up over the gather
  reference is printed beside it);
- forward + backward no slower than the 3x3 convolution (ratio <= 1.0);
- peak memory over forward + backward at most 8x the input tensor: for the kernel, the tensors' peak
  (profiler) plus the kernel's own scratch peak (its buffers count their bytes; the sum is an upper bound).

``--paths`` also times the layer with each of the kernel's two float paths forced (``VISIONATTN_KERNEL_PATH``).

Achieved GFLOP/s (``torch.utils.flop_counter``, with the kernel's registered formulas) print beside
``torch.mm``'s on a 1024^3 product. Timings are medians; on a shared machine compare the ratios, not the ms.

    python benchmarks/local_attention.py [--reps 5] [--shapes 64x56 128x28] [--threads 2] [--breakdown] [--paths]
"""

from __future__ import annotations

import argparse
import os

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from visionattn.bench import median_ms, peak_memory_bytes
from visionattn.kernels.local_attention import BORDER_CODES, kernel_available, kernel_scratch_peak_bytes
from visionattn.layers.local_attention import LocalSelfAttention2d, _project
from visionattn.layers.local_attention_ref import local_attention_unfold

SHAPES = ("64x56", "128x28", "256x14", "512x7")
CPU = torch.device("cpu")


class UnfoldSASA(nn.Module):
    """``layer``'s projection and relative embeddings, attention by ``local_attention_unfold``."""

    def __init__(self, layer: LocalSelfAttention2d) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        q, k, v = _project(layer.qkv, x).chunk(3, dim=1)
        return local_attention_unfold(q, k, v, layer.rel.table(), layer.kernel_size, layer.scale)


def flops(fn) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def measure(module: nn.Module, x: torch.Tensor, grad: torch.Tensor, reps: int, memory: bool = True,
            scratch: bool = False) -> dict:
    """Times (ms), GFLOP/s and peak memory over forward + backward as a multiple of the input; ``scratch``
    adds the C++ kernel's scratch peak to the profiler's."""
    def forward() -> None:
        with torch.no_grad():
            module(x)

    def train() -> None:
        x.grad = None
        module.zero_grad(set_to_none=True)
        module(x).backward(grad)

    row = {"fwd_ms": median_ms(forward, CPU, 1, reps), "train_ms": median_ms(train, CPU, 1, reps)}
    row["train_gflops"] = flops(train) / row["train_ms"] / 1e6
    if memory:
        kernel_scratch_peak_bytes(reset=True)
        peak = peak_memory_bytes(train, CPU) + (kernel_scratch_peak_bytes() if scratch else 0)
        row["peak_x"] = peak / (x.numel() * x.element_size())
    else:
        row["peak_x"] = float("nan")
    return row


def breakdown(layer: LocalSelfAttention2d, x: torch.Tensor, reps: int) -> dict:
    """Where the layer's time goes: the kernel's forward and backward ops alone, and the q/k/v projection's
    forward + backward (input and weight gradients)."""
    ops = torch.ops.visionattn
    args = (layer.heads, layer.kernel_size, BORDER_CODES[layer.border], layer.scale)
    x = x.detach().requires_grad_(True)
    with torch.no_grad():
        qkv, (rows, cols) = _project(layer.qkv, x), layer.rel()
        out, lse = ops.local_attention_fwd(qkv, rows, cols, *args)
    grad_out, grad_qkv = torch.randn_like(out), torch.randn_like(qkv)

    def project() -> None:
        x.grad = None
        layer.zero_grad(set_to_none=True)
        _project(layer.qkv, x).backward(grad_qkv)

    return {"kernel_fwd_ms": median_ms(lambda: ops.local_attention_fwd(qkv, rows, cols, *args), CPU, 1, reps),
            "kernel_bwd_ms": median_ms(lambda: ops.local_attention_bwd(grad_out, qkv, rows, cols, out, lse, *args), CPU,
                                       1, reps),
            "projection_ms": median_ms(project, CPU, 1, reps)}


def compare_paths(shape: str, batch: int, reps: int) -> dict:
    """The layer's forward + backward with each float path of the kernel forced, interleaved three times
    (the median of the three medians)."""
    c, s = (int(v) for v in shape.split("x"))
    layer = LocalSelfAttention2d(c, c, kernel_size=7, heads=8, impl="kernel")
    x, grad = torch.randn(batch, c, s, s, requires_grad=True), torch.randn(batch, c, s, s)

    def train() -> None:
        x.grad = None
        layer.zero_grad(set_to_none=True)
        layer(x).backward(grad)

    times = {"rows": [], "lanes": []}
    before = os.environ.get("VISIONATTN_KERNEL_PATH")
    try:
        for _ in range(3):
            for path in times:
                os.environ["VISIONATTN_KERNEL_PATH"] = path
                times[path].append(median_ms(train, CPU, 1, reps))
    finally:
        if before is None:
            os.environ.pop("VISIONATTN_KERNEL_PATH", None)
        else:
            os.environ["VISIONATTN_KERNEL_PATH"] = before
    return {path: sorted(t)[1] for path, t in times.items()}


def mm_gflops(reps: int) -> float:
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    return 2 * 1024**3 / median_ms(lambda: torch.mm(a, b), CPU, 2, reps) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), help="CxS feature maps (S x S)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--ref-reps", type=int, default=3, help="repetitions of the two slow references")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--breakdown", action="store_true", help="also time the kernel's forward and backward "
                        "ops alone and the projection's forward + backward")
    parser.add_argument("--paths", action="store_true", help="also time the layer with the kernel's row path and "
                        "its lanes path forced")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not kernel_available():
        raise SystemExit("the C++ kernel could not be built here; nothing to benchmark")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, k=7, 8 heads, fp32; "
          f"torch.mm 1024^3: {mm_gflops(args.reps):.0f} GFLOP/s")
    header = ("| shape | kernel fwd / fwd+bwd ms | unfold fwd / fwd+bwd ms | gather ref fwd / fwd+bwd ms "
              "| conv3x3 fwd / fwd+bwd ms | kernel GFLOP/s | speed-up vs unfold / gather | vs conv "
              "| peak mem (x input): kernel / unfold / gather |")
    print(header)
    print("|" + "|".join("---" for _ in range(header.count("|") - 1)) + "|")
    met = []
    for shape in args.shapes:
        c, s = (int(v) for v in shape.split("x"))
        torch.manual_seed(0)
        x = torch.randn(args.batch, c, s, s, requires_grad=True)
        grad = torch.randn(args.batch, c, s, s)
        fast = LocalSelfAttention2d(c, c, kernel_size=7, heads=8, impl="kernel")
        ref = LocalSelfAttention2d(c, c, kernel_size=7, heads=8, impl="reference")
        conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
        # the kernel and the convolution first: after the references' gigabyte of temporaries the allocator's
        # state made the convolution up to 1.8x slower in some runs
        k = measure(fast, x, grad, args.reps, scratch=True)
        v = measure(conv, x, grad, args.reps, memory=False)
        u = measure(UnfoldSASA(ref), x, grad, args.ref_reps)
        r = measure(ref, x, grad, args.ref_reps)
        speedup, vs_conv = u["train_ms"] / k["train_ms"], k["train_ms"] / v["train_ms"]
        met.append((shape, speedup >= 20, vs_conv <= 1.0, k["peak_x"] <= 8))
        print(f"| {shape}x{s} | {k['fwd_ms']:.1f} / {k['train_ms']:.1f} | {u['fwd_ms']:.0f} / {u['train_ms']:.0f} "
              f"| {r['fwd_ms']:.0f} / {r['train_ms']:.0f} | {v['fwd_ms']:.1f} / {v['train_ms']:.1f} "
              f"| {k['train_gflops']:.1f} | {speedup:.1f}x / {r['train_ms'] / k['train_ms']:.1f}x | {vs_conv:.2f} "
              f"| {k['peak_x']:.1f} / {u['peak_x']:.0f} / {r['peak_x']:.0f} |", flush=True)
    if args.breakdown:
        print("\n| shape | kernel fwd ms | kernel bwd ms | projection fwd+bwd ms |\n|---|---|---|---|")
        for shape in args.shapes:
            c, s = (int(v) for v in shape.split("x"))
            layer = LocalSelfAttention2d(c, c, kernel_size=7, heads=8, impl="kernel")
            b = breakdown(layer, torch.randn(args.batch, c, s, s), args.reps)
            print(f"| {shape}x{s} | {b['kernel_fwd_ms']:.1f} | {b['kernel_bwd_ms']:.1f} | {b['projection_ms']:.1f} |",
                  flush=True)
    if args.paths:
        print("\n| shape | layer fwd+bwd ms, row path | lanes path | rows / lanes |\n|---|---|---|---|")
        for shape in args.shapes:
            times = compare_paths(shape, args.batch, args.reps)
            print(f"| {shape} | {times['rows']:.1f} | {times['lanes']:.1f} | {times['rows'] / times['lanes']:.2f} |",
                  flush=True)
    print()
    for shape, fast_enough, conv_speed, memory in met:
        verdict = lambda ok: "met" if ok else "NOT met"  # noqa: E731
        print(f"{shape}: >= 20x unfold {verdict(fast_enough)}; <= 1.0x conv {verdict(conv_speed)}; "
              f"<= 8x input memory {verdict(memory)}")


if __name__ == "__main__":
    main()
