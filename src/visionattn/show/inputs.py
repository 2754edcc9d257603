"""The :class:`~visionattn.show.registry.Subject` a picture is drawn from: a model (a finished run's, or an untrained
default) and real images, as ``visionattn show`` and the report need them.

The model:

- ``checkpoint``: the directory of a finished run. A ``visionattn train`` run is rebuilt from its ``config.json``
  (the config, the data's input shape and classes, the normalisation) with the classification task's
  ``build_model`` and its final ``model.safetensors`` (:func:`visionattn.runs.load_classification_run`; nothing
  pickled is read); a ``visionattn igpt train`` run by :func:`visionattn.igpt_task.load_run` (its palette too).
- otherwise the picture's ``default_model`` (or ``model``), untrained, built after ``torch.manual_seed(0)``: for
  Fashion-MNIST images at 1x28x28 (10 classes), else for the model's own input (3x224x224 for the ImageNet models,
  1x28x28 for the Fashion-MNIST-size ones, whose photographs are then grey 28x28; an Image GPT at its configured
  size). Three channels are normalised with ImageNet's mean and std; one with the statistics the trainer computes
  on the Fashion-MNIST training split (:func:`visionattn.train_checks.normalization`, i.e.
  :func:`~visionattn.data.channel_stats`: 0.2860 and 0.3530, :data:`~visionattn.models.pretrained.
  FASHION_MNIST_MEAN`).

The images (``image``: files; otherwise the picture's source, :data:`~visionattn.show.registry.IMAGE_SOURCES`):
scikit-image's sample photographs, the Fashion-MNIST test set (``count`` of every class, labelled) or none. Every
image is decoded to 8-bit RGB (:func:`visionattn.data.decode.decode`), scaled so that it covers the model's input
and cropped at the centre, and made grey (ITU-R 601-2 luma, :func:`~visionattn.data.decode.luma`) for a
one-channel model. ``Subject.images`` is the model's input normalised as the run was trained; ``display`` the
same pixels in [0, 1] as (B, H, W, 3). An Image GPT reads palette tokens: its ``images`` are the pixels in [0, 1]
(B, 1, H, W), and ``options["palette"]`` (:class:`~visionattn.models.palette.Palette`; an untrained model's:
evenly spaced grey levels) encodes them (``palette.encode(subject.images)``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from visionattn.errors import TRAIN_EXTRA_INSTALL, UsageError, unknown_name
from visionattn.runs import check_run_dir, load_classification_run
from visionattn.show.registry import Picture, Subject

if TYPE_CHECKING:
    from visionattn.models.palette import Palette

__all__ = ["PHOTOS", "PHOTO_INPUT", "FASHION_INPUT", "DEFAULT_COUNT", "build_subject", "fit_images", "photo_pixels",
           "fashion_pixels", "file_pixels"]

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")  # scikit-image's bundled sample photographs (skimage.data)
PHOTO_INPUT = (3, 224, 224)
FASHION_INPUT = (1, 28, 28)
DEFAULT_COUNT = {"photos": len(PHOTOS), "fashion-mnist": 20}  # photographs; Fashion-MNIST images per class


# ------------------------------------------------------------------------------------------------ the model
@dataclass
class _Model:
    """The model side of a subject; ``shape`` (C, H, W) is what the images are fitted to (None: no images)."""

    model: nn.Module | None
    name: str
    trained: bool
    shape: tuple[int, int, int] | None
    mean: list[float] | None = None
    std: list[float] | None = None
    class_names: list[str] | None = None
    palette: Palette | None = None
    source: str = ""


def _check_accepts(picture: Picture, model: nn.Module, name: str, argument: str, what: str) -> None:
    """Refuse a model that has nothing the picture shows; ``what`` says where the model came from."""
    if picture.accepts is None or picture.accepts(model):
        return
    has = f"which does not have {picture.needs}" if picture.needs else "which it cannot draw"
    needed = (f"a run of a model that has it, or no {argument} for an untrained {picture.default_model}"
              if argument == "--checkpoint" else f"a model that has it, e.g. {picture.default_model}")
    raise UsageError(f"{argument}: {what} {name}, {has} (what the {picture.name} picture shows); needed {needed}")


def _from_checkpoint(picture: Picture, checkpoint: str | os.PathLike, model_name: str | None) -> _Model:
    from visionattn.train_checks import saved_task

    folder = Path(checkpoint)
    check_run_dir(folder, "--checkpoint")
    if saved_task(folder) == "next-pixel":
        from visionattn.igpt_task import load_run

        run = load_run(folder, "--checkpoint")
        loaded = _Model(run.model, run.cfg.model, True, run.image_shape, palette=run.palette)
    else:
        run = load_classification_run(folder, "--checkpoint")
        loaded = _Model(run.model, run.cfg.model, True, run.image_shape, run.mean, run.std, run.classes or None)
    if model_name is not None and model_name != loaded.name:
        raise UsageError(f"--model: got {model_name!r}, but the run in {folder} is of {loaded.name!r}; leave --model "
                         "out (the run says which model it trained) or give its name")
    _check_accepts(picture, loaded.model, loaded.name, "--checkpoint", f"{folder} is a run of")
    loaded.source = f"weights: {folder / 'model.safetensors'}"
    return loaded


def _own_input(name: str) -> tuple[int, int, int]:
    """The (C, H, W) input registered model ``name`` is made for (its ``input_size``: 1x28x28 for the
    Fashion-MNIST-size models, 3x224x224 for the ImageNet ones, which is also taken when it names none); read from
    a copy built on the meta device (no memory, no arithmetic)."""
    from visionattn.registry import create_model

    with torch.device("meta"):
        return tuple(getattr(create_model(name), "input_size", PHOTO_INPUT))  # type: ignore[return-value]


def _untrained(picture: Picture, model_name: str | None) -> _Model:
    """The picture's default model (or ``model_name``), untrained, built after ``torch.manual_seed(0)``: for
    Fashion-MNIST images at 1x28x28 with 10 classes, else for its own input (an Image GPT: its configured size);
    normalised as the trainer would for one channel (Fashion-MNIST), as ImageNet models are for three."""
    from visionattn.info import build_for_input
    from visionattn.models.pretrained import FASHION_MNIST_MEAN, FASHION_MNIST_STD, IMAGENET_MEAN, IMAGENET_STD
    from visionattn.registry import MODELS, get_model_entry

    name = model_name or picture.default_model
    if name not in MODELS:
        raise unknown_name("--model", "model", name, MODELS.names())
    generative = get_model_entry(name).family == "igpt"
    fashion = picture.images == "fashion-mnist" and not generative
    shape = None if generative else FASHION_INPUT if fashion else _own_input(name)
    torch.manual_seed(0)
    try:
        model, size = build_for_input(name, shape, **({"num_classes": 10} if fashion else {}))
    except (TypeError, ValueError) as err:
        wanted = "x".join(map(str, shape)) if shape else "its own"
        raise UsageError(f"--model: {name!r} cannot be built for {wanted} images: {err}") from None
    _check_accepts(picture, model, name, "--model", "got")
    loaded = _Model(model.eval(), name, False, tuple(size), source="weights: random (torch.manual_seed(0))")
    if generative:
        from visionattn.models.palette import Palette

        loaded.palette = Palette(torch.linspace(0, 1, model.vocab_size)[:, None])
    elif size[0] == 1:
        loaded.mean, loaded.std = list(FASHION_MNIST_MEAN), list(FASHION_MNIST_STD)
    else:
        loaded.mean, loaded.std = list(IMAGENET_MEAN), list(IMAGENET_STD)
    return loaded


# ----------------------------------------------------------------------------------------------- the images
def photo_pixels(count: int) -> list[np.ndarray]:
    """The first ``count`` of scikit-image's sample photographs (:data:`PHOTOS`) as (H, W, 3) uint8 RGB."""
    try:
        import skimage.data
    except ImportError:
        raise UsageError("the sample photographs need scikit-image, which is not installed; install the 'train' "
                         f"extra with {TRAIN_EXTRA_INSTALL}, or give --image files") from None
    return [np.asarray(getattr(skimage.data, name)(), dtype=np.uint8) for name in PHOTOS[:count]]


def fashion_pixels(count: int, data_dir: str | os.PathLike | None = None,
                   explicit: bool = True) -> tuple[list[np.ndarray], torch.Tensor, list[str]]:
    """The first ``count`` Fashion-MNIST test images of every class, class by class: (28, 28, 3) uint8 pixels
    (grey), their labels (N,) and the class names. Fewer where a class has fewer, unless ``explicit`` (a
    ``--count`` the user gave): then that is an error."""
    from visionattn.data import DataError
    from visionattn.data.fashion_mnist import load_fashion_mnist_test

    try:
        test = load_fashion_mnist_test(data_dir)
    except FileNotFoundError as err:
        raise DataError(f"--data-dir: {err}") from None
    per_class = [torch.nonzero(test.labels == c).flatten() for c in range(len(test.classes))]
    fewest = min(len(index) for index in per_class)
    if explicit and count > fewest:
        raise UsageError(f"--count: got {count}, needed at most {fewest} (the fewest test images of one class in "
                         f"{data_dir or 'the Fashion-MNIST test set'})")
    index = torch.cat([members[:count] for members in per_class])
    pixels = test.images[index, 0].numpy()
    return [np.repeat(p[..., None], 3, axis=-1) for p in pixels], test.labels[index], list(test.classes)


def _check_image_paths(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Every ``--image`` is an existing file (checked before any image or model is loaded)."""
    checked = []
    for path in map(Path, paths):
        if path.is_dir():
            raise UsageError(f"--image: got {str(path)!r}, a folder; needed an image file")
        if not path.is_file():
            raise UsageError(f"--image: got {str(path)!r}, which does not exist; needed an image file")
        checked.append(path)
    return checked


def file_pixels(paths: Sequence[str | os.PathLike]) -> list[np.ndarray]:
    """The ``--image`` files decoded to (H, W, 3) uint8 RGB (:func:`visionattn.data.decode.decode`)."""
    from visionattn.data.decode import decode, decode_errors

    pixels = []
    for path in _check_image_paths(paths):
        try:
            pixels.append(decode(path, None)[0])
        except decode_errors() as err:
            raise UsageError(f"--image: cannot read {str(path)!r} as an image ({type(err).__name__}: {err}); needed "
                             "an image file Pillow can open (PNG, JPEG, ...)") from None
    return pixels


def fit_images(pixels: Sequence[np.ndarray], shape: tuple[int, int, int]) -> torch.Tensor:
    """(H, W, 3) uint8 RGB images -> (B, C, H', W') uint8 for a (C, H', W') input: scaled (bilinear, Pillow) so
    that they cover H' x W', cropped at the centre, and made grey by luma for C = 1.

    Shape:
        - Input: B arrays (H_i, W_i, 3) uint8
        - Output: (B, C, H', W') uint8, C = 1 or 3
    """
    from PIL import Image

    from visionattn.data.decode import luma

    channels, height, width = shape
    if channels not in (1, 3):
        raise UsageError(f"input: the model reads {channels}-channel images; needed a grey (1) or RGB (3) model")
    fitted = []
    for rgb in pixels:
        h, w = rgb.shape[:2]
        scale = max(height / h, width / w)
        new_w, new_h = max(width, round(w * scale)), max(height, round(h * scale))
        img = Image.fromarray(rgb).resize((new_w, new_h), Image.Resampling.BILINEAR) if (new_h, new_w) != (h, w) \
            else Image.fromarray(rgb)
        top, left = (new_h - height) // 2, (new_w - width) // 2
        fitted.append(np.asarray(img.crop((left, top, left + width, top + height)), dtype=np.uint8))
    batch = np.stack(fitted)
    batch = luma(batch)[..., None] if channels == 1 else batch
    return torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).contiguous()


# ---------------------------------------------------------------------------------------------- the subject
def _check_count(count: int | None, picture: Picture, image: Sequence[str | os.PathLike] | None) -> None:
    if count is None:
        return
    if image or picture.images == "none":
        why = "the --image files are shown" if image else f"the {picture.name} picture draws no images"
        raise UsageError(f"--count: got {count}, but {why}; leave --count out")
    most = len(PHOTOS) if picture.images == "photos" else None
    if isinstance(count, bool) or not isinstance(count, int) or count < 1 or (most is not None and count > most):
        limit = f"1 to {most} (the sample photographs {', '.join(PHOTOS)})" if most else "a positive number per class"
        raise UsageError(f"--count: got {count!r}, needed {limit}")


def _check_pixel(options: dict[str, Any], shape: tuple[int, int, int] | None) -> None:
    if "pixel" not in options or shape is None:
        return
    y, x = options["pixel"]
    if not (0 <= y < shape[1] and 0 <= x < shape[2]):
        raise UsageError(f"--pixel: got {y},{x}, needed Y,X inside the model's {shape[1]}x{shape[2]} input (0 <= Y < "
                         f"{shape[1]}, 0 <= X < {shape[2]})")


def _trained_on_fashion_mnist(checkpoint: str | os.PathLike | None) -> bool:
    """Whether ``checkpoint`` is a run trained on Fashion-MNIST (False where its configuration cannot be read: the
    loader says why, later)."""
    try:
        return json.loads((Path(checkpoint) / "config.json").read_text())["data"]["name"] == "fashion-mnist"
    except (TypeError, OSError, ValueError, KeyError):
        return False


def _source_pixels(picture: Picture, image: Sequence[str | os.PathLike] | None, count: int | None,
                   data_dir: str | os.PathLike | None,
                   checkpoint: str | os.PathLike | None) -> tuple[list[np.ndarray], torch.Tensor | None,
                                                                  list[str] | None, str]:
    """(pixels, labels, class names, caption) of the images to show. A picture of photographs drawn from a run
    trained on Fashion-MNIST shows Fashion-MNIST test images instead (one a class unless ``count`` says more): what
    the model was trained to see, not photographs shrunk to 28 x 28 grey."""
    if image:
        return file_pixels(image), None, None, ", ".join(map(str, image))
    per_class = DEFAULT_COUNT["fashion-mnist"]
    if picture.images == "photos":
        if checkpoint is None or not _trained_on_fashion_mnist(checkpoint):
            n = count or DEFAULT_COUNT["photos"]
            return photo_pixels(n), None, None, f"scikit-image's photographs {', '.join(PHOTOS[:n])}"
        per_class = 1
    pixels, labels, classes = fashion_pixels(count or per_class, data_dir, count is not None)
    return pixels, labels, classes, f"{len(pixels)} Fashion-MNIST test images ({len(pixels) // len(classes)} a class)"


def _check_arguments(picture: Picture, checkpoint: Any, image: list[Any], model: str | None,
                     count: int | None) -> None:
    """What can be refused before anything is read."""
    if not picture.default_model and (checkpoint is not None or model is not None):
        given = "--checkpoint" if checkpoint is not None else "--model"
        raise UsageError(f"{given}: the {picture.name} picture draws no model; leave {given} out")
    if image and picture.images == "none":
        raise UsageError(f"--image: the {picture.name} picture draws no images; leave --image out")
    _check_count(count, picture, image)
    _check_image_paths(image)


def build_subject(picture: Picture, *, checkpoint: str | os.PathLike | None = None,
                  image: str | os.PathLike | Sequence[str | os.PathLike] | None = None, model: str | None = None,
                  count: int | None = None, data_dir: str | os.PathLike | None = None,
                  options: dict[str, Any] | None = None) -> Subject:
    """The subject ``picture`` is drawn from (see the module docstring). Every argument is checked, and the images
    read, before a model is built; a bad one is a :class:`UsageError` naming its option. ``data_dir`` is used
    only where Fashion-MNIST images are shown. A picture that needs no model (``default_model`` "") gets none, and
    ``trained`` True: nothing in it is random."""
    image = [image] if isinstance(image, (str, os.PathLike)) else list(image or [])
    options = dict(options or {})
    _check_arguments(picture, checkpoint, image, model, count)
    shown = _source_pixels(picture, image, count, data_dir, checkpoint) if picture.images != "none" else None
    if not picture.default_model:
        return Subject(None, "", True, options=options)
    loaded = _from_checkpoint(picture, checkpoint, model) if checkpoint is not None else _untrained(picture, model)
    if loaded.palette is not None:
        options["palette"] = loaded.palette
    subject = Subject(loaded.model, loaded.name, loaded.trained, class_names=loaded.class_names,
                      source=loaded.source, options=options)
    if shown is None or loaded.shape is None:
        return subject
    _check_pixel(options, loaded.shape)
    pixels, labels, classes, caption = shown
    fitted = fit_images(pixels, loaded.shape)
    if loaded.palette is not None:  # an Image GPT reads palette tokens: options["palette"].encode(images)
        subject.images = fitted.float() / 255
    else:
        from visionattn.data import Normalize

        subject.images = Normalize(loaded.mean, loaded.std)(fitted)  # type: ignore[arg-type]
    subject.display = (fitted.float() / 255).expand(-1, 3, -1, -1).permute(0, 2, 3, 1).contiguous()
    subject.labels, subject.class_names = labels, loaded.class_names or classes
    subject.source = f"{loaded.source}; images: {caption}"
    return subject
