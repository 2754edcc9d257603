"""``visionattn igpt train|sample|complete|probe``: train an Image GPT, draw images from it, complete test images,
and probe its features with a linear classifier.

``RUN`` is the directory of an ``igpt train`` run: its ``config.json`` and final ``model.safetensors`` (weights and
palette, read without unpickling anything; :func:`visionattn.igpt_task.load_run`). Pictures are PNG grids: one
cell per image, each pixel drawn as a ``--scale`` x ``--scale`` block, cells 2 pixels apart on a white ground.

Importing this module does not import torch: the command line parses and checks the options first.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from visionattn.argtypes import non_negative_float, non_negative_int, positive_float, positive_int
from visionattn.errors import UsageError, check_png_out

if TYPE_CHECKING:
    import torch

__all__ = ["add_arguments", "run", "SUBCOMMANDS", "grid_size", "save_grid", "sample_images", "complete_images"]

PAD = 2  # pixels between the cells of a grid
_RUN_HELP = "the run directory of `visionattn igpt train` (its final weights, config and palette) (required)"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, metavar="RUN", help=_RUN_HELP)
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")


def _sampling(p: argparse.ArgumentParser) -> None:
    p.add_argument("--temperature", type=positive_float, default=1.0,
                   help="softmax temperature: below 1 sharper, above 1 flatter (default 1.0)")
    p.add_argument("--top-k", type=positive_int, default=None,
                   help="draw among the k most likely levels only (default: all levels)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the draws (default 0)")
    p.add_argument("--scale", type=positive_int, default=4, help="screen pixels per image pixel (default 4)")
    p.add_argument("--out", required=True, metavar="PNG", help="the PNG file to write (required)")


# ------------------------------------------------------------------------------------------------ pictures
def grid_size(rows: int, columns: int, height: int, width: int, scale: int) -> tuple[int, int]:
    """(width, height) in pixels of a grid of ``rows`` x ``columns`` cells of ``height`` x ``width`` images."""
    return columns * width * scale + (columns + 1) * PAD, rows * height * scale + (rows + 1) * PAD


def save_grid(images: torch.Tensor, path: str | Path, scale: int = 4) -> Path:
    """Write ``images`` (rows, columns, C, H, W), values in [0, 1], as a PNG grid (:func:`grid_size`); a cell of
    NaN stays blank (white)."""
    import torch
    import torch.nn.functional as F
    from einops import rearrange
    from PIL import Image

    channels = images.shape[2]
    cells = images.float().clamp(0, 1).nan_to_num(1.0).repeat_interleave(scale, -2).repeat_interleave(scale, -1)
    cells = F.pad(cells, (0, PAD, 0, PAD), value=1.0)  # a border right of and below every cell ...
    canvas = F.pad(rearrange(cells, "r c ch h w -> ch (r h) (c w)"), (PAD, 0, PAD, 0), value=1.0)  # ... and the rest
    pixels = (canvas * 255).round().to(torch.uint8)
    array = pixels[0].numpy() if channels == 1 else rearrange(pixels, "ch h w -> h w ch").numpy()
    path = Path(path)
    Image.fromarray(array, mode="L" if channels == 1 else "RGB").save(path, format="PNG")
    return path


# ------------------------------------------------------------------------------------------------ sampling
def _load(args: argparse.Namespace) -> Any:
    """Check ``--out`` (before any work; an existing file is replaced), set the threads, load the run."""
    import torch

    from visionattn.igpt_task import load_run

    if getattr(args, "out", None) is not None:
        check_png_out(args.out, "--out")
    if args.threads:
        torch.set_num_threads(args.threads)
    return load_run(args.checkpoint)


def _check_top_k(top_k: int | None, levels: int) -> None:
    if top_k is not None and top_k > levels:
        raise UsageError(f"--top-k: got {top_k}, needed at most the run's {levels} palette levels")


def sample_images(run: Any, num: int, temperature: float = 1.0, top_k: int | None = None,
                  seed: int = 0) -> torch.Tensor:
    """``num`` unconditional samples of ``run`` (an :class:`~visionattn.igpt_task.IGPTRun`) as (num, C, H, W)."""
    import torch

    from visionattn.models.igpt_sample import sample

    tokens = sample(run.model, num, temperature=temperature, top_k=top_k,
                    generator=torch.Generator().manual_seed(seed))
    return run.palette.decode(tokens, run.image_shape)


def complete_images(run: Any, images: torch.Tensor, completions: int, temperature: float = 1.0,
                    top_k: int | None = None, seed: int = 0) -> torch.Tensor:
    """8-bit ``images`` (N, C, H, W) with their top half (H // 2 rows) kept and the rest sampled ``completions``
    times: (N, 1 + completions, C, H, W), the first column the images as the palette renders them."""
    import torch

    from visionattn.igpt_task import encode_images
    from visionattn.models.igpt_sample import sample

    _, height, width = run.image_shape
    tokens = encode_images(run.palette, images).long()
    prefix = tokens[:, :(height // 2) * width].repeat_interleave(completions, 0)
    drawn = sample(run.model, prefix.shape[0], prefix=prefix, temperature=temperature, top_k=top_k,
                   generator=torch.Generator().manual_seed(seed))
    grid = torch.cat([tokens[:, None], drawn.view(len(images), completions, -1)], dim=1)
    return run.palette.decode(grid.flatten(0, 1), run.image_shape).view(len(images), 1 + completions,
                                                                         *run.image_shape)


def _sample_args(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--num", type=positive_int, default=16, help="images to draw (default 16)")
    p.add_argument("--columns", type=positive_int, default=None,
                   help="grid columns (default: the square root of --num, rounded up)")
    _sampling(p)


def _sample_run(args: argparse.Namespace) -> int:
    import math

    import torch

    run = _load(args)
    _check_top_k(args.top_k, run.palette.levels)
    columns = args.columns or math.ceil(math.sqrt(args.num))
    rows = math.ceil(args.num / columns)
    images = sample_images(run, args.num, args.temperature, args.top_k, args.seed)
    cells = torch.full((rows * columns, *run.image_shape), float("nan"))
    cells[:args.num] = images
    save_grid(cells.view(rows, columns, *run.image_shape), args.out, args.scale)
    print(f"{args.num} samples of {run.folder} (temperature {args.temperature}, top-k {args.top_k or 'all'}, "
          f"seed {args.seed}) in a {rows}x{columns} grid: {args.out}")
    return 0


def _complete_args(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--num-images", type=positive_int, default=8, help="test images, the first ones (default 8)")
    p.add_argument("--completions", type=positive_int, default=4, help="completions of each image (default 4)")
    p.add_argument("--data-dir", default=None,
                   help="where the run's data are now (default: where the run read them)")
    _sampling(p)


def _test_images(run: Any, count: int, data_dir: str | None) -> torch.Tensor:
    """The first ``count`` images of the run's test split."""
    from visionattn.data import load_dataset

    cfg = run.cfg
    data = load_dataset(cfg.data, data_dir=data_dir or cfg.data_dir, image_size=cfg.image_size, channels=cfg.channels,
                        val_fraction=cfg.val_fraction, seed=cfg.seed)
    if count > len(data.test):
        raise UsageError(f"--num-images: got {count}, needed at most the {len(data.test)} test images")
    return data.test.images[:count]


def _complete_run(args: argparse.Namespace) -> int:
    run = _load(args)
    _check_top_k(args.top_k, run.palette.levels)
    images = _test_images(run, args.num_images, args.data_dir)
    grid = complete_images(run, images, args.completions, args.temperature, args.top_k, args.seed)
    save_grid(grid, args.out, args.scale)
    print(f"{args.num_images} test images of {run.cfg.data} (first column, as the {run.palette.levels}-level palette "
          f"renders them) with the top {run.image_shape[1] // 2} rows kept and {args.completions} completions each "
          f"(temperature {args.temperature}, top-k {args.top_k or 'all'}, seed {args.seed}): {args.out}")
    return 0


# ---------------------------------------------------------------------------------------------------- probe
def _probe_args(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--layer", type=non_negative_int, default=None,
                   help="the block whose output is probed, from 1 (default: the middle one, depth // 2)")
    p.add_argument("--train-subset", type=positive_int, default=None,
                   help="fit the classifier on this many training images, class-balanced (default: the run's "
                        "training images)")
    p.add_argument("--l2", type=non_negative_float, default=1.0,
                   help="L2 penalty: the classifier minimises the summed cross-entropy + l2 / 2 ||W||^2 "
                        "(scikit-learn's C = 1 / l2) (default 1.0)")
    p.add_argument("--max-iter", type=positive_int, default=500, help="L-BFGS iterations at most (default 500)")
    p.add_argument("--batch-size", type=positive_int, default=200, help="images per forward pass (default 200)")
    p.add_argument("--data-dir", default=None, help="where the run's data are now (default: where the run read them)")


def _probe_run(args: argparse.Namespace) -> int:
    from visionattn.probe import run_probe

    run = _load(args)
    result = run_probe(run, layer=args.layer, train_subset=args.train_subset, l2=args.l2, max_iter=args.max_iter,
                       batch_size=args.batch_size, data_dir=args.data_dir)
    print(json.dumps({k: result[k] for k in ("layer", "features_test_acc", "pixels_test_acc")}))
    print(result["verdict"])
    print(f"written to {run.folder / 'probe.json'}")
    return 0


# ---------------------------------------------------------------------------------------------------- train
def _train_args(p: argparse.ArgumentParser) -> None:
    from visionattn.igpt_recipe import add_igpt_train_arguments

    add_igpt_train_arguments(p)


def _train_run(args: argparse.Namespace) -> int:
    from visionattn.igpt_recipe import NextPixelConfig
    from visionattn.train import run_cli

    return run_cli(args, kind=NextPixelConfig)


SUBCOMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "train": ("train an Image GPT by next-pixel prediction (bits per dimension each epoch; torchrun-ready, "
              "resumable)", _train_args, _train_run),
    "sample": ("draw unconditional samples of a trained run as a PNG grid", _sample_args, _sample_run),
    "complete": ("keep the top half of test images and sample the rest: a PNG grid of the originals (first "
                 "column) and completions", _complete_args, _complete_run),
    "probe": ("linear probe: logistic regression on a layer's average-pooled features against the raw pixels; "
              "writes probe.json into the run", _probe_args, _probe_run),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The sub-commands of ``visionattn igpt``."""
    sub = p.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    for name, (text, add, _) in SUBCOMMANDS.items():
        parser = sub.add_parser(name, help=text, description=text)
        add(parser)
        parser.set_defaults(_parser=parser)  # for its own "unrecognized arguments" error


def run(args: argparse.Namespace) -> int:
    return SUBCOMMANDS[args.subcommand][2](args)
