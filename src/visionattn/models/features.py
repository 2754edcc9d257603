"""The feature maps of a network's stages, as timm's ``features_only=True`` gives them.

``create_model(name, features_only=True, out_indices=(1, 2, 3, 4))`` returns a :class:`FeatureNet`: the
network's modules up to the last stage asked for, under the same names (so the same checkpoints load into it,
less the classifier), whose forward pass returns the list of those stages' outputs. ``feature_info`` lists,
for each output, the module it comes from, its channel count and its reduction (input size / output size);
for a ResNet index 0 is the stem's ``act1`` (reduction 2, or 1 for small images) and 1..N the stages.

A network whose forward pass is not its children in order (a ViT: class token, position embeddings, tokens
rather than maps) says how to get its features with timm's ``forward_intermediates(x, indices, stop_early=True,
intermediates_only=True)``, returning the maps of those ``feature_info`` entries; its ``feature_info`` names
entries of a container child (``blocks.3``). The :class:`FeatureNet` then keeps the network's own parameters and
its children up to that container, the container cut after the last entry asked for, under the same names.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from visionattn.errors import UsageError
from visionattn.layers.helpers import check_images

__all__ = ["FeatureNet", "resolve_out_indices"]


def resolve_out_indices(out_indices: Sequence[int] | None, count: int,
                        argument: str = "out_indices") -> tuple[int, ...]:
    """``out_indices`` as sorted non-negative positions into a ``count``-entry ``feature_info`` (negative ones
    count from the end, as in Python); None takes them all."""
    if out_indices is None:
        return tuple(range(count))
    if isinstance(out_indices, (str, bytes)) or not isinstance(out_indices, Sequence) or not out_indices:
        raise UsageError(f"{argument} must be a non-empty sequence of ints, got {out_indices!r}")
    resolved = []
    for i in out_indices:
        if isinstance(i, bool) or not isinstance(i, int) or not -count <= i < count:
            raise UsageError(f"{argument}: got {i!r}, needed an int in [{-count}, {count - 1}] (this network has "
                             f"{count} feature outputs)")
        resolved.append(i % count)
    if len(set(resolved)) != len(resolved):
        raise UsageError(f"{argument}: {tuple(out_indices)} names one output twice")
    return tuple(sorted(resolved))


class FeatureNet(nn.Module):
    """A network cut after its last requested stage; returns the requested stages' outputs.

    Args:
        model: a network whose forward pass is its top-level children in order and whose ``feature_info``
            entries name top-level children (every ResNet of this library), or one with a
            ``forward_intermediates`` method (a ViT; see the module docstring).
        out_indices: which entries of ``model.feature_info`` to return (default: all).

    Shape:
        - Input: (B, C, H, W)
        - Output: a list, entry i of shape (B, ``feature_info[i]["num_chs"]``, H / r_i, W / r_i) with
          r_i = ``feature_info[i]["reduction"]`` (rounded up)
    """

    def __init__(self, model: nn.Module, out_indices: Sequence[int] | None = None) -> None:
        super().__init__()
        info: list[dict[str, Any]] = list(getattr(model, "feature_info", []))
        if not info:
            raise UsageError(f"features_only: {type(model).__name__} lists no feature outputs (feature_info)")
        self.out_indices = resolve_out_indices(out_indices, len(info))
        self.feature_info = [{**info[i], "index": i} for i in self.out_indices]
        wanted = [f["module"] for f in self.feature_info]
        # the network itself, not registered (its kept parts are, below): forward_intermediates runs through it
        self.__dict__["_intermediates"] = getattr(model, "forward_intermediates", None)
        if self._intermediates is not None:
            for name, param in model.named_parameters(recurse=False):
                self.register_parameter(name, param)
        names = [name for name, _ in model.named_children()]
        tops = [w.split(".", 1)[0] for w in wanted]
        missing = [w for w, t in zip(wanted, tops) if t not in names]
        if missing:
            raise UsageError(f"features_only: feature_info names {missing[0]!r}, which is not a part of "
                             f"{type(model).__name__} (its top-level modules: {', '.join(names)})")
        last = max(names.index(t) for t in tops)
        for name, child in list(model.named_children())[:last + 1]:
            self.add_module(name, _cut(child, [w.split(".", 1)[1] for w, t in zip(wanted, tops)
                                               if t == name and "." in w]))
        self._wanted = frozenset(wanted)
        self.in_chans = getattr(model, "in_chans", None)
        if hasattr(model, "pretrained_cfg"):
            self.pretrained_cfg = model.pretrained_cfg
        self.input_size = getattr(model, "input_size", None)

    def channels(self) -> list[int]:
        return [f["num_chs"] for f in self.feature_info]

    def reductions(self) -> list[int]:
        return [f["reduction"] for f in self.feature_info]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.in_chans is not None:
            check_images(x, self.in_chans)
        if self._intermediates is not None:
            return list(self._intermediates(x, list(self.out_indices), stop_early=True, intermediates_only=True))
        out = []
        for name, module in self.named_children():
            x = module(x)
            if name in self._wanted:
                out.append(x)
        return out


def _cut(child: nn.Module, inner: list[str]) -> nn.Module:
    """``child``, or for a Sequential whose entries are asked for (``blocks.3``), its entries up to the last one."""
    if not inner or not isinstance(child, nn.Sequential) or not all(i.isdigit() for i in inner):
        return child
    return nn.Sequential(*list(child)[:max(int(i) for i in inner) + 1])
