"""Image GPT completions (Chen et al. 2020, fig. 1): test images with their top half kept and the bottom half
sampled pixel by pixel from the model, a few samples each, beside the image as the palette renders it. The
sampling is :func:`visionattn.igpt_commands.complete_images`, the one ``visionattn igpt complete`` uses.

Options: ``rows`` (how many of the subject's images, default 5: the first of each class where the labels are
known), ``completions`` (samples per image, default 3), ``seed`` (default 0), ``temperature`` (default 1.0),
``palette`` (the run's :class:`~visionattn.models.palette.Palette`; without one, e.g. for an untrained model,
``vocab_size`` evenly spaced grey levels).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING

import torch

from visionattn.errors import UsageError, check_positive
from visionattn.layers.helpers import check_positive_int
from visionattn.models.igpt import ImageGPT
from visionattn.models.palette import Palette
from visionattn.show.registry import Subject, register_picture
from visionattn.show.token_support import COLORS, new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["completion_grid", "pick_rows", "draw_igpt"]


def pick_rows(subject: Subject) -> torch.Tensor:
    """Indices of the images completed: the ``rows`` option (default 5, at most the images there are), one per
    class in class order where the subject's labels are known, else the first ones."""
    count = len(subject.display)
    rows = min(check_positive_int("rows", subject.options.get("rows", 5)), count)
    if subject.labels is None:
        return torch.arange(rows)
    first = {}
    for i, label in enumerate(subject.labels.tolist()):
        first.setdefault(label, i)
    chosen = [first[label] for label in sorted(first)][:rows]
    rest = [i for i in range(count) if i not in chosen]
    return torch.tensor(chosen + rest[: rows - len(chosen)])


def completion_grid(subject: Subject) -> tuple[torch.Tensor, str]:
    """The subject's display images, grey 8-bit, completed: (N, 1 + completions, C, H, W) in [0, 1] (the first
    column the palette's rendering of the image), and a note on the palette."""
    from visionattn.igpt_commands import complete_images

    model = subject.model
    completions = check_positive_int("completions", subject.options.get("completions", 3))
    seed = check_positive_int("seed", subject.options.get("seed", 0), minimum=0)
    temperature = check_positive("temperature", subject.options.get("temperature", 1.0))
    palette = subject.options.get("palette")
    note = ""
    if palette is None:
        palette = Palette(torch.linspace(0, 1, model.vocab_size)[:, None])
        note = f", {model.vocab_size} evenly spaced grey levels (no run palette)"
    if subject.display is None:
        raise UsageError(f"{subject.model_name}: the igpt picture needs images, and the subject has none")
    height, width = subject.display.shape[1:3]
    if (height, width) != tuple(model.image_size):
        raise UsageError(f"images: got {height}x{width} images, needed the model's {model.image_size[0]}x"
                         f"{model.image_size[1]}")
    display = subject.display[pick_rows(subject)]
    grey = display.mean(-1) if palette.channels == 1 else display.permute(0, 3, 1, 2)
    pixels = (grey.reshape(len(grey), palette.channels, height, width) * 255).round().to(torch.uint8)
    run = SimpleNamespace(model=model, palette=palette, image_shape=(palette.channels, height, width))
    with torch.no_grad():
        grid = complete_images(run, pixels, completions, temperature=temperature, seed=seed)
    return grid, note


@register_picture("igpt", description="Image GPT completions: test images, top half kept, the rest sampled "
                  "(options rows, completions, seed, temperature)", default_model="igpt_fashion",
                  images="fashion-mnist", accepts=lambda model: isinstance(model, ImageGPT),
                  needs="an Image GPT (ImageGPT)", options=("rows", "completions", "seed", "temperature"))
def draw_igpt(subject: Subject) -> Figure:
    grid, note = completion_grid(subject)
    rows, columns, channels, height, width = grid.shape
    fig, axes = new_figure(rows * columns, columns=columns, size=1.6)
    for i, ax in enumerate(axes):
        cell = grid[i // columns, i % columns]
        ax.imshow(cell[0].numpy() if channels == 1 else cell.permute(1, 2, 0).numpy(), cmap="gray", vmin=0, vmax=1)
        if i % columns:
            ax.axhline(height // 2 - 0.5, color=COLORS["pixel"], linewidth=0.8)
        if i < columns:
            ax.set_title("image" if i == 0 else f"sample {i}", fontsize=8)
    fig.suptitle(f"{subject.title('Image GPT completions')}\ntop {height // 2} rows kept, below the line sampled"
                 f"{note}", fontsize=8)
    return fig
