"""The vision transformer's attention: the class token's attention per head in one layer, and the attention
rollout of all layers (Abnar & Zuidema 2020, :mod:`visionattn.show.rollout`), each upsampled over the image.

Dosovitskiy et al. 2021 show the rollout in fig. 6 (and appendix D.8); the class token's row is the attention
that feeds the classifier (eq. 4 reads the class token's output).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from visionattn.layers.attention_core import Attention
from visionattn.models.vit import VisionTransformer
from visionattn.show.figures import modules_of
from visionattn.show.registry import Subject, register_picture
from visionattn.show.rollout import attention_rollout
from visionattn.show.token_support import (
    new_figure,
    overlay,
    pick_heads,
    pick_image,
    pick_layer,
    record_one,
    show_image,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["ClassTokenView", "vit_view", "draw_vit"]


@dataclass
class ClassTokenView:
    """The class token's attention over the patch grid: per head shown in ``layer`` (heads, gh, gw), and the
    rollout of every layer (gh, gw); ``patch`` pixels per token."""

    layer: str
    heads: list[int]
    maps: torch.Tensor
    rollout: torch.Tensor
    patch: int


def _has_class_token(model: nn.Module) -> bool:
    return isinstance(model, VisionTransformer) and model.cls_token is not None


def vit_view(subject: Subject) -> ClassTokenView:
    """One recorded forward pass of every attention step: the class token's row of the chosen layer's weights
    (default the last), and of the rollout, over the patch tokens."""
    model = subject.model
    steps = modules_of(model, lambda m: isinstance(m, Attention))
    image = pick_image(subject)
    name = pick_layer(subject, steps, list(steps)[-1], "attention")
    records, _ = record_one(subject, image, list(steps))
    grid = model.feature_grid(subject.images.shape[-2:])
    first = model.num_prefix_tokens
    weights = records[name][0]  # (heads, N, N)
    heads = pick_heads(subject, weights.shape[0])
    maps = weights[heads, 0, first:].float().view(len(heads), *grid)
    rollout = attention_rollout([records[n] for n in steps])[0, 0, first:].view(*grid)
    return ClassTokenView(name, heads, maps, rollout, model.patch_size)


@register_picture("vit", description="ViT: the class token's attention per head (last layer) and the attention "
                  "rollout (options layer, head)",
                  default_model="vit_small_patch16_224", images="photos", accepts=_has_class_token,
                  needs="a vision transformer with a class token (VisionTransformer)",
                  options=("image", "layer", "head"))
def draw_vit(subject: Subject) -> Figure:
    view = vit_view(subject)
    fig, axes = new_figure(2 + len(view.heads))
    display = subject.display[pick_image(subject)]
    height, width = display.shape[:2]
    gh, gw = view.rollout.shape
    extent = (-0.5, gw * view.patch - 0.5, gh * view.patch - 0.5, -0.5)  # the (padded) patch grid
    vmax = float(view.maps.max())
    for ax in axes:
        show_image(ax, display)
    for ax, head, values in zip(axes[1:], view.heads, view.maps):
        image = overlay(ax, values, vmax, extent, alpha=0.7, interpolation="bilinear")
        ax.set_title(f"{view.layer}, head {head}", fontsize=8)
    fig.colorbar(image, ax=axes, shrink=0.8, label="class token's attention (heads)")
    # the rollout's row is close to uniform (the identity's share): its own scale, from its least to its most
    rolled = overlay(axes[-1], view.rollout, float(view.rollout.max()), extent, alpha=0.7, interpolation="bilinear",
                     vmin=float(view.rollout.min()))
    axes[-1].set_title("rollout, all layers", fontsize=8)
    bar = fig.colorbar(rolled, ax=axes[-1], location="bottom", shrink=0.8, label="rollout (own scale)")
    bar.ax.locator_params(nbins=3)  # a narrow bar: a few ticks, so the labels do not run together
    for ax in axes:
        ax.set_xlim(-0.5, width - 0.5)
        ax.set_ylim(height - 0.5, -0.5)
    axes[0].set_title("image", fontsize=8)
    fig.suptitle(subject.title("ViT: the class token's attention"), fontsize=10)
    return fig
