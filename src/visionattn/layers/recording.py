"""One recorder for what every attention layer computed: channel gates, spatial maps, branch weights and attention
matrices, kept by module name for pictures (:mod:`visionattn.show`).

A layer that has something worth looking at is :class:`Recordable`: it names its ``record_kind`` and, in its
``forward``, hands the tensor it applied to its ``recorder`` when one is attached::

    if self.recorder is not None:
        self.recorder(self, gate)

The check is one attribute read, so with no recorder attached nothing is kept and nothing is computed. A tensor
that a fused path never forms (the attention matrix of the flash kernel, SASA's window weights in the C++
kernel) is recomputed explicitly from the same inputs only while a recorder is attached; the output always comes
from the layer's own path, so it is unchanged.

The kinds, and the tensor each hands over (exactly the one the layer applied, detached):

===================== ================================================================================================
``"channel"``         the channel gate that multiplies the input: (B, C, 1, 1) for SE, its variants, ECA, CBAM's
                      channel part, gather-excite with the global extent; (B, C, h, w) for gather-excite with a local
                      extent (the gate before it is resized to the map)
``"spatial"``         the spatial gate: (B, 1, H, W) for CBAM's spatial part; BAM's 3-D map sigmoid(M_c + M_s),
                      (B, C, H, W)
``"branch"``          the weights over branches or experts: (B, M, C, 1, 1) for selective kernel (a softmax over
                      the M paths per channel), (B, R, C, 1, 1) for split attention (over the R splits of each
                      cardinal group's channels, C in the output's order; with R = 1 the sigmoid gate,
                      (B, 1, C, 1, 1)), (B, E) for CondConv (sigmoid) and dynamic convolution (softmax)
``"attention"``       the (B', h, N_q, N_k) weights of a token attention step (:class:`~visionattn.layers.
                      attention_core.Attention`), B' including the windows or blocks of windowed attention
``"local_attention"`` SASA's window weights, (B, h, H, W, k * k): pixel (y, x)'s softmax over its k x k window in
                      raster order (offsets -(k - 1) / 2 ... (k - 1) / 2); the SASA attention stem's the same, its
                      even window at offsets -k / 2 ... k / 2 - 1
===================== ================================================================================================
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import ClassVar

import torch
from torch import nn

from visionattn.errors import UsageError, check_names, did_you_mean

__all__ = ["RECORD_KINDS", "RecordHook", "Recordable", "Recorder"]

RECORD_KINDS = ("channel", "spatial", "branch", "attention", "local_attention")

RecordHook = Callable[[nn.Module, torch.Tensor], None]


class Recordable:
    """Mixin for a layer whose ``forward`` hands what it computed to an attached :class:`Recorder` (see the module
    docstring for the protocol and the kinds). ``recorder`` is None unless a recorder is attached."""

    record_kind: ClassVar[str]
    recorder: RecordHook | None = None


class Recorder:
    """Records what the :class:`Recordable` layers of a model computed during the forward passes made while it is
    attached (``with Recorder(model) as rec: model(x)``), one tensor per call, by module name.

    Args:
        model: any module; every :class:`Recordable` submodule (the model itself included) of the chosen kinds is
            recorded.
        kinds: the kinds to record (default: all of :data:`RECORD_KINDS`).
        names: only these module names (default: every recordable module of those kinds).
        device: where the tensors are kept (default the CPU).

    Attributes:
        records: ``{module name: [tensor of each call, ...]}`` in call order.
        kinds: ``{module name: kind}`` for every module attached.

    Example:
        >>> with Recorder(model, kinds=["channel"]) as rec:
        ...     model(images)
        >>> rec.records["layer1.0.attn"][0].shape   # (B, C, 1, 1)
    """

    def __init__(self, model: nn.Module, kinds: Iterable[str] | None = None, names: Iterable[str] | None = None,
                 device: str | torch.device = "cpu") -> None:
        wanted = list(RECORD_KINDS) if kinds is None else list(kinds)
        check_names("kinds", "record kind", wanted, RECORD_KINDS)
        found = {n: m for n, m in model.named_modules() if isinstance(m, Recordable) and m.record_kind in wanted}
        if not found:
            raise UsageError(f"{type(self).__name__}: {type(model).__name__} has no {self._nothing(wanted)} to "
                             "record")
        if names is not None:
            names = list(names)
            unknown = [n for n in names if n not in found]
            if unknown:
                raise UsageError(f"names: {unknown[0]!r} is not a recordable module of the model"
                                 f"{did_you_mean(unknown[0], list(found))}; it has {', '.join(found)}")
            found = {n: found[n] for n in names}
        self._modules, self.device = found, torch.device(device)
        self._names = {id(m): n for n, m in found.items()}
        self.kinds = {n: m.record_kind for n, m in found.items()}
        self.records: dict[str, list[torch.Tensor]] = {}

    @staticmethod
    def _nothing(kinds: list[str]) -> str:
        return f"layer of kind {', '.join(kinds)} (no Recordable module)"

    def _record(self, module: nn.Module, value: torch.Tensor) -> None:
        self.records.setdefault(self._names[id(module)], []).append(value.detach().to(self.device))

    def of_kind(self, kind: str) -> dict[str, list[torch.Tensor]]:
        """The records of the modules of one kind, by module name."""
        return {n: r for n, r in self.records.items() if self.kinds[n] == kind}

    def attach(self) -> None:
        for module in self._modules.values():
            if module.recorder is not None:
                raise UsageError(f"{type(self).__name__}: another recorder is already attached to this model")
        for module in self._modules.values():
            module.recorder = self._record

    def detach(self) -> None:
        for module in self._modules.values():
            module.recorder = None

    def __enter__(self) -> Recorder:
        self.attach()
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()
