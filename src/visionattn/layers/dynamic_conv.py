"""Dynamic convolution (DY-CNN) and the schedule that anneals its softmax temperature.

Chen et al. 2020, "Dynamic Convolution: Attention over Convolution Kernels" (section 10 of the reference
tutorial). As CondConv (eq. 9.2-9.3), but the expert weights come from a softmax with temperature (eq. 10.1),
so they sum to 1; a high temperature early in training keeps them near uniform so that every expert learns.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from visionattn.errors import UsageError
from visionattn.layers.cond_conv import ExpertConv2d
from visionattn.layers.helpers import LayerSpec, check_positive_int, create_act, reduced_channels
from visionattn.registry import register_attn

__all__ = ["DynamicConv2d", "TemperatureSchedule", "set_temperature", "check_temperature"]

_PAPER = "Chen et al. 2020, Dynamic Convolution"


def check_temperature(value: object, name: str = "temperature") -> float:
    """Return ``value`` as a float if it is a finite number > 0, else raise a UsageError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise UsageError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


@register_attn("dynamic_conv", paper=_PAPER, family="branch", conv_like=True, every_conv=True,
               description="dynamic convolution: per-sample kernel, a temperature-softmax mixture of experts",
               variants=({"out_channels": 64, "stride": 2, "dilation": 2, "bias": True, "temperature": 1.0},))
class DynamicConv2d(ExpertConv2d):
    """Dynamic convolution: ``pi = softmax(MLP(mean_hw(X)) / tau)`` (eq. 10.1), then
    ``W = sum_k pi_k W_k`` and ``W * X`` as CondConv (eq. 9.2-9.3).

    The router is the paper's: average pool, FC (C -> C / 4), ReLU, FC (-> n), softmax with temperature tau
    (the tutorial's snippet uses a single linear layer). The paper trains with tau annealed linearly from 30
    to 1 over the first epochs (:class:`TemperatureSchedule`); ``temperature`` is stored as a buffer, so it is
    saved with the model and changing it does not make ``torch.compile`` recompile.

    Args:
        channels: input channels C.
        out_channels: output channels O (default C).
        kernel_size: kernel size of every expert.
        stride: as for ``nn.Conv2d``.
        padding: as for ``nn.Conv2d``; None pads to keep ``ceil(H / stride)`` (needs an odd kernel).
        dilation: as for ``nn.Conv2d``.
        groups: as for ``nn.Conv2d``; must divide C and O.
        bias: each expert carries a bias, mixed like the weights.
        num_experts: number of experts n (paper: 4).
        temperature: softmax temperature tau > 0 (paper: 30 at the start of training, 1 after annealing).
        rd_ratio: router bottleneck ratio (paper: 1/4).
        rd_channels: router bottleneck width; overrides ``rd_ratio``.
        act_layer: router activation (paper: ReLU).

    Shape:
        - Input: (B, C, H, W)
        - Output: (B, O, H', W'), ``H' = ceil(H / stride)`` when ``padding`` is None
    """

    def __init__(self, channels: int, out_channels: int | None = None, kernel_size: int = 3, stride: int = 1,
                 padding: int | None = None, dilation: int = 1, groups: int = 1, bias: bool = False,
                 num_experts: int = 4, temperature: float = 30.0, rd_ratio: float = 0.25,
                 rd_channels: int | None = None, act_layer: LayerSpec = "relu") -> None:
        super().__init__(channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         num_experts)
        hidden = reduced_channels(channels, rd_ratio, rd_channels)
        self.router = nn.Sequential(nn.Linear(channels, hidden), create_act(act_layer),
                                    nn.Linear(hidden, num_experts))
        self.register_buffer("tau", torch.tensor(check_temperature(temperature)))

    @property
    def temperature(self) -> float:
        return float(self.tau)

    @temperature.setter
    def temperature(self, value: float) -> None:
        self.tau.fill_(check_temperature(value))

    def route(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.router(x.mean(dim=(2, 3)))
        return (logits / self.tau).softmax(dim=1)  # eq. 10.1

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, temperature={self.temperature:g}"


def _dynamic_convs(model: nn.Module) -> list[DynamicConv2d]:
    return [m for m in model.modules() if isinstance(m, DynamicConv2d)]


def set_temperature(model: nn.Module, temperature: float) -> int:
    """Set the softmax temperature of every :class:`DynamicConv2d` in ``model``; return how many were set."""
    temperature = check_temperature(temperature)
    layers = _dynamic_convs(model)
    for layer in layers:
        layer.temperature = temperature
    return len(layers)


class TemperatureSchedule:
    """Linear annealing of the DY-CNN temperature: ``start`` at step 0 to ``end`` at ``num_steps``, then flat.

    The paper anneals from 30 to 1 over the first 10 epochs; count ``num_steps`` in epochs or in iterations
    and call :meth:`step` once per epoch or iteration accordingly. Building the schedule sets the start
    temperature on every :class:`DynamicConv2d` of ``model`` (finding none is allowed: it then does nothing).

    Args:
        model: the network (or a single layer) whose dynamic convolutions to drive.
        start: temperature at step 0 (paper: 30).
        end: temperature from step ``num_steps`` on (paper: 1).
        num_steps: length of the annealing (paper: 10 epochs).

    Example:
        >>> schedule = TemperatureSchedule(model, num_steps=10)
        >>> for epoch in range(epochs):
        ...     train_one_epoch(model)
        ...     schedule.step()
    """

    def __init__(self, model: nn.Module | Iterable[nn.Module], start: float = 30.0, end: float = 1.0,
                 num_steps: int = 10) -> None:
        self.start = check_temperature(start, "start")
        self.end = check_temperature(end, "end")
        self.num_steps = check_positive_int("num_steps", num_steps)
        models = [model] if isinstance(model, nn.Module) else list(model)
        self.layers = [layer for m in models for layer in _dynamic_convs(m)]
        self.last_step = 0
        self._apply()

    @property
    def temperature(self) -> float:
        """The temperature at the current step."""
        progress = min(self.last_step / self.num_steps, 1.0)
        return self.start + (self.end - self.start) * progress

    def _apply(self) -> None:
        for layer in self.layers:
            layer.temperature = self.temperature

    def step(self) -> float:
        """Advance one step, set the new temperature on every layer and return it."""
        self.last_step += 1
        self._apply()
        return self.temperature

    def state_dict(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "num_steps": self.num_steps,
                "last_step": self.last_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` and set its temperature on every layer."""
        self.start = check_temperature(state["start"], "start")
        self.end = check_temperature(state["end"], "end")
        self.num_steps = check_positive_int("num_steps", state["num_steps"])
        self.last_step = check_positive_int("last_step", state["last_step"], 0)
        self._apply()
