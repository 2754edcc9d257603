"""What every picture shares, written once: a figure on an Agg canvas outside pyplot's state, the modules of a
model a picture can show, the one of them that ``--layer`` chooses, one recorded forward pass, and a figure's PNG
bytes (for the command's file and the report's page)."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import nn

from visionattn.errors import UsageError, did_you_mean
from visionattn.layers.recording import Recorder

__all__ = ["agg_figure", "modules_of", "choose_layer", "record", "png_bytes"]


def agg_figure(width: float, height: float) -> Figure:
    """A ``width`` x ``height`` inch figure with constrained layout drawn by Agg, outside pyplot's state (nothing to
    close, no GUI)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def modules_of(model: nn.Module, match: Callable[[nn.Module], bool]) -> dict[str, nn.Module]:
    """The submodules ``match`` accepts, by name, in module (forward) order."""
    return {name: m for name, m in model.named_modules() if match(m)}


def choose_layer(choice: object, names: Sequence[str], what: str) -> str:
    """The one of ``names`` (the model's ``what`` layers a picture can show, in forward order) that a ``--layer``
    choice picks: its name, the name of the one module that holds it (a ViT block for its attention step, a ResNet
    block for its gate), or its index in ``names`` (an int or its digits; negative ones count from the end). Anything
    else is a :class:`~visionattn.errors.UsageError` naming ``--layer``, what it got and what it needs."""
    names = list(names)
    needed = (f"needed one of the model's {what} layers ({', '.join(names)}): its name, the name of the module "
              f"holding it, or its index in [0, {len(names)})")
    if isinstance(choice, str) and choice.lstrip("-").isdigit():
        choice = int(choice)
    if isinstance(choice, int) and not isinstance(choice, bool):
        if -len(names) <= choice < len(names):
            return names[choice]
        raise UsageError(f"--layer: got {choice}, out of range; {needed}")
    if not isinstance(choice, str):
        raise UsageError(f"--layer: got {choice!r}; {needed}")
    if choice in names:
        return choice
    inside = [name for name in names if name.startswith(f"{choice}.")]
    if len(inside) == 1:
        return inside[0]
    if inside:
        raise UsageError(f"--layer: got {choice!r}, which holds {len(inside)} of them; {needed}")
    raise UsageError(f"--layer: got {choice!r}, which is not one of them{did_you_mean(choice, names)}; {needed}")


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
