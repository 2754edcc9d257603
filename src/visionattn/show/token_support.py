"""What the token-attention pictures share: the choices a subject's options make (image, pixel, layer, head), one
recorded forward pass, the figure and the overlay of a map of weights on an image.

Options read from :attr:`~visionattn.show.registry.Subject.options` (each checked, a :class:`~visionattn.errors.
UsageError` naming it): ``image`` (index into the subject's images, default 0), ``pixel`` ((y, x) in input-image
pixels, default the centre), ``layer`` (a layer's module name, the name of the module holding it, or its index
among the layers the picture can show: :func:`~visionattn.show.figures.choose_layer`, the chooser of every picture,
named ``--layer`` in its errors), ``head`` (one head, default all).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from visionattn.errors import UsageError
from visionattn.show.figures import agg_figure, choose_layer, record

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from visionattn.show.registry import Subject

__all__ = ["COLORS", "WEIGHT_CMAP", "pick_image", "pick_pixel", "pick_layer", "pick_heads",
           "record_one", "new_figure", "show_image", "overlay", "to_layer"]

# one colour per kind of mark, never reused within a figure for another thing; the weights use WEIGHT_CMAP
COLORS = {"pixel": "#e41a1c", "window": "#ffffff", "grid": "#377eb8", "next_grid": "#ff7f00", "block": "#4daf4a"}
WEIGHT_CMAP = "viridis"


def pick_image(subject: Subject) -> int:
    """The ``image`` option: which of the subject's images (default the first)."""
    if subject.images is None or len(subject.images) == 0:
        raise UsageError(f"{subject.model_name}: this picture needs an image, and the subject has none")
    index = subject.options.get("image", 0)
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(subject.images):
        raise UsageError(f"image: got {index!r}, needed an index in [0, {len(subject.images)})")
    return index


def pick_pixel(subject: Subject, size: tuple[int, int]) -> tuple[int, int]:
    """The ``pixel`` option, (y, x) inside an image of ``size`` (default the centre)."""
    pixel = subject.options.get("pixel")
    if pixel is None:
        return size[0] // 2, size[1] // 2
    ok = isinstance(pixel, (tuple, list)) and len(pixel) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) for v in pixel)
    if not ok or not (0 <= pixel[0] < size[0] and 0 <= pixel[1] < size[1]):
        raise UsageError(f"pixel: got {pixel!r}, needed (y, x) with 0 <= y < {size[0]} and 0 <= x < {size[1]} "
                         "(a pixel of the input image)")
    return int(pixel[0]), int(pixel[1])


def pick_layer(subject: Subject, layers: dict[str, Any], default: str | None, what: str) -> str | None:
    """The ``layer`` option among ``layers`` (:func:`~visionattn.show.figures.choose_layer`: a name, the name of the
    module holding one of them, or an index in their order); ``default`` when not given."""
    choice = subject.options.get("layer")
    return default if choice is None else choose_layer(choice, list(layers), what)


def pick_heads(subject: Subject, heads: int) -> list[int]:
    """The ``head`` option: [that head], or every head."""
    head = subject.options.get("head")
    if head is None:
        return list(range(heads))
    if not isinstance(head, int) or isinstance(head, bool) or not 0 <= head < heads:
        raise UsageError(f"head: got {head!r}, needed a head index in [0, {heads})")
    return [head]


def record_one(subject: Subject, image: int, names: list[str],
               sizes: dict[str, nn.Module] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, tuple]]:
    """One forward pass of the subject's model on one image with a recorder on the modules ``names``: their
    records (the first call each, batch of one), and for the modules in ``sizes`` the shape of their first
    input and their keyword arguments (a forward pre-hook)."""
    model = subject.model
    seen: dict[str, tuple] = {}

    def keep(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            seen.setdefault(name, (tuple(args[0].shape), args[1:], kwargs))
        return hook

    hooks = [m.register_forward_pre_hook(keep(n), with_kwargs=True) for n, m in (sizes or {}).items()]
    try:
        return record(model, subject.images[image : image + 1], names), seen
    finally:
        for hook in hooks:
            hook.remove()


def to_layer(pixel: tuple[int, int], image_size: tuple[int, int], map_size: tuple[int, int]) -> tuple[int, int]:
    """The position in an (h, w) map of an input pixel: the map cell whose image area holds it."""
    return (min(pixel[0] * map_size[0] // image_size[0], map_size[0] - 1),
            min(pixel[1] * map_size[1] // image_size[1], map_size[1] - 1))


def new_figure(panels: int, columns: int | None = None, size: float = 3.0) -> tuple[Figure, list[Axes]]:
    """A figure of ``panels`` square axes (no ticks) on an Agg canvas, at most 5 to a row (default) in rows
    as even as can be; no pyplot state is touched."""
    columns = -(-panels // -(-panels // 5)) if columns is None else min(columns, panels)
    rows = -(-panels // columns)
    fig = agg_figure(size * columns, size * rows + 0.6)
    axes = [fig.add_subplot(rows, columns, i + 1) for i in range(panels)]
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig, axes


def show_image(ax: Axes, display: torch.Tensor, map_size: tuple[int, int] | None = None) -> None:
    """The display image (H, W, 3); with ``map_size`` stretched over an (h, w) map's cells, so that map
    coordinates (cell centres at integers) address it."""
    h, w = map_size if map_size is not None else display.shape[:2]
    ax.imshow(display.clamp(0, 1).numpy(), extent=(-0.5, w - 0.5, h - 0.5, -0.5), interpolation="bilinear")


def overlay(ax: Axes, values: torch.Tensor, vmax: float, extent: tuple[float, ...] | None = None,
            alpha: float = 0.75, interpolation: str = "nearest", vmin: float = 0.0) -> Any:
    """A map of weights (NaN: not drawn) over what the axes show, on :data:`WEIGHT_CMAP` from ``vmin`` (default
    0) to ``vmax``."""
    h, w = values.shape
    extent = extent if extent is not None else (-0.5, w - 0.5, h - 0.5, -0.5)
    return ax.imshow(values.float().numpy(), cmap=WEIGHT_CMAP, vmin=vmin, vmax=max(vmax, vmin + 1e-12),
                     alpha=alpha, extent=extent, interpolation=interpolation)
