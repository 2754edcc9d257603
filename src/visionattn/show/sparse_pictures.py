"""The Sparse Transformer's factorized patterns drawn as in Child et al. 2019, fig. 3: for one query pixel of a
small image in raster order, the pixels each of the two heads attends (A(1) and A(2) of the strided and the
fixed pattern, sec. 4.3), and the n x n connectivity matrix of both factors (query rows, key columns). No model:
the masks are :func:`visionattn.layers.sparse_patterns.sparse_masks`, the ones the layers apply.

Options: ``size`` (the image's side, default 8), ``stride`` (l, default the side: the strided pattern's row and
column), ``summary`` (the fixed pattern's c, default :func:`~visionattn.layers.sparse_patterns.default_summary`),
``pixel`` ((y, x) of the query in the small image, default its centre).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from visionattn.layers.helpers import check_positive_int
from visionattn.layers.sparse_patterns import PATTERNS, check_pattern, sparse_masks
from visionattn.show.registry import Subject, register_picture
from visionattn.show.token_support import COLORS, new_figure, pick_pixel

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["NONE", "FIRST", "SECOND", "BOTH", "QUERY", "PATTERN_COLORS", "pattern_codes", "draw_sparse"]

# what each cell shows; one colour each (light and dark blue for the two heads, as the paper's figure)
NONE, FIRST, SECOND, BOTH, QUERY = range(5)
PATTERN_COLORS = ("#f0f0f0", "#08519c", "#6baed6", "#984ea3", COLORS["pixel"])
_LABELS = ("not attended", "head 1: A(1)", "head 2: A(2)", "both heads", "the query")


def pattern_codes(pattern: str, size: int, stride: int, summary: int | None,
                  pixel: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The cells of the picture: for the query pixel, which factor reaches each pixel of the size x size image
    (NONE / FIRST / SECOND / BOTH, the query itself QUERY); and the same code for every (query, key) pair.

    Shape:
        - Output: (size, size) and (size^2, size^2), long
    """
    first, second = sparse_masks(pattern, size * size, stride, summary)
    matrix = first.long() * FIRST + second.long() * SECOND  # FIRST + SECOND == BOTH
    query = pixel[0] * size + pixel[1]
    image = matrix[query].clone()
    image[query] = QUERY
    return image.view(size, size), matrix


def _options(subject: Subject) -> tuple[int, int, int | None, tuple[int, int]]:
    size = check_positive_int("size", subject.options.get("size", 8), minimum=2)
    stride = check_positive_int("stride", subject.options.get("stride", size))
    summary = subject.options.get("summary")
    check_pattern("fixed", stride, summary)
    return size, stride, summary, pick_pixel(subject, (size, size))


@register_picture("sparse", description="Sparse Transformer's strided and fixed patterns for one pixel and their "
                  "connectivity matrices (fig. 3; options size, stride, summary, pixel)",
                  default_model="", images="none", options=("size", "stride", "summary", "pixel"))
def draw_sparse(subject: Subject) -> Figure:
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch, Rectangle

    size, stride, summary, pixel = _options(subject)
    fig, axes = new_figure(4, columns=2, size=3.5)
    cmap = ListedColormap(PATTERN_COLORS)
    query = pixel[0] * size + pixel[1]
    for column, pattern in enumerate(PATTERNS):
        c = check_pattern(pattern, stride, summary if pattern == "fixed" else None)
        image, matrix = pattern_codes(pattern, size, stride, c, pixel)
        top, bottom = axes[column], axes[2 + column]
        top.imshow(image.numpy(), cmap=cmap, vmin=-0.5, vmax=len(PATTERN_COLORS) - 0.5)
        top.set_xticks([v - 0.5 for v in range(1, size)], minor=True)
        top.set_yticks([v - 0.5 for v in range(1, size)], minor=True)
        top.grid(which="minor", color="white", linewidth=0.8)
        top.tick_params(which="minor", length=0)
        top.set_title(f"{pattern} (l = {stride}{'' if c is None else f', c = {c}'}): pixel {pixel}", fontsize=9)
        bottom.imshow(matrix.numpy(), cmap=cmap, vmin=-0.5, vmax=len(PATTERN_COLORS) - 0.5)
        bottom.add_patch(Rectangle((-0.5, query - 0.5), size * size, 1, fill=False, edgecolor=COLORS["pixel"],
                                   linewidth=1.0))
        bottom.set_title(f"{pattern}: query (row) x key (column)", fontsize=9)
    handles = [Patch(facecolor=color, edgecolor="#999999", label=label)
               for color, label in zip(PATTERN_COLORS, _LABELS)]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8)
    fig.suptitle(f"Sparse Transformer patterns on a {size}x{size} image in raster order (Child et al. 2019, "
                 "fig. 3)", fontsize=10)
    return fig
