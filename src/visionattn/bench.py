"""Speed and memory measurement of layers and models: ``visionattn bench``.

Timings are medians over repetitions after warm-up. Peak memory is the most memory allocated at once during one
call, above what was allocated before it: on CUDA from the caching allocator's peak statistics, on the CPU by
replaying the allocations and frees that ``torch.profiler`` records, op by op, in time order.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from visionattn.complexity import count_macs, count_params
from visionattn.formats import autocast, to_channels_last
from visionattn.registry import create_attn_for_size

__all__ = ["parse_shape", "median_ms", "peak_memory_bytes", "BenchResult", "bench_module", "bench_layers",
           "bench_models", "write_report"]


def parse_shape(text: str) -> tuple[int, ...]:
    """``"3x224x224"`` -> ``(3, 224, 224)``; a clear ValueError otherwise."""
    try:
        shape = tuple(int(p) for p in text.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"input shape must look like CxHxW with positive integers (e.g. 3x224x224), got {text!r}")
    return shape


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn: Callable[[], object], device: torch.device, warmup: int = 2, reps: int = 5) -> float:
    """Median wall time of ``fn`` in milliseconds over ``reps`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def peak_memory_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes allocated during one call of ``fn``, above the allocation when it starts."""
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    current = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        current += event.self_cpu_memory_usage
        peak = max(peak, current)
    return peak


@dataclass
class BenchResult:
    name: str
    params: int
    macs: int
    forward_ms: float
    train_ms: float
    forward_peak_mb: float
    train_peak_mb: float
    batch: int

    @property
    def forward_images_per_s(self) -> float:
        return self.batch / self.forward_ms * 1e3

    @property
    def train_images_per_s(self) -> float:
        return self.batch / self.train_ms * 1e3

    def row(self) -> dict[str, object]:
        row = asdict(self)
        row["forward_img_s"] = round(self.forward_images_per_s, 1)
        row["train_img_s"] = round(self.train_images_per_s, 1)
        return row


def bench_module(name: str, module: nn.Module, x: torch.Tensor, warmup: int = 2, reps: int = 5,
                 precision: str = "fp32", channels_last: bool = False) -> BenchResult:
    """Forward (eval, no grad) and one training step (train mode, SGD) of ``module`` on ``x``.

    ``precision="bf16"`` runs both under bfloat16 autocast, as the trainer does; ``channels_last`` converts the
    module and ``x`` to that memory format first (4-D inputs only).
    """
    mixed = autocast(x.device.type, precision)
    device = x.device
    module = module.to(device)
    macs = count_macs(module, x[:1]) * x.shape[0]
    if channels_last:
        module = to_channels_last(module)
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(module.parameters(), lr=1e-4, momentum=0.9) if count_params(module) else None
    target = None

    @torch.no_grad()
    def forward() -> None:
        with mixed:
            module(x)

    def train_step() -> None:
        nonlocal target
        with mixed:
            out = module(x).float()
        if target is None:
            target = torch.randn(out.shape, device=device, dtype=out.dtype)
        loss = (out * target).mean()
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if optimizer is not None:
            optimizer.step()

    module.eval()
    forward_ms = median_ms(forward, device, warmup, reps)
    forward_peak = peak_memory_bytes(forward, device)
    module.train()
    x.requires_grad_(True)  # layers sit inside networks: their backward also computes the input's gradient
    train_ms = median_ms(train_step, device, warmup, reps)
    train_peak = peak_memory_bytes(train_step, device)
    x.requires_grad_(False)
    return BenchResult(name, count_params(module), macs, forward_ms, train_ms, forward_peak / 2**20,
                       train_peak / 2**20, x.shape[0])


def bench_layers(names: list[str], shape: tuple[int, int, int], batch: int = 8, device: str = "cpu",
                 warmup: int = 2, reps: int = 5, precision: str = "fp32",
                 channels_last: bool = False) -> list[BenchResult]:
    """Benchmark registered attention layers on a (batch, C, H, W) feature map."""
    c, h, w = shape
    x = torch.randn(batch, c, h, w, device=device)
    results = []
    for name in names:
        layer = create_attn_for_size(name, c, (h, w))
        results.append(bench_module(name, layer, x, warmup, reps, precision, channels_last))
    return results


def bench_models(names: list[str], shape: tuple[int, int, int], batch: int = 8, num_classes: int = 1000,
                 device: str = "cpu", warmup: int = 2, reps: int = 5, precision: str = "fp32",
                 channels_last: bool = False) -> list[BenchResult]:
    """Benchmark registered models on a (batch, C, H, W) image batch (each built for that input size)."""
    from visionattn.info import build_for_input

    x = torch.randn(batch, *shape, device=device)
    results = []
    for name in names:
        model, _ = build_for_input(name, shape, num_classes=num_classes)
        results.append(bench_module(name, model, x, warmup, reps, precision, channels_last))
    return results


_COLUMNS = ["name", "params", "macs", "forward_ms", "forward_img_s", "train_ms", "train_img_s", "forward_peak_mb",
            "train_peak_mb"]


def write_report(results: list[BenchResult], shape: tuple[int, ...], args: object, csv_path: str | None) -> str:
    """The Markdown table of ``results`` (returned) and, if ``csv_path`` is given, the same rows as CSV."""
    import csv

    from visionattn.complexity import format_table

    rows = []
    for r in results:
        row = r.row()
        for key in ("forward_ms", "train_ms", "forward_peak_mb", "train_peak_mb"):
            row[key] = round(row[key], 1)
        rows.append(row)
    if csv_path:
        with open(csv_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    batch = results[0].batch if results else 0
    precision = getattr(args, "precision", "fp32")
    if getattr(args, "channels_last", False):
        precision += ", channels-last"
    head = (f"batch {batch}, input {'x'.join(map(str, shape))}, {precision}, {torch.get_num_threads()} threads; "
            f"medians of {getattr(args, 'reps', '?')} runs after {getattr(args, 'warmup', '?')} warm-up runs")
    return head + "\n\n" + format_table(rows, _COLUMNS, human=("params", "macs"))
