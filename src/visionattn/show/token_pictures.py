"""Pictures of local and windowed token attention: SASA's window of a pixel, Swin's (shifted) windows, HaloNet's
blocks.

- ``sasa``: Ramachandran et al. 2019, eq. 2-3: the chosen pixel's softmax over its k x k window, per head, in one
  local-attention layer (kind ``"local_attention"``: :class:`~visionattn.layers.local_attention.
  LocalSelfAttention2d` or the attention stem), drawn on the image at that layer's resolution.
- ``swin``: Liu et al. 2021, fig. 2: the regular window grid of a block and the displaced grid (by M / 2) of the
  next, and the chosen token's attention inside its window, per head (eq. 4, the window's softmax).
- ``halo``: Vaswani et al. 2021, fig. 2-3: the b x b block grid, one block's (b + 2h)^2 window, and the block's
  queries' mean attention over that window, per head.

Each picture is split into a ``*_view`` function (the numbers drawn, from one recorded forward pass; the tests
compare them with the recorder's tensors) and its ``draw``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from visionattn.layers.halo_attention import HaloAttention2d
from visionattn.layers.local_attention_ref import window_index
from visionattn.layers.recording import Recordable
from visionattn.layers.window_attention import WindowAttention, WindowAttention2d, fit_window, window_partition
from visionattn.show.figures import modules_of
from visionattn.show.registry import Subject, register_picture
from visionattn.show.token_support import (
    COLORS,
    new_figure,
    overlay,
    pick_heads,
    pick_image,
    pick_layer,
    pick_pixel,
    record_one,
    show_image,
    to_layer,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["MapView", "sasa_view", "swin_view", "halo_view", "window_token_map", "draw_sasa", "draw_swin",
           "draw_halo"]

Box = tuple[int, int, int, int]  # (y0, x0, y1, x1), map cells, inclusive


@dataclass
class MapView:
    """What a per-head picture draws: a layer's (h, w) map, the chosen position on it, one map of weights per
    head shown (NaN where the position does not attend), and the boxes outlined."""

    layer: str
    map_size: tuple[int, int]
    position: tuple[int, int]
    heads: list[int]
    maps: torch.Tensor  # (len(heads), h, w)
    boxes: dict[str, Box] = field(default_factory=dict)  # COLORS key -> box
    # COLORS key -> (the layer's index among the picture's layers, window or block (h, w), shift (y, x))
    grids: dict[str, tuple[int, tuple[int, int], tuple[int, int]]] = field(default_factory=dict)
    note: str = ""


# ------------------------------------------------------------------------------------------------------ SASA
def _is_local(m: nn.Module) -> bool:
    return isinstance(m, Recordable) and m.record_kind == "local_attention"


def _default_local(layers: dict[str, nn.Module], records: dict[str, torch.Tensor]) -> str:
    """The first layer whose map is usefully resolved: its shorter side at least 2k (the window a part of the
    map) and at most 16k (the window visible on it: not the attention stem at the image's full resolution)."""
    for name, layer in layers.items():
        side = min(records[name].shape[2:4])
        if 2 * layer.kernel_size <= side <= 16 * layer.kernel_size:
            return name
    return next(iter(layers))


def sasa_view(subject: Subject) -> MapView:
    """The chosen pixel's window weights in the chosen local-attention layer, per head, on the layer's map."""
    layers = modules_of(subject.model, _is_local)
    image = pick_image(subject)
    size = tuple(subject.images.shape[-2:])
    pixel = pick_pixel(subject, size)
    name = pick_layer(subject, layers, None, "local attention")
    # the default needs every layer's map size: record them all; a chosen layer alone
    records, _ = record_one(subject, image, list(layers) if name is None else [name])
    name = _default_local(layers, records) if name is None else name
    layer, weights = layers[name], records[name][0]  # (heads, h, w, k^2)
    heads = pick_heads(subject, weights.shape[0])
    h, w = weights.shape[1:3]
    y, x = to_layer(pixel, size, (h, w))
    key, inside, _, _ = window_index(h, w, layer.kernel_size, layer.border)
    p = y * w + x
    slots, keep = key[p], inside[p]
    maps = torch.full((len(heads), h * w), math.nan)
    maps[:, slots[keep]] = weights[heads, y, x][:, keep].float()
    ys, xs = slots[keep] // w, slots[keep] % w
    outside = weights[heads, y, x][:, ~keep].sum(-1)  # border "zero": the padding's share of the softmax
    note = f"; weight on the zero padding: {', '.join(f'{v:.2f}' for v in outside.tolist())}" \
        if bool((outside > 0).any()) else ""
    return MapView(name, (h, w), (y, x), heads, maps.view(len(heads), h, w),
                   {"window": (int(ys.min()), int(xs.min()), int(ys.max()), int(xs.max()))}, note=note)


# ------------------------------------------------------------------------------------------------------ Swin
def window_token_map(weights: torch.Tensor, heads: int, size: tuple[int, int], window: tuple[int, int],
                     shift: tuple[int, int], token: int) -> torch.Tensor:
    """A token's attention over the (H, W) map, from a window attention's recorded weights: the map padded to
    the window and rolled by -shift as the layer does (:class:`~visionattn.layers.window_attention.
    WindowAttention`), so each window slot's place in the map is known.

    Shape:
        - Input: weights (windows * heads, N, N), window-major (one image's record)
        - Output: (heads, H, W), NaN outside the token's window
    """
    height, width = size
    hp, wp = -(-height // window[0]) * window[0], -(-width // window[1]) * window[1]
    index = torch.full((hp, wp), -1, dtype=torch.long)
    index[:height, :width] = torch.arange(height * width).view(height, width)
    if any(shift):
        index = torch.roll(index, (-shift[0], -shift[1]), (0, 1))
    slots = window_partition(index[None, :, :, None], window)[0, :, :, 0]  # (windows, N)
    win, n = (slots == token).nonzero()[0].tolist()
    rows = weights[win * heads : (win + 1) * heads, n]  # (heads, N)
    keep = slots[win] >= 0
    out = torch.full((heads, height * width), math.nan)
    out[:, slots[win][keep]] = rows[:, keep].float()
    return out.view(heads, height, width)


def _swin_geometry(module: nn.Module, seen: tuple) -> tuple[tuple[int, int], tuple[int, int]]:
    """The map size and the shift a window attention used on its input (a pre-hook's (shape, args, kwargs))."""
    shape, args, kwargs = seen
    if isinstance(module, WindowAttention2d):
        size = (shape[2], shape[3])
        return size, fit_window(size, module.window_size, module.shift_size)[1]
    shift = args[0] if args else kwargs.get("shift_size")
    return (shape[1], shape[2]), tuple(module.shift_size if shift is None else shift)


def swin_view(subject: Subject) -> MapView:
    """The chosen token's attention within its window in the chosen window-attention layer, per head; the
    layer's window grid and the next layer's (when it works on the same map)."""
    layers = modules_of(subject.model, lambda m: isinstance(m, WindowAttention))
    image = pick_image(subject)
    size = tuple(subject.images.shape[-2:])
    pixel = pick_pixel(subject, size)
    name = pick_layer(subject, layers, next(iter(layers)), "window attention")
    names = list(layers)
    following = names[names.index(name) + 1] if names.index(name) + 1 < len(names) else None
    watch = {n: layers[n] for n in (name, following) if n is not None}
    records, seen = record_one(subject, image, [f"{name}.attend"], sizes=watch)
    module = layers[name]
    map_size, shift = _swin_geometry(module, seen[name])
    y, x = to_layer(pixel, size, map_size)
    maps = window_token_map(records[f"{name}.attend"][0], module.heads, map_size, module.window_size, shift,
                            y * map_size[1] + x)
    heads = pick_heads(subject, module.heads)
    grids = {"grid": (names.index(name), module.window_size, shift)}
    if following is not None and following in seen:
        next_size, next_shift = _swin_geometry(layers[following], seen[following])
        if next_size == map_size:
            grids["next_grid"] = (names.index(following), layers[following].window_size, next_shift)
    return MapView(name, map_size, (y, x), heads, maps[heads], grids=grids)


# ------------------------------------------------------------------------------------------------------ Halo
def halo_view(subject: Subject) -> MapView:
    """The block holding the chosen pixel in the chosen halo layer: its queries' mean attention over its
    (b + 2h)^2 window, per head, on the layer's (key) map."""
    layers = modules_of(subject.model, lambda m: isinstance(m, HaloAttention2d))
    image = pick_image(subject)
    size = tuple(subject.images.shape[-2:])
    pixel = pick_pixel(subject, size)
    name = pick_layer(subject, layers, next(iter(layers)), "halo attention")
    module = layers[name]
    records, seen = record_one(subject, image, [f"{name}.attend"], sizes={name: module})
    h, w = seen[name][0][2:4]
    b, halo, win = module.block_size, module.halo_size, module.win_size
    y, x = to_layer(pixel, size, (h, w))
    by, bx = y // b, x // b
    weights = records[f"{name}.attend"][by * -(-w // b) + bx]  # (heads, queries of the block, win^2)
    heads = pick_heads(subject, module.heads)
    mean = weights[heads].float().mean(1).view(len(heads), win, win)
    maps = torch.full((len(heads), h, w), math.nan)
    y0, x0 = by * b - halo, bx * b - halo
    ry, rx = slice(max(y0, 0), min(y0 + win, h)), slice(max(x0, 0), min(x0 + win, w))
    maps[:, ry, rx] = mean[:, ry.start - y0 : ry.stop - y0, rx.start - x0 : rx.stop - x0]
    boxes = {"block": (by * b, bx * b, min(by * b + b, h) - 1, min(bx * b + b, w) - 1),
             "window": (ry.start, rx.start, ry.stop - 1, rx.stop - 1)}
    return MapView(name, (h, w), (y, x), heads, maps, boxes, grids={"grid": (-1, (b, b), (0, 0))})


# ---------------------------------------------------------------------------------------------------- drawing
def _rectangle(ax: Axes, box: Box, color: str, label: str | None = None) -> None:
    from matplotlib.patches import Rectangle

    y0, x0, y1, x1 = box
    ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1, fill=False, edgecolor=color,
                           linewidth=1.5, label=label, zorder=3))  # above the grid lines


def _grid(ax: Axes, size: tuple[int, int], cell: tuple[int, int], shift: tuple[int, int], color: str,
          label: str, linestyle: str = "-") -> None:
    """Window borders of a grid of ``cell`` displaced by ``shift`` (cyclic: borders at shift + k * cell)."""
    for axis, (length, m, s) in enumerate(zip(size, cell, shift)):
        lines = [p - 0.5 for p in range(s % m, length, m) if p > 0]
        draw = ax.axhline if axis == 0 else ax.axvline
        for i, p in enumerate(lines):
            draw(p, color=color, linewidth=1.0, linestyle=linestyle, label=label if axis == 0 and i == 0 else None)


_STYLE = {"grid": "-", "next_grid": "--"}


def _draw_view(subject: Subject, view: MapView, title: str, labels: dict[str, str]) -> Figure:
    """Panel 0: the image at the layer's resolution with the grids, boxes and the position; then one panel per
    head with its weights over the image, zoomed to the outlined boxes and their surroundings."""
    fig, axes = new_figure(1 + len(view.heads))
    display = subject.display[pick_image(subject)]
    marks = list(view.boxes.items())
    for i, ax in enumerate(axes):
        show_image(ax, display, view.map_size)
        for key, (_, cell, shift) in view.grids.items():
            if i == 0 or key == "grid":
                _grid(ax, view.map_size, cell, shift, COLORS[key], labels.get(key, key), _STYLE[key])
        for key, box in marks:
            _rectangle(ax, box, COLORS[key], labels.get(key, key) if i == 0 else None)
        ax.plot(*view.position[::-1], marker="s", markersize=4, color=COLORS["pixel"], linestyle="none",
                label=labels.get("pixel", "pixel") if i == 0 else None)
        if i:
            image = overlay(ax, view.maps[i - 1], float(view.maps.nan_to_num(0).max()))
            ax.set_title(f"head {view.heads[i - 1]}", fontsize=9)
            _zoom(ax, view)
    axes[0].set_title(f"{view.layer}: {view.map_size[0]}x{view.map_size[1]} map", fontsize=9)
    axes[0].legend(loc="upper right", fontsize=7, framealpha=0.8)
    fig.colorbar(image, ax=axes[1:], shrink=0.8, label="attention weight")
    fig.suptitle(subject.title(title + view.note), fontsize=10)
    return fig


def _zoom(ax: Axes, view: MapView) -> None:
    """Around the boxes (or the weights drawn), with a margin of half their size."""
    finite = torch.isfinite(view.maps).any(0).nonzero()
    y0, x0 = finite.min(0).values.tolist()
    y1, x1 = finite.max(0).values.tolist()
    my, mx = max(2, (y1 - y0 + 1) // 2), max(2, (x1 - x0 + 1) // 2)
    ax.set_xlim(max(x0 - mx, 0) - 0.5, min(x1 + mx, view.map_size[1] - 1) + 0.5)
    ax.set_ylim(min(y1 + my, view.map_size[0] - 1) + 0.5, max(y0 - my, 0) - 0.5)


@register_picture("sasa", description="SASA: a pixel's attention over its k x k window per head, in one layer "
                  "(options pixel, layer, head)", default_model="sasa_resnet26", images="photos",
                  accepts=lambda model: bool(modules_of(model, _is_local)),
                  needs="a SASA local attention layer (LocalSelfAttention2d or the SASA attention stem)",
                  options=("image", "pixel", "layer", "head"))
def draw_sasa(subject: Subject) -> Figure:
    view = sasa_view(subject)
    k = subject.model.get_submodule(view.layer).kernel_size
    return _draw_view(subject, view, f"SASA: pixel {pick_pixel(subject, tuple(subject.images.shape[-2:]))}'s "
                      f"{k}x{k} window", {"window": "its window", "pixel": "the pixel"})


@register_picture("swin", description="Swin: the window grid, the next block's shifted grid, a token's attention "
                  "in its window per head (options pixel, layer, head)",
                  default_model="swin_tiny_patch4_window7_224", images="photos",
                  accepts=lambda model: bool(modules_of(model, lambda m: isinstance(m, WindowAttention))),
                  needs="a Swin window attention layer (WindowAttention)", options=("image", "pixel", "layer", "head"))
def draw_swin(subject: Subject) -> Figure:
    view = swin_view(subject)
    labels = {key: f"{'this' if key == 'grid' else 'next'} block's windows, shift ({shift[0]}, {shift[1]})"
              for key, (_, _, shift) in view.grids.items()}
    return _draw_view(subject, view, "Swin: a token's attention in its window", {**labels, "pixel": "the token"})


@register_picture("halo", description="HaloNet: the block grid, a block's halo window and its mean attention per head "
                  "(options pixel, layer, head)", default_model="halonet26t",
                  images="photos",
                  accepts=lambda model: bool(modules_of(model, lambda m: isinstance(m, HaloAttention2d))),
                  needs="a HaloNet blocked attention layer (HaloAttention2d)",
                  options=("image", "pixel", "layer", "head"))
def draw_halo(subject: Subject) -> Figure:
    view = halo_view(subject)
    return _draw_view(subject, view, "HaloNet: a block's mean attention over its window",
                      {"grid": "blocks", "block": "the block", "window": "its window (block + halo)",
                       "pixel": "the pixel"})
