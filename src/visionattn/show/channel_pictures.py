"""Pictures of channel and spatial attention: what the gates of a network did to its input images.

- ``cbam``, ``bam``: the spatial maps over the input images, one column per stage (CBAM, Woo et al. 2018: the map
  A of eq. 4.7 of the stage's last block; BAM, Park et al. 2018: the 3-D map of eq. 5.2 at the stage's end,
  averaged over its channels), bilinearly upsampled to the image and drawn over it.
- ``se``, ``eca``, ``ge``: the channel weights per stage across classes, the figure of the SE paper (Hu et al.
  2018, sec. 7.2 / fig. 6: the mean excitation of every channel over the images of each class, for one block per
  stage, here the stage's last one). In the paper, early stages excite the same channels for every class and
  late stages become class-specific.

Every picture is a pure function of its :class:`~visionattn.show.registry.Subject`: it runs the model once
under a :class:`~visionattn.layers.recording.Recorder` and draws exactly the tensors the layers applied. The
helpers here (recording, stages, colours, figures) are shared with :mod:`visionattn.show.branch_pictures`.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
import torch.nn.functional as F
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import nn

from visionattn.errors import UsageError
from visionattn.layers.bam import BottleneckAttention
from visionattn.layers.cbam import CbamSpatialAttention
from visionattn.layers.eca import EfficientChannelAttention
from visionattn.layers.gather_excite import GatherExcite
from visionattn.layers.squeeze_excite import SEVar1, SEVar2, SEVar3, SqueezeExcite
from visionattn.show.figures import agg_figure, choose_layer, modules_of, record
from visionattn.show.registry import Subject, register_picture

__all__ = ["MAX_ROWS", "MAX_LINES", "line_colours", "label_axes", "layers_of", "stage_of",
           "last_per_stage", "stage_layers", "spatial_maps", "upsample", "class_means", "channel_weights",
           "has", "draw_spatial", "draw_channel_weights"]

MAX_ROWS = 6  # images drawn by the spatial pictures
MAX_LINES = 20  # distinct colours of the qualitative colormap (tab20)
_MAP_CMAP = "inferno"
# tab20 pairs a strong and a light shade of each hue: its strong colours first, then the light ones
_TAB20_ORDER = [*range(0, 20, 2), *range(1, 20, 2)]


def line_colours(n: int) -> list[tuple[float, ...]]:
    """``n`` distinct colours of one qualitative colormap (tab10 up to 10, else tab20, strong shades first)."""
    from matplotlib import colormaps

    if not 0 <= n <= MAX_LINES:
        raise ValueError(f"n: got {n}, needed at most {MAX_LINES} distinct colours")
    if n <= 10:
        return [tuple(colormaps["tab10"](i)) for i in range(n)]
    return [tuple(colormaps["tab20"](_TAB20_ORDER[i])) for i in range(n)]


def layers_of(model: nn.Module, types: tuple[type[nn.Module], ...]) -> list[str]:
    """The names of ``model``'s modules of these types, in forward order."""
    return list(modules_of(model, lambda m: isinstance(m, types)))


def stage_of(name: str) -> str:
    """The ResNet stage (``layer1`` ...) a module name is in; the name itself outside any stage."""
    found = re.search(r"(?:^|\.)(layer\d+)(?:\.|$)", name)
    return found.group(1) if found else name


def last_per_stage(names: list[str]) -> dict[str, str]:
    """``{stage: name}`` with the last of ``names`` in each ResNet stage (``layer1`` ...); a module outside any
    stage is its own."""
    stages: dict[str, str] = {}
    for name in names:
        stages[stage_of(name)] = name
    return stages


def _images(subject: Subject) -> torch.Tensor:
    if subject.model is None or subject.images is None:
        missing = "a model" if subject.model is None else "input images"
        raise UsageError(f"subject: this picture needs a model and input images, got no {missing.split()[-1]}")
    return subject.images


def stage_layers(subject: Subject, types: tuple[type[nn.Module], ...]) -> dict[str, str]:
    """``{stage: module name}``: the subject's model's last module of these types in each stage, or only the one
    that ``subject.options["layer"]`` chooses (:func:`~visionattn.show.figures.choose_layer`: its name, the name of
    the module holding it, or its index); a UsageError when it has none or the choice is none of them."""
    _images(subject)
    names = layers_of(subject.model, types)
    kinds = " or ".join(t.__name__ for t in types)
    if not names:
        raise UsageError(f"model: {subject.model_name} has no {kinds} layer to draw")
    chosen = subject.options.get("layer")
    if chosen is None:
        return last_per_stage(names)
    chosen = choose_layer(chosen, names, kinds)
    return {stage_of(chosen): chosen}


def spatial_maps(subject: Subject, types: tuple[type[nn.Module], ...]) -> dict[str, torch.Tensor]:
    """``{stage: (B, h, w) map}``: each stage's last spatial gate of these types at its own resolution, averaged
    over its channels (BAM's map is 3-D; CBAM's has one channel).

    Shape:
        - Output: one (B, h, w) tensor per stage
    """
    stages = stage_layers(subject, types)
    recorded = record(subject.model, _images(subject), list(stages.values()))
    return {stage: recorded[name].float().mean(dim=1) for stage, name in stages.items()}


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (B, h, w) maps to (B, H, W) = (B, *size)."""
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def draw_spatial(subject: Subject, types: tuple[type[nn.Module], ...], what: str) -> Figure:
    """Rows: the images (at most :data:`MAX_ROWS`); columns: the image, then each stage's map over it (one colour
    scale per stage, its bar below the column); only the map of ``subject.options["layer"]`` when it names one."""
    maps = spatial_maps(subject, types)
    display = subject.display if subject.display is not None else _gray(_images(subject))
    rows, size = min(display.shape[0], MAX_ROWS), tuple(display.shape[1:3])
    fig = agg_figure(2.2 * (len(maps) + 1), 2.2 * rows + 0.9)
    axes = fig.subplots(rows, len(maps) + 1, squeeze=False)
    for r in range(rows):
        axes[r, 0].imshow(display[r].clamp(0, 1).numpy())
        axes[r, 0].set_ylabel(_row_label(subject, r), fontsize=8)
    axes[0, 0].set_title("image", fontsize=9)
    for j, (stage, native) in enumerate(maps.items(), start=1):
        m = upsample(native[:rows], size)
        low, high = float(m.min()), float(m.max())
        for r in range(rows):
            axes[r, j].imshow(display[r].clamp(0, 1).numpy())
            im = axes[r, j].imshow(m[r].numpy(), cmap=_MAP_CMAP, alpha=0.6, vmin=low, vmax=high)
        axes[0, j].set_title(f"{stage} ({native.shape[1]}x{native.shape[2]} map)", fontsize=9)
        fig.colorbar(im, ax=axes[:, j], location="bottom", shrink=0.9, aspect=15).ax.tick_params(labelsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(subject.title(what), fontsize=10)
    return fig


def _gray(images: torch.Tensor) -> torch.Tensor:
    """Normalised (B, C, H, W) images rescaled to [0, 1] and shown as (B, H, W, 3), when no display is given."""
    x = images.float().mean(dim=1)
    low, high = x.amin(dim=(1, 2), keepdim=True), x.amax(dim=(1, 2), keepdim=True)
    return ((x - low) / (high - low).clamp_min(1e-12))[..., None].expand(*x.shape, 3)


def _row_label(subject: Subject, i: int) -> str:
    if subject.labels is None:
        return f"image {i}"
    label = int(subject.labels[i])
    return subject.class_names[label] if subject.class_names else f"class {label}"


def class_means(weights: torch.Tensor, labels: torch.Tensor | None,
                class_names: list[str] | None) -> dict[str, torch.Tensor]:
    """The mean channel weights of each class (in class order, at most :data:`MAX_LINES` - 1 classes), then
    ``"all images"``; without labels each image is its own line.

    Shape:
        - weights: (B, C), one weight per image and channel
        - Output: ``{line label: (C,)}``
    """
    if labels is None:
        lines = {f"image {i}": w for i, w in enumerate(weights[:MAX_LINES - 1])}
    else:
        lines = {}
        for c in sorted(set(labels.tolist()))[:MAX_LINES - 1]:
            name = class_names[c] if class_names else f"class {c}"
            lines[name] = weights[labels == c].mean(dim=0)
    if len(weights) > 1:
        lines["all images"] = weights.mean(dim=0)
    return lines


def channel_weights(subject: Subject, types: tuple[type[nn.Module], ...]) -> dict[str, torch.Tensor]:
    """``{stage: (B, C)}``: each stage's last channel gate of these types, one weight per image and channel (a
    local gather-excite gate, (B, C, h, w), is averaged over its positions).

    Shape:
        - Output: one (B, C) tensor per stage
    """
    stages = stage_layers(subject, types)
    recorded = record(subject.model, _images(subject), list(stages.values()))
    return {stage: recorded[name].float().mean(dim=(2, 3)) for stage, name in stages.items()}


def draw_channel_weights(subject: Subject, types: tuple[type[nn.Module], ...], what: str) -> Figure:
    """One panel per stage (or only ``subject.options["layer"]``): x the channel index, y the mean weight; a line
    per class and one over all images."""
    weights = channel_weights(subject, types)
    fig = agg_figure(4.2 * len(weights) + 1.6, 3.4)
    axes = fig.subplots(1, len(weights), squeeze=False, sharey=True)[0]
    for ax, (stage, w) in zip(axes, weights.items()):
        lines = class_means(w, subject.labels, subject.class_names)
        for (label, values), colour in zip(lines.items(), line_colours(len(lines))):
            ax.plot(range(len(values)), values.numpy(), color=colour, label=label,
                    linewidth=2.0 if label == "all images" else 1.0)
        label_axes(ax, f"{stage} ({w.shape[1]} channels)", "channel index", "mean weight" if ax is axes[0] else "")
    axes[-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle(subject.title(what), fontsize=10)
    return fig


def label_axes(ax: Axes, title: str, xlabel: str, ylabel: str) -> None:
    """Title, axis labels, small ticks and a light grid."""
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)


def has(types: tuple[type[nn.Module], ...]) -> Callable[[nn.Module], bool]:
    """``accepts``: whether a model has a module of these types."""
    return lambda model: bool(layers_of(model, types))


_CBAM, _BAM = (CbamSpatialAttention,), (BottleneckAttention,)
_SE, _ECA, _GE = (SqueezeExcite, SEVar1, SEVar2, SEVar3), (EfficientChannelAttention,), (GatherExcite,)


@register_picture("cbam", description="CBAM's spatial maps over the input images, per stage",
                  default_model="cbam_resnet50", images="photos", accepts=has(_CBAM), needs="a CBAM layer",
                  options=("layer",))
def draw_cbam(subject: Subject) -> Figure:
    return draw_spatial(subject, _CBAM, "CBAM spatial maps (each stage's last block)")


@register_picture("bam", description="BAM's attention maps (mean over channels) over the input images, per stage",
                  default_model="bam_resnet50", images="photos", accepts=has(_BAM), needs="a BAM layer",
                  options=("layer",))
def draw_bam(subject: Subject) -> Figure:
    return draw_spatial(subject, _BAM, "BAM attention maps (mean over channels)")


@register_picture("se", description="SE channel weights per stage across classes (SE paper, fig. 6)",
                  default_model="se_resnet20", images="fashion-mnist", accepts=has(_SE),
                  needs="a squeeze-and-excitation layer (SE or SE-Var-1/2/3)", options=("layer",))
def draw_se(subject: Subject) -> Figure:
    return draw_channel_weights(subject, _SE, "SE channel weights (each stage's last block)")


@register_picture("eca", description="ECA channel weights per stage across classes",
                  default_model="eca_resnet20", images="fashion-mnist", accepts=has(_ECA), needs="an ECA layer",
                  options=("layer",))
def draw_eca(subject: Subject) -> Figure:
    return draw_channel_weights(subject, _ECA, "ECA channel weights (each stage's last block)")


@register_picture("ge", description="gather-excite channel weights per stage across classes",
                  default_model="ge_theta_resnet20", images="fashion-mnist", accepts=has(_GE),
                  needs="a gather-excite layer", options=("layer",))
def draw_ge(subject: Subject) -> Figure:
    return draw_channel_weights(subject, _GE, "gather-excite channel weights (each stage's last block)")
