"""One image file decoded with Pillow into 8-bit RGB pixels, whatever its bit depth, or a reason it cannot be.

Pillow's own conversion of a deep image to ``L`` or ``RGB`` clips each value to 0..255 instead of scaling it, so
a 16-bit image comes out (nearly) white. Deep modes are therefore scaled to 8 bits first, by these rules:

* ``I;16``, ``I;16B``, ``I;16L`` (16-bit grey, e.g. a 16-bit PNG or TIFF): ``round(v / 257)``, the linear map of
  0..65535 onto 0..255 (65535 -> 255, 32768 -> 128). It gives an 8-bit image widened by ``v * 257`` back exactly,
  as ``v >> 8`` does too, but rounds to the nearest 8-bit level where the shift truncates (400 -> 2, not 1).
* ``I`` (32-bit signed; Pillow opens 16-bit PGM/PPM and 32-bit integer TIFF this way, and scales a PGM of any
  ``maxval`` to 0..65535): taken as 16-bit, the same rule. A value outside 0..65535 has no agreed scale, so the
  file is reported unreadable with its range rather than guessed at.
* ``F`` (32-bit float): intensities in [0, 1], ``round(v * 255)``. A value outside [0, 1] or not finite: the file
  is reported unreadable with its range.

Every failure to decode one file -- not an image, truncated, a plugin's ``SyntaxError``, a header claiming more
pixels than ``PIL.Image.MAX_IMAGE_PIXELS`` (Pillow's decompression-bomb error, and its warning, which is made an
error here so such a file is never decoded) -- raises one of :func:`decode_errors`, so the caller can skip that
file, list it and go on. Pillow's bomb protection stays on: raise ``MAX_IMAGE_PIXELS`` to accept larger images.
"""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import numpy as np

__all__ = ["GREY_MODES", "decode", "decode_errors", "image_extensions", "to_8bit", "luma"]

GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_DEEP_RANGE = {"I": (0, 65535, 1 / 257), "F": (0.0, 1.0, 255.0)}  # mode -> (lowest, highest, scale to 8 bits)


def decode_errors() -> tuple[type[BaseException], ...]:
    """What decoding one damaged, unsupported or oversized file can raise (Pillow's plugins raise all of these)."""
    from PIL import Image

    return (OSError, ValueError, SyntaxError, EOFError, IndexError, KeyError, struct.error, zlib.error,
            Image.DecompressionBombError, Image.DecompressionBombWarning)


def image_extensions() -> frozenset[str]:
    """Lower-case suffixes (``".png"``) of the formats this Pillow can open."""
    from PIL import Image

    return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def to_8bit(img):  # PIL.Image.Image -> PIL.Image.Image; untyped to keep Pillow out of the import
    """``img`` itself when its mode is 8 bits per channel; a deep grey image scaled to mode ``L`` by the rules above.

    Raises:
        ValueError: an ``I`` or ``F`` image with values outside the range the rules give a scale for.
    """
    from PIL import Image

    mode = "I" if img.mode.startswith("I;16") else img.mode
    if mode not in _DEEP_RANGE:
        return img
    low, high, scale = _DEEP_RANGE[mode]
    values = np.asarray(img).astype(np.float64)  # np.asarray honours I;16B's byte order
    if values.size and (not np.isfinite(values).all() or values.min() < low or values.max() > high):
        raise ValueError(f"mode {img.mode} pixel values in [{values.min():g}, {values.max():g}], needed "
                         f"[{low:g}, {high:g}] (the range this mode is scaled to 8 bits from)")
    return Image.fromarray(np.rint(values * scale).astype(np.uint8))


def decode(path: Path, size: tuple[int, int] | None) -> tuple[np.ndarray, bool]:
    """(H, W, 3) uint8 RGB pixels of ``path``, resized to ``size`` (H, W) unless ``None``, and whether it is grey.

    Raises:
        one of :func:`decode_errors`: the file cannot be used; the message says why.
    """
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as img:
            img.load()
            grey = img.mode in GREY_MODES
            rgb = to_8bit(img).convert("RGB")
    if size is not None and rgb.size != (size[1], size[0]):
        rgb = rgb.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8), grey


def luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601-2 luma of uint8 RGB pixels (..., 3) with Pillow's fixed-point weights: what ``convert("L")`` gives.

    A grey pixel (R = G = B) keeps its value exactly, since the weights add up to 1 (65536 / 65536).
    """
    r, g, b = (rgb[..., i].astype(np.uint32) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)
