"""Pictures of branch attention: which receptive field each channel of a selective-kernel network chose.

``sk`` repeats the experiment of the SK paper (Li et al. 2019, sec. 4.3, fig. 3-4): the object is enlarged 1.0x,
1.5x and 2.0x by cropping the centre of the image and resizing it back, and the attention weights a of eq. 7.6
are recorded at every scale. A larger object should move the weight to the larger kernel. Left: the mean of
``a_large - a_small`` (the path with the largest dilation minus the smallest) over the channels and images, per
block, one line per scale (the paper's fig. 3). Right: the large path's weight per channel for the last block of
every stage (or the block ``--layer`` names), one line per scale (fig. 4).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from visionattn.errors import UsageError
from visionattn.layers.selective_kernel import SelectiveKernel
from visionattn.show.channel_pictures import (
    has,
    label_axes,
    layers_of,
    line_colours,
    stage_layers,
)
from visionattn.show.figures import agg_figure, record
from visionattn.show.registry import Subject, register_picture

__all__ = ["SCALES", "enlarge", "branch_weights", "large_minus_small", "draw_sk"]

SCALES = (1.0, 1.5, 2.0)  # the SK paper's object sizes
_SK = (SelectiveKernel,)


def enlarge(images: torch.Tensor, scale: float) -> torch.Tensor:
    """Make the objects ``scale`` times larger: crop the central 1 / scale of each side, resize it back
    (bilinear), as the SK paper's sec. 4.3 does.

    Shape:
        - images: (B, C, H, W)
        - Output: (B, C, H, W); ``scale = 1`` returns the images themselves
    """
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale >= 1:
        raise UsageError(f"scale: got {scale!r}, needed a number >= 1 (1 keeps the image, 2 doubles the object)")
    if scale == 1:
        return images
    h, w = images.shape[-2:]
    ch, cw = max(round(h / scale), 1), max(round(w / scale), 1)
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = images[..., top:top + ch, left:left + cw]
    return F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)


def branch_weights(subject: Subject, names: list[str],
                   scales: tuple[float, ...] = SCALES) -> dict[float, dict[str, torch.Tensor]]:
    """``{scale: {block name: (B, M, C) weights a}}``: the named SK blocks' weights on the enlarged images.

    Shape:
        - Output: (B, M, C) per block, M the paths (smallest dilation first), C the block's channels
    """
    return {s: {n: a.float().flatten(2) for n, a in record(subject.model, enlarge(subject.images, s), names).items()}
            for s in scales}


def large_minus_small(weights: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per block, the mean over images and channels of ``a_large - a_small`` (fig. 3 of the SK paper).

    Shape:
        - weights: ``{block: (B, M, C)}``
        - Output: (number of blocks,) in the order of ``weights``
    """
    return torch.stack([(a[:, -1] - a[:, 0]).mean() for a in weights.values()])


def _receptive_field(subject: Subject, name: str, path: int) -> str:
    conv = subject.model.get_submodule(name).paths[path].conv
    size = [d * (k - 1) + 1 for d, k in zip(conv.dilation, conv.kernel_size)]
    return f"{size[0]}x{size[1]}"


@register_picture("sk", description="selective-kernel branch weights by stage and object size (SK paper, fig. 3-4)",
                  default_model="sk_resnet20", images="fashion-mnist", accepts=has(_SK),
                  needs="a selective kernel (SK) layer", options=("layer",))
def draw_sk(subject: Subject) -> Figure:
    shown = stage_layers(subject, _SK)  # checks the subject: a model with SK layers, images, a valid --layer
    names = layers_of(subject.model, _SK)
    weights = branch_weights(subject, names)
    large, small = _receptive_field(subject, names[0], -1), _receptive_field(subject, names[0], 0)
    fig = agg_figure(4.6 + 3.6 * len(shown), 3.6)
    axes = fig.subplots(1, 1 + len(shown), squeeze=False)[0]
    colours = line_colours(len(SCALES))
    for scale, colour in zip(SCALES, colours):
        axes[0].plot(range(len(names)), large_minus_small(weights[scale]).numpy(), "o-", color=colour,
                     label=f"object {scale:g}x")
    axes[0].axhline(0, color="0.5", linewidth=0.8)
    axes[0].set_xticks(range(len(names)), [n.rsplit(".", 1)[0] for n in names], rotation=60, fontsize=6)
    label_axes(axes[0], f"mean a({large}) - a({small}) per block", "block", "mean over channels and images")
    axes[0].legend(fontsize=7)
    for ax, (stage, name) in zip(axes[1:], shown.items()):
        for scale, colour in zip(SCALES, colours):
            a_large = weights[scale][name][:, -1].mean(dim=0)
            ax.plot(range(len(a_large)), a_large.numpy(), color=colour, linewidth=1.0, label=f"object {scale:g}x")
        label_axes(ax, f"{name} ({stage})", "channel index", f"weight of the {large} path")
    fig.suptitle(subject.title("Selective kernel: attention by object size"), fontsize=10)
    return fig
