"""Speed and memory measurement of layers and models: ``visionattn bench``.

Timings are medians over repetitions after warm-up. Peak memory is the most memory allocated at once during one
call, above what was allocated before it: on CUDA from the caching allocator's peak statistics, on the CPU by
replaying the allocations and frees that ``torch.profiler`` records, op by op, in time order. Multiply-adds are
per image, as in ``visionattn info`` and ``visionattn compare``.
"""

from __future__ import annotations

import contextlib
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from visionattn.complexity import check_shape, count_macs, count_params
from visionattn.errors import UsageError, check_names, check_non_negative, check_positive
from visionattn.formats import autocast, check_precision, to_channels_last
from visionattn.registry import ATTN, create_attn_for_size

__all__ = ["check_device", "median_ms", "peak_memory_bytes",
           "BenchResult", "bench_module", "bench_layers", "bench_models", "write_report"]


def check_device(device: str, argument: str = "device") -> torch.device:
    """The ``torch.device`` for ``device`` (auto, cpu, cuda, cuda:N, mps) when this machine has it, else a
    :class:`UsageError` that says why (the trainer's checks: one rule for every command)."""
    from visionattn.distributed import check_device_available, resolve_device
    from visionattn.recipe import check_device_syntax

    check_device_available(check_device_syntax(device, argument), argument)
    return resolve_device(device)


# What torch's profiler library (Kineto) logs on every profile: "USDT:<time> <pid>:<tid>
# SyncActivityProfilerHandler.cpp:52] profiler_start" (and STAGE lines at higher log levels). Not errors.
_PROFILER_CHATTER = re.compile(rb"^(USDT|STAGE):\S+ \S+ \d+:\d+ \w+\.cpp:\d+\] ")


@contextlib.contextmanager
def _quiet_profiler() -> Iterator[None]:
    """Drop the profiler library's own log lines, which it writes straight to file descriptor 2.

    Only around the profiled call: fd 2 goes to a temporary file, then is restored (also on an exception) and every
    other line written meanwhile is passed on to stderr, so a real error or warning stays visible.
    """
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to protect
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        sys.stderr.flush()
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [line for line in tmp.read().splitlines(keepends=True) if not _PROFILER_CHATTER.match(line)]
            if kept:
                os.write(2, b"".join(kept))


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
    with _quiet_profiler(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    current = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        current += event.self_cpu_memory_usage
        peak = max(peak, current)
    return peak


@dataclass
class BenchResult:
    """One benchmarked module: ``macs`` per image; times per batch of ``batch`` images; peaks in MiB."""

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


def _check_counts(warmup: int, reps: int, batch: int | None = None) -> None:
    check_non_negative("warmup", warmup)
    check_positive("reps", reps)
    if batch is not None:
        check_positive("batch", batch)


def bench_module(name: str, module: nn.Module, x: torch.Tensor, warmup: int = 2, reps: int = 5,
                 precision: str = "fp32", channels_last: bool = False) -> BenchResult:
    """Forward (eval, no grad) and one training step (train mode, SGD) of ``module`` on ``x``.

    ``precision="bf16"`` runs both under bfloat16 autocast, as the trainer does; ``channels_last`` converts the
    module and ``x`` to that memory format first (4-D inputs only). Multiply-adds are counted for one image.
    """
    _check_counts(warmup, reps)
    if x.dim() < 1 or x.shape[0] < 1:
        raise UsageError(f"x: got shape {tuple(x.shape)}, needed a batch of at least one input")
    mixed = autocast(x.device.type, check_precision(precision))
    device = x.device
    module = module.to(device)
    macs = count_macs(module, x[:1])
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
    # The measured step starts without gradients: freeing the previous step's inside the profiled call would free
    # blocks the profiler never saw allocated (it then warns, and cannot subtract them from the running total).
    module.zero_grad(set_to_none=True)
    x.grad = None
    train_peak = peak_memory_bytes(train_step, device)
    x.requires_grad_(False)
    return BenchResult(name, count_params(module), macs, forward_ms, train_ms, forward_peak / 2**20,
                       train_peak / 2**20, x.shape[0])


def _check_names(names: Sequence[str], argument: str, kind: str, choices: list[str]) -> None:
    if not names:
        raise UsageError(f"{argument}: got no names, needed at least one {kind} name")
    check_names(argument, kind, names, choices)


def bench_layers(names: list[str], shape: tuple[int, int, int], batch: int = 8, device: str = "cpu",
                 warmup: int = 2, reps: int = 5, precision: str = "fp32",
                 channels_last: bool = False) -> list[BenchResult]:
    """Benchmark registered attention layers on a (batch, C, H, W) feature map."""
    c, h, w = check_shape(shape, "shape")
    _check_counts(warmup, reps, batch)
    _check_names(names, "names", "attention layer", ATTN.names())
    x = torch.randn(batch, c, h, w, device=check_device(device))
    results = []
    for name in names:
        layer = create_attn_for_size(name, c, (h, w))
        results.append(bench_module(name, layer, x, warmup, reps, precision, channels_last))
    return results


def bench_models(names: list[str], shape: tuple[int, int, int], batch: int = 8, num_classes: int | None = None,
                 device: str = "cpu", warmup: int = 2, reps: int = 5, precision: str = "fp32",
                 channels_last: bool = False) -> list[BenchResult]:
    """Benchmark registered models on a (batch, C, H, W) image batch (each built for that input size).

    ``num_classes`` left as ``None``: each model's own (10 for the small-image ResNets, 1000 for ImageNet's).
    """
    from visionattn.info import build_for_input
    from visionattn.registry import MODELS

    shape = check_shape(shape, "shape")
    _check_counts(warmup, reps, batch)
    _check_names(names, "names", "model", MODELS.names())
    kwargs = {} if num_classes is None else {"num_classes": check_positive("num_classes", num_classes)}
    x = torch.randn(batch, *shape, device=check_device(device))
    results = []
    for name in names:
        model, _ = build_for_input(name, shape, **kwargs)
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
            f"medians of {getattr(args, 'reps', '?')} runs after {getattr(args, 'warmup', '?')} warm-up runs; "
            "macs per image, _ms per batch")
    return head + "\n\n" + format_table(rows, _COLUMNS, human=("params", "macs"))
