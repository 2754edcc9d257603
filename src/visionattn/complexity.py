"""Parameter and multiply-add counts, attention's own share of them, and the table of registered layers.

Multiply-adds come from ``torch.utils.flop_counter.FlopCounterMode`` (one MAC = two FLOPs). It counts matrix
products and convolutions, not element-wise work (pooling, gates, softmax), the convention of the papers' tables.

Two things are added to it here:

- **The CPU's fused attention is counted.** ``F.scaled_dot_product_attention`` on the CPU runs
  ``aten._scaled_dot_product_flash_attention_for_cpu`` (and its ``_backward``), for which torch (2.13) has no
  formula, so the fused path counted 0 for QK^T and AV where the explicit path counted both. The formulas of
  torch's own CUDA variants (``sdpa_flop_count``, ``sdpa_backward_flop_count``) are registered for them on
  import: B h N_q N_k (d + d_v) forward, as the explicit path's two products, and the explicit backward's four
  (dV, dA, dQ, dK: B h N_q N_k (2 d + 2 d_v)); torch's CUDA formula also counts the kernel's recomputation of
  Q K^T, work the function itself does not need, which is left out here so that both paths count the same.
  Published counts differ by about this share: ViT-Ti/16 at 224 counts 1.254 GMACs here, 0.179 G of them
  attention; mmpretrain's DeiT-tiny table (a FLOP there is a multiply-add) has printed both 1.26 and 1.08 GFLOPs
  (about 1.254 - 0.179) in different commits, and timm's model cards give ViT-S/16 (4.599 G here, 0.358 G
  attention) 4.6 GMACs as ``deit_small`` and 4.3 as ``vit_small``.
- **Attention's share** (:class:`MacCounter`): the products of every attention step, counted the same on every
  path: what runs inside a module whose class says ``attention_products = True`` -- the
  :class:`~visionattn.layers.attention_core.Attention` step (QK^T and AV of the softmax kernel, explicit or
  fused; the linear kernel's phi(K)^T V, phi(Q) (.) and normaliser products; axial attention's A r^v) and the
  relative-position logits computed for it (BoTNet's and HaloNet's q r^T,
  :class:`~visionattn.layers.relative_position.RelativePositionLogits2d`; axial attention's q r^q and k r^k) --
  and any fused attention op elsewhere (an op whose name says ``attention``: SASA's local-attention kernel, QK
  and AV over the k x k window, its relative embedding added to the keys). Counted for the forward pass (the
  backward's attention ops are left out of the share). Not in the share: SASA's pure-PyTorch reference (the
  fallback where its C++ kernel cannot be built; counted in the total), and the SASA stem's window products,
  which are element-wise (counted nowhere, as FlopCounterMode counts no element-wise work). The protocol is
  one class attribute, so that this module knows no particular layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from visionattn.errors import UsageError
from visionattn.registry import create_attn_for_size, get_attn_entry, list_attn

__all__ = ["count_params", "count_macs", "count_training_macs", "mac_counts", "MacCounts", "MacCounter",
           "check_shape", "layer_rows", "buildable_layer_rows", "format_table", "human_number"]


def _register_cpu_sdpa_formulas() -> None:
    """Flop formulas for the CPU flash-attention ops, the shapes logic of torch's CUDA ones (where torch has none)."""
    aten = torch.ops.aten

    def forward(query, key, value, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(query, key, value)

    def backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
        # torch's count includes the kernel recomputing Q K^T; the explicit path's backward has 4 products
        b, h, n_q, d = query
        recompute = flop_counter.bmm_flop((b * h, n_q, d), (b * h, d, key[-2]))
        return flop_counter.sdpa_backward_flop_count(grad_out, query, key, value) - recompute

    for name, formula in (("_scaled_dot_product_flash_attention_for_cpu", forward),
                          ("_scaled_dot_product_flash_attention_for_cpu_backward", backward)):
        op = getattr(aten, name, None)
        if op is not None and op not in flop_counter.flop_registry:
            flop_counter.register_flop_formula(op)(formula)


_register_cpu_sdpa_formulas()


def _is_forward_attention_op(op: Any) -> bool:
    name = str(op)
    return "attention" in name and "backward" not in name and not name.endswith("_bwd")


class MacCounter:
    """``FlopCounterMode`` over a run of ``model``, with attention's own share counted apart.

    Attention MACs are those of the ops run inside the model's modules that say ``attention_products = True``
    (the :class:`~visionattn.layers.attention_core.Attention` steps and the relative-position logits computed for
    them), plus those of fused attention ops run anywhere else (SASA's kernel). :meth:`total` and
    :meth:`attention` may be read at any time (e.g. from hooks, per stage), and after the ``with`` block.

    Example:
        >>> with MacCounter(model) as counter:
        ...     model(images)
        >>> counter.total(), counter.attention()
    """

    def __init__(self, model: nn.Module) -> None:
        self.flops = FlopCounterMode(display=False)
        self._steps = [m for m in model.modules() if getattr(type(m), "attention_products", False)]
        self._handles: list[Any] = []
        self._depth, self._inside, self._start = 0, 0, (0, 0)

    def _op_flops(self) -> int:
        return sum(v for op, v in self.flops.flop_counts["Global"].items() if _is_forward_attention_op(op))

    def _enter_step(self, module: nn.Module, args: Any) -> None:
        if self._depth == 0:
            self._start = (self.flops.get_total_flops(), self._op_flops())
        self._depth += 1

    def _leave_step(self, module: nn.Module, args: Any, out: Any) -> None:
        self._depth -= 1
        if self._depth == 0:  # attention ops inside a step are in its delta already: not twice
            total, ops = self._start
            self._inside += (self.flops.get_total_flops() - total) - (self._op_flops() - ops)

    def total(self) -> int:
        """Multiply-adds counted so far."""
        return self.flops.get_total_flops() // 2

    def attention(self) -> int:
        """Attention's multiply-adds counted so far (forward)."""
        return (self._inside + self._op_flops()) // 2

    def __enter__(self) -> MacCounter:
        for step in self._steps:
            self._handles += [step.register_forward_pre_hook(self._enter_step),
                              step.register_forward_hook(self._leave_step)]
        self.flops.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.flops.__exit__(*exc)
        for h in self._handles:
            h.remove()
        self._handles = []


@dataclass(frozen=True)
class MacCounts:
    """Multiply-adds of one pass: all of them, and attention's (QK^T, AV and relative-position logits, or the
    linear kernel's products)."""

    total: int
    attention: int


def count_params(module: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def mac_counts(module: nn.Module, x: torch.Tensor) -> MacCounts:
    """Multiply-adds of one eval-mode forward pass of ``module`` on ``x``, in total and in attention."""
    was_training = module.training
    module.eval()
    try:
        with MacCounter(module) as counter:
            module(x)
    finally:
        module.train(was_training)
    return MacCounts(counter.total(), counter.attention())


def count_macs(module: nn.Module, x: torch.Tensor) -> int:
    """Multiply-adds of one eval-mode forward pass of ``module`` on ``x``."""
    return mac_counts(module, x).total


def count_training_macs(module: nn.Module, x: torch.Tensor, input_grad: bool = False) -> int:
    """Multiply-adds of one training-mode forward and backward pass of ``module`` on ``x`` (the loss a sum of
    the outputs), with ``input_grad`` the input's gradient too (a layer inside a network)."""
    was_training = module.training
    module.train()
    x = x.detach().requires_grad_(input_grad)
    try:
        with MacCounter(module) as counter:
            out = module(x)
            (out if isinstance(out, torch.Tensor) else out[0]).float().sum().backward()
    finally:
        module.train(was_training)
        module.zero_grad(set_to_none=True)
    return counter.total()


def _positive_ints(value: object, length: int) -> tuple[int, ...] | None:
    values = tuple(value) if isinstance(value, (tuple, list)) else ()
    ok = len(values) == length and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)
    return values if ok else None


def check_shape(shape: object, argument: str = "input_size") -> tuple[int, int, int]:
    """``shape`` as a (C, H, W) tuple of positive integers, else a :class:`~visionattn.errors.UsageError`."""
    values = _positive_ints(shape, 3)
    if values is None:
        raise UsageError(f"{argument}: got {shape!r}, needed (C, H, W): three positive integers, e.g. (3, 224, 224)")
    return values  # type: ignore[return-value]


def _check_feature_map(channels: int, size: tuple[int, int], arguments: tuple[str, str]) -> None:
    if _positive_ints((channels,), 1) is None:
        raise UsageError(f"{arguments[0]}: got {channels!r}, needed a positive number of channels")
    if _positive_ints(size, 2) is None:
        raise UsageError(f"{arguments[1]}: got {size!r}, needed (H, W): two positive integers")


def buildable_layer_rows(channels: int = 64, size: tuple[int, int] = (56, 56), family: str | None = None,
                         arguments: tuple[str, str] = ("channels", "size")) -> tuple[list[dict[str, object]],
                                                                                      dict[str, str]]:
    """One row per registered layer (of ``family``) that can be built for a (1, C, H, W) input, and for each one
    that cannot (e.g. ``sk``'s 32 groups at 16 channels) the layer's own error message, by name.

    ``arguments`` are the names the errors use for ``channels`` and ``size`` (the command line's ``--channels``).
    """
    _check_feature_map(channels, size, arguments)
    rows, unbuildable = [], {}
    x = torch.randn(1, channels, *size)
    for name in list_attn(family):
        entry = get_attn_entry(name)
        try:
            layer = create_attn_for_size(name, channels, tuple(size))
            macs = mac_counts(layer, x)
        except ValueError as err:  # the layer's own argument and shape checks
            unbuildable[name] = str(err)
            continue
        rows.append({"name": name, "family": entry.family, "paper": entry.paper,
                     "params": count_params(layer), "macs": macs.total,
                     "attn_macs": macs.attention, "description": entry.description})
    return rows, unbuildable


def layer_rows(channels: int = 64, size: tuple[int, int] = (56, 56)) -> list[dict[str, object]]:
    """One row per registered layer: name, family, paper, parameters, MACs and attention MACs (``attn_macs``)
    for a (1, C, H, W) input; a :class:`~visionattn.errors.UsageError` when one of them cannot be built at that
    size."""
    rows, unbuildable = buildable_layer_rows(channels, size)
    if unbuildable:
        name, why = next(iter(unbuildable.items()))
        raise UsageError(f"channels: layer {name!r} cannot be built for {channels}x{size[0]}x{size[1]}: {why}")
    return rows


def human_number(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def format_table(rows: list[dict[str, object]], columns: list[str], human: tuple[str, ...] = ()) -> str:
    """A Markdown table of ``rows`` restricted to ``columns``; numbers in ``human`` get K/M/G suffixes."""
    cells = [[(human_number(r[c]) if c in human else str(r[c])) for c in columns] for r in rows]  # type: ignore[arg-type]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
    out = [line(columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(row) for row in cells]
    return "\n".join(out)
