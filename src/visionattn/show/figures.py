"""What every picture shares, written once: a figure on an Agg canvas outside pyplot's state, the modules of a
model a picture can show, one recorded forward pass, and a figure's PNG bytes (for the command's file and the
report's page)."""

from __future__ import annotations

import io
from collections.abc import Callable

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import nn

from visionattn.layers.recording import Recorder

__all__ = ["agg_figure", "modules_of", "record", "png_bytes"]


def agg_figure(width: float, height: float) -> Figure:
    """A ``width`` x ``height`` inch figure with constrained layout drawn by Agg, outside pyplot's state (nothing to
    close, no GUI)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def modules_of(model: nn.Module, match: Callable[[nn.Module], bool]) -> dict[str, nn.Module]:
    """The submodules ``match`` accepts, by name, in module (forward) order."""
    return {name: m for name, m in model.named_modules() if match(m)}


@torch.no_grad()
def record(model: nn.Module, images: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    """Run ``model`` on ``images`` once and return the tensor each of the named recordable modules applied (its
    first call's)."""
    with Recorder(model, names=names) as rec:
        model(images)
    return {name: rec.records[name][0] for name in names}


def png_bytes(fig: Figure, dpi: int, **savefig: object) -> bytes:
    """``fig`` as PNG bytes at ``dpi`` (``savefig``: more of matplotlib's options, e.g. ``bbox_inches="tight"``);
    a pyplot figure is closed afterwards, so that none is left open."""
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=dpi, **savefig)
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return buffer.getvalue()
