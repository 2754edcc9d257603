"""``visionattn show MECHANISM``: draw what an attention mechanism computed on real images, as a PNG.

The model is a finished run's (``--checkpoint RUN``) or the picture's default, untrained (its title says so); the
images are ``--image`` files or the picture's own (scikit-image's photographs, Fashion-MNIST test images): see
:mod:`visionattn.show.inputs`. ``visionattn show --list`` (or ``visionattn show list``) lists the pictures.

Importing this module does not import torch: the command line parses the options first. MECHANISM is a plain
string, checked against the pictures' registry (:mod:`visionattn.show.catalog`) with a "did you mean" when the
command runs; the help lists :data:`PICTURE_NAMES`, which a test keeps equal to the registry's names.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from visionattn.argtypes import non_negative_int, positive_int
from visionattn.errors import UsageError, check_png_out, did_you_mean

if TYPE_CHECKING:
    from visionattn.show.registry import Picture

__all__ = ["PICTURE_NAMES", "DEFAULT_OUT", "DPI", "add_arguments", "run", "list_pictures", "check_out"]

# the registered pictures (visionattn.show.catalog), kept here so that --help needs no torch; a test keeps them equal
PICTURE_NAMES = ("cbam", "bam", "se", "eca", "ge", "sk", "sasa", "swin", "halo", "vit", "sparse", "igpt")
DEFAULT_OUT = "runs/show/{}.png"
DPI = 120
_OWN_FLAGS = ("pixel", "head", "layer")  # the options with a flag of their own


# ------------------------------------------------------------------------------------- argument types (no torch)
def pixel_arg(text: str) -> tuple[int, int]:
    """``"12,30"`` -> ``(12, 30)``: a pixel's row and column, both >= 0."""
    try:
        y, x = (int(p) for p in text.split(","))
    except ValueError:
        y = x = -1
    if min(y, x) < 0:
        raise argparse.ArgumentTypeError(f"got {text!r}, needed Y,X: two integers >= 0, the row and column of a "
                                         "pixel of the model's input (e.g. 112,112)")
    return y, x


def option_arg(text: str) -> tuple[str, Any]:
    """``"completions=5"`` -> ``("completions", 5)``: a picture option, its value read as JSON (a number, a list,
    true/false) or else kept as text."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"got {text!r}, needed KEY=VALUE with a name for KEY (e.g. completions=5)")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("mechanism", nargs="?", default=None, metavar="MECHANISM",
                   help=f"the picture to draw: {', '.join(PICTURE_NAMES)}, or list (required unless --list)")
    p.add_argument("--checkpoint", default=None, metavar="RUN",
                   help="the directory of a finished `visionattn train` (or `igpt train`) run whose model is shown "
                        "(default: the picture's default model, untrained, which its title says)")
    p.add_argument("--model", default=None, metavar="NAME",
                   help="the untrained model to show; with --checkpoint it must be the run's (default: the "
                        "picture's own, see --list)")
    p.add_argument("--image", nargs="+", default=None, metavar="PATH",
                   help="image files to show, fitted to the model's input (default: the picture's own images: "
                        "scikit-image's photographs or Fashion-MNIST test images)")
    p.add_argument("--count", type=positive_int, default=None, metavar="N",
                   help="how many photographs (at most 4), or Fashion-MNIST test images of each class "
                        "(default 4 photographs, 20 images a class)")
    p.add_argument("--pixel", type=pixel_arg, default=None, metavar="Y,X",
                   help="the query pixel, for pictures of one pixel's attention (default: the picture's choice)")
    p.add_argument("--head", type=non_negative_int, default=None, metavar="H",
                   help="the attention head to show (default: the picture's choice)")
    p.add_argument("--layer", default=None, metavar="NAME",
                   help="the layer to show: its module name (e.g. layer2.0.attn), the name of the module holding it "
                        "(e.g. layer2.0), or its index among the layers the picture can show (default: the "
                        "picture's choice)")
    p.add_argument("--option", type=option_arg, action="append", default=None, metavar="KEY=VALUE",
                   help="another of the picture's options, e.g. completions=5 for igpt or stride=4 for sparse; "
                        "--list names each picture's (repeatable; default: the picture's choices)")
    p.add_argument("--out", default=None, metavar="FILE.png",
                   help=f"the PNG file to write (default {DEFAULT_OUT.format('MECHANISM')}); an existing file is "
                        "kept unless --overwrite")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file (default: refuse)")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="folder holding the Fashion-MNIST files (default: $VISIONATTN_DATA_DIR, then "
                        "/usr/share/datasets/fashion-mnist)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch CPU threads (default: torch's choice)")
    p.add_argument("--list", action="store_true", help="list the pictures and their default models (default: off)")


# ------------------------------------------------------------------------------------------------ the command
def list_pictures() -> str:
    """A table of the registered pictures: name, default model, images, description."""
    from visionattn.complexity import format_table
    from visionattn.show.catalog import PICTURES

    rows = [{"name": p.name, "default model": p.default_model or "-", "images": p.images,
             "description": p.description} for p in PICTURES.values()]
    return (f"{len(rows)} pictures (visionattn show NAME [--checkpoint RUN])\n\n"
            + format_table(rows, ["name", "default model", "images", "description"]))


def check_out(out: str | None, mechanism: str, overwrite: bool = False) -> Path:
    """The PNG file to write (default :data:`DEFAULT_OUT`, whose folder is made when the picture is saved), checked
    before any work by :func:`~visionattn.errors.check_png_out`, the check of every command that writes a PNG."""
    if out is None:
        return check_png_out(DEFAULT_OUT.format(mechanism), f"--out (default {DEFAULT_OUT.format('MECHANISM')})",
                             overwrite=overwrite, make_folder=True)
    return check_png_out(out, "--out", overwrite=overwrite)


def _options(args: argparse.Namespace, picture: Picture) -> dict[str, Any]:
    """The picture options given (a picture takes its own default for the others): ``--pixel``, ``--head``,
    ``--layer`` and each ``--option KEY=VALUE``, every key once and each one the picture reads."""
    options = {name: getattr(args, name) for name in _OWN_FLAGS if getattr(args, name) is not None}
    for key, value in args.option or []:
        if key in _OWN_FLAGS:
            raise UsageError(f"--option: got {key}={value!r}; give it as --{key}")
        if key in options:
            raise UsageError(f"--option: got {key!r} twice ({key}={options[key]!r} and {key}={value!r}), needed each "
                             "key once")
        options[key] = value
    for key in options:
        if key not in picture.options:
            flag = f"--{key}" if key in _OWN_FLAGS else f"--option {key}"
            takes = f"its options are {', '.join(picture.options)}" if picture.options else "it takes no option"
            raise UsageError(f"{flag}: the {picture.name} picture does not read {key!r}"
                             f"{did_you_mean(key, picture.options)}; {takes}")
    return options


def save_figure(figure: Any, path: Path) -> Path:
    """Write ``figure`` as a PNG (:data:`DPI`) atomically (never half a file), then close it."""
    from visionattn.checkpoint import atomic_write
    from visionattn.show.figures import png_bytes

    return atomic_write(path, png_bytes(figure, DPI))


def _picture(mechanism: str | None) -> Picture:
    from visionattn.show.catalog import PICTURES
    from visionattn.show.registry import get_picture

    if mechanism is None:
        raise UsageError(f"MECHANISM: missing; needed one of {', '.join(PICTURES)} (visionattn show --list "
                         "describes them)")
    return get_picture(mechanism)


def _check_data_dir(args: argparse.Namespace, picture: Picture) -> None:
    if args.data_dir is not None and (args.image or picture.images != "fashion-mnist"):
        shown = "the --image files" if args.image else f"the {picture.name} picture's {picture.images} images"
        raise UsageError(f"--data-dir: applies to Fashion-MNIST images only, and {shown} are shown; leave it out")


def run(args: argparse.Namespace) -> int:
    """``visionattn show``: check everything, build the subject, draw, save the PNG, say what it shows."""
    import matplotlib

    matplotlib.use("Agg")
    if args.list or args.mechanism == "list":
        print(list_pictures())
        return 0
    picture = _picture(args.mechanism)
    options = _options(args, picture)
    _check_data_dir(args, picture)
    out = check_out(args.out, picture.name, args.overwrite)
    import torch

    from visionattn.show.inputs import build_subject

    if args.threads:
        torch.set_num_threads(args.threads)
    subject = build_subject(picture, checkpoint=args.checkpoint, image=args.image, model=args.model,
                            count=args.count, data_dir=args.data_dir, options=options)
    save_figure(picture.draw(subject), out)
    print(out)
    shows = subject.title(picture.description) if subject.model is not None else picture.description
    print(f"{shows}{'; ' + subject.source if subject.source else ''}")
    return 0
