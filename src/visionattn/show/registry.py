"""The pictures ``visionattn show`` can draw: names -> :class:`Picture`, and the :class:`Subject` each is drawn from.

A picture is a pure function of its subject (no file or argument handling): ``draw(subject) -> Figure``. The
command (:mod:`visionattn.show.command`) and the report (:mod:`visionattn.show.report`) build the subject -- a
trained run's model or an untrained default, real images -- and save the figure.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from visionattn.errors import unknown_name

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure
    from torch import nn

__all__ = ["IMAGE_SOURCES", "Subject", "Picture", "PICTURES", "register_picture", "get_picture"]

# where a picture's default images come from: photographs (scikit-image's samples), Fashion-MNIST test images
# (a few of every class), or none (the picture needs no image, e.g. the sparse attention patterns)
IMAGE_SOURCES = ("photos", "fashion-mnist", "none")


@dataclass
class Subject:
    """What a picture is drawn from.

    Attributes:
        model: the network in eval mode (None for a picture that needs none).
        model_name: its registry name.
        trained: False for an untrained model: the picture's title says so.
        images: (B, C, H, W) the model's input, normalised as it was trained.
        display: (B, H, W, 3) the same images for drawing, floats in [0, 1].
        labels: (B,) class indices where known, else None; class_names: their names.
        source: where the images and weights came from, for the caption (e.g. a run directory and a file name).
        options: picture-specific choices from the command line (e.g. ``pixel`` for SASA, ``head``).
    """

    model: nn.Module | None
    model_name: str
    trained: bool
    images: torch.Tensor | None = None
    display: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    class_names: list[str] | None = None
    source: str = ""
    options: dict[str, Any] = field(default_factory=dict)

    def title(self, what: str) -> str:
        """``what`` with the model and, for an untrained one, the warning every picture carries."""
        state = "" if self.trained else " (untrained: random weights)"
        return f"{what}: {self.model_name}{state}"


@dataclass(frozen=True)
class Picture:
    """A picture ``visionattn show NAME`` draws.

    Attributes:
        name: the command's MECHANISM argument.
        description: one line for ``--help`` and the report.
        draw: ``draw(subject) -> matplotlib Figure``.
        default_model: the model used untrained when no ``--checkpoint`` is given ("" when none is needed).
        images: the default images (:data:`IMAGE_SOURCES`).
        accepts: whether a model (e.g. a checkpoint's) has what the picture shows; None accepts any.
        needs: what ``accepts`` looks for, for the error when it refuses (e.g. "a CBAM or BAM layer").
    """

    name: str
    description: str
    draw: Callable[[Subject], Figure]
    default_model: str
    images: str = "photos"
    accepts: Callable[[nn.Module], bool] | None = None
    needs: str = ""
    options: tuple[str, ...] = ()


PICTURES: dict[str, Picture] = {}
Draw = Callable[[Subject], "Figure"]


def register_picture(name: str, *, description: str, default_model: str, images: str = "photos",
                     accepts: Callable[[nn.Module], bool] | None = None,
                     needs: str = "", options: tuple[str, ...] = ()) -> Callable[[Draw], Draw]:
    """Decorator: register ``draw`` as the picture ``name``."""
    if images not in IMAGE_SOURCES:
        raise ValueError(f"images: got {images!r}, needed one of {IMAGE_SOURCES}")

    def add(draw: Draw) -> Draw:
        if name in PICTURES:
            raise ValueError(f"picture {name!r} is registered twice")
        PICTURES[name] = Picture(name, description, draw, default_model, images, accepts, needs, tuple(options))
        return draw

    return add


def get_picture(name: str) -> Picture:
    """The picture ``name``, with a "did you mean" for a typo."""
    if name not in PICTURES:
        raise unknown_name("MECHANISM", "picture", name, PICTURES)
    return PICTURES[name]
