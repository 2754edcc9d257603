"""The report's speed table: the attention layer of each compared model, timed alone on one feature map.

Each model of a comparison that plugs an attention layer into its blocks (its registry defaults name it:
``attn="se"``, with the ``attn_kwargs`` the model uses) gets one row; a plain 3x3 convolution at the same size is
the reference row (every basic block has two, and SK replaces one). Times are :func:`visionattn.bench.bench_module`'s
medians: forward (eval, no grad) and forward+backward+SGD step, per batch.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visionattn.bench import bench_module
from visionattn.complexity import check_shape
from visionattn.errors import check_names, check_positive
from visionattn.registry import MODELS, create_attn_for_size

__all__ = ["SpeedTable", "model_layers", "measure_layer_speed", "machine_name", "REFERENCE"]

REFERENCE = "conv3x3 (reference)"


@dataclass
class SpeedTable:
    """Timed layers: ``rows`` of ``{"layer", "model", "params", "forward_ms", "train_ms"}`` (ms per batch)."""

    rows: list[dict[str, Any]]
    shape: tuple[int, int, int]
    batch: int
    reps: int
    threads: int
    machine: str


def machine_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else :func:`platform.processor`) and its core count."""
    name = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    name = name or platform.processor() or platform.machine() or "unknown CPU"
    return f"{name}, {_cores()} cores"


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def model_layers(models: list[str]) -> dict[str, tuple[str, dict[str, Any]]]:
    """``model -> (layer name, layer keywords)`` for the models that plug a layer in (the plain ones are left out)."""
    check_names("models", "model", models, MODELS.names())
    layers = {}
    for model in models:
        defaults = MODELS.get(model).defaults
        if defaults.get("attn"):
            layers[model] = (defaults["attn"], dict(defaults.get("attn_kwargs") or {}))
    return layers


def measure_layer_speed(models: list[str], shape: tuple[int, int, int] = (32, 14, 14), batch: int = 128,
                        reps: int = 5) -> SpeedTable:
    """Time the attention layer of each of ``models`` (:func:`model_layers`) and a 3x3 convolution on a
    (``batch``, C, H, W) feature map; medians of ``reps`` after one warm-up, on the CPU in fp32.

    The default, 32 x 14 x 14 at batch 128, is ResNet-20's middle stage on 28 x 28 images at the demo's batch.
    """
    c, h, w = check_shape(shape, "shape")
    check_positive("batch", batch)
    check_positive("reps", reps)
    layers = model_layers(models)
    x = torch.randn(batch, c, h, w, generator=torch.Generator().manual_seed(0))
    built: list[tuple[str, str, nn.Module]] = [(REFERENCE, "", nn.Conv2d(c, c, 3, padding=1, bias=False))]
    built += [(name, model, create_attn_for_size(name, c, (h, w), **kwargs))
              for model, (name, kwargs) in layers.items()]
    rows = []
    for name, model, layer in built:
        res = bench_module(name, layer, x, warmup=1, reps=reps)
        rows.append({"layer": name, "model": model, "params": res.params, "forward_ms": res.forward_ms,
                     "train_ms": res.train_ms})
    return SpeedTable(rows, (c, h, w), batch, reps, torch.get_num_threads(), machine_name())
