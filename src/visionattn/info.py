"""What ``visionattn info MODEL`` prints: parameters, multiply-adds and a per-stage table of a registered model.

Multiply-adds come from ``torch.utils.flop_counter`` (see :mod:`visionattn.complexity`): convolutions and
matrix products, one eval-mode forward pass of one image; attention's own (QK^T and AV, or the linear kernel's
products) are shown beside them (``attn_macs``), on the fused path as on the explicit one. The stages are the
model's top-level children, with a top-level ``nn.Sequential`` of composite parts opened one level, or the groups
a model names itself (``info_groups()``: a ResNet's stem, layer1 ... layerN and head; a ViT's embed, blocks.i
and head).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from visionattn.complexity import MacCounter, check_shape, count_params, format_table
from visionattn.errors import UsageError, check_positive
from visionattn.registry import create_model, get_model_entry

__all__ = ["ModelInfo", "build_for_input", "model_info", "format_info", "describe"]

InputSize = tuple[int, int, int]


@dataclass
class ModelInfo:
    """Totals and per-stage rows (``name``, ``output``, ``params``, ``macs``, ``attn_macs``) for one input size;
    ``attn_macs`` is the part of ``macs`` that attention's products make."""

    input_size: InputSize
    params: int
    macs: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    attn_macs: int = 0


def _accepts(factory: Any, name: str) -> bool:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def build_for_input(name: str, input_size: InputSize | None = None, **kwargs: Any) -> tuple[nn.Module, InputSize]:
    """Build registered model ``name`` for ``input_size`` (C, H, W), or for its own default input.

    The model's ``in_chans`` and ``img_size`` are set from ``input_size`` where its factory takes them (a
    layer such as GE-theta's global gather is built for one feature-map size). Returns the model and the
    input size to feed it.
    """
    entry = get_model_entry(name)
    if kwargs.get("num_classes") is not None:
        check_positive("num_classes", kwargs["num_classes"])
    if input_size is not None:
        input_size = check_shape(input_size)
        if _accepts(entry.factory, "in_chans"):
            kwargs.setdefault("in_chans", input_size[0])
        if _accepts(entry.factory, "img_size"):
            kwargs.setdefault("img_size", input_size[1:])
    model = create_model(name, **kwargs)
    if getattr(model, "generative", False):  # Image GPT: one palette token per pixel of its configured image
        size = (1, *model.image_size)
        if input_size is not None and tuple(input_size) != size:
            raise UsageError(f"--input: got {'x'.join(map(str, input_size))}, but {name} reads {size[1]}x{size[2]} "
                             "images, one palette token per pixel: its configuration (seq_len) fixes the size; "
                             "leave --input out")
        return model, size  # type: ignore[return-value]
    if input_size is None:
        input_size = tuple(getattr(model, "input_size", (3, 224, 224)))  # type: ignore[assignment]
    return model, input_size  # type: ignore[return-value]


def _example(model: nn.Module, input_size: InputSize) -> torch.Tensor:
    """One input for the count: an image, or for a generative model the tokens of one image."""
    if getattr(model, "generative", False):
        return torch.zeros(1, input_size[1] * input_size[2], dtype=torch.long, device=_device(model))
    return torch.randn(1, *input_size, device=_device(model))


def _stage_modules(model: nn.Module) -> list[tuple[str, list[nn.Module]]]:
    """The rows: a model's own ``info_groups()`` (a ResNet: stem, layer1 ... layerN, head), else its top-level
    children with a top-level ``nn.Sequential`` of composite parts, or any ``nn.ModuleList`` (a list is never
    called itself: its parts are), opened one level."""
    groups = getattr(model, "info_groups", None)
    if callable(groups):
        return [(name, list(modules)) for name, modules in groups()]
    rows: list[tuple[str, list[nn.Module]]] = []
    for name, child in model.named_children():
        parts = list(child.named_children()) if isinstance(child, (nn.Sequential, nn.ModuleList)) else []
        if isinstance(child, nn.ModuleList) or parts and all(any(True for _ in p.children()) for _, p in parts):
            rows += [(f"{name}.{n}", [p]) for n, p in parts]
        else:
            rows.append((name, [child]))
    return rows


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return torch.device("cpu") if param is None else param.device


@torch.no_grad()
def model_info(model: nn.Module, input_size: InputSize) -> ModelInfo:
    """Parameters and multiply-adds of ``model`` for one (1, C, H, W) input, in total and per stage.

    The input is made on the model's device; a model built on the ``meta`` device is counted without any
    arithmetic (the counts depend on shapes only).
    """
    stages = _stage_modules(model)
    rows = [{"name": n, "output": "-", "params": sum(count_params(m) for m in ms), "macs": 0, "attn_macs": 0}
            for n, ms in stages]
    counter = MacCounter(model)
    start: dict[int, tuple[int, int]] = {}

    def pre_hook(i: int):
        return lambda module, args: start.__setitem__(i, (counter.total(), counter.attention()))

    def post_hook(i: int):
        def hook(module: nn.Module, args: Any, out: Any) -> None:
            rows[i]["macs"] += counter.total() - start[i][0]
            rows[i]["attn_macs"] += counter.attention() - start[i][1]
            if isinstance(out, torch.Tensor):
                rows[i]["output"] = "x".join(str(s) for s in out.shape[1:])
        return hook

    handles = []
    for i, (_, modules) in enumerate(stages):  # a group runs from its first module's input to its last's output
        handles += [modules[0].register_forward_pre_hook(pre_hook(i)), modules[-1].register_forward_hook(post_hook(i))]
    was_training = model.training
    model.eval()
    try:
        with counter:
            model(_example(model, input_size))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return ModelInfo(input_size, count_params(model), counter.total(), rows, counter.attention())


def format_info(name: str, info: ModelInfo) -> str:
    """The text ``visionattn info`` prints."""
    entry = get_model_entry(name)
    c, h, w = info.input_size
    head = [f"{name}: {entry.description}" + (f" ({entry.paper})" if entry.paper else ""),
            f"input 1x{c}x{h}x{w}: {info.params:,} parameters ({info.params / 1e6:.3f}M), "
            f"{info.macs / 1e9:.3f} GMACs, {info.attn_macs / 1e9:.3f} of them in attention (attn_macs)",
            ""]
    table = format_table(info.rows, ["name", "output", "params", "macs", "attn_macs"],
                         human=("params", "macs", "attn_macs"))
    return "\n".join([*head, table])


def describe(name: str, input_size: InputSize | None = None, **kwargs: Any) -> str:
    """Build ``name`` (for ``input_size``, else its default input) and return :func:`format_info`'s text."""
    model, size = build_for_input(name, input_size, **kwargs)
    return format_info(name, model_info(model, size))
