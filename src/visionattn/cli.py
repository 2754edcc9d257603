"""The ``visionattn`` command. Thin: it parses arguments and calls the engine.

Each sub-command is a ``(add_arguments, run)`` pair in ``COMMANDS``; ``run(args)`` returns the exit status.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence


def _layers_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--channels", type=int, default=64, help="input channels C (default 64)")
    p.add_argument("--size", type=int, nargs=2, default=(56, 56), metavar=("H", "W"), help="feature map size")


def _layers_run(args: argparse.Namespace) -> int:
    from visionattn.complexity import format_table, layer_rows

    rows = layer_rows(args.channels, tuple(args.size))
    h, w = args.size
    print(f"Registered attention layers: parameters and multiply-adds for a {args.channels}x{h}x{w} input\n")
    print(format_table(rows, ["name", "family", "paper", "params", "macs"], human=("macs",)))
    return 0


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def _bench_args(p: argparse.ArgumentParser) -> None:
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--models", type=_names, help="comma-separated model names")
    what.add_argument("--layers", type=_names, help="comma-separated layer names ('all' for every layer)")
    p.add_argument("--input", default=None, help="CxHxW (default 3x224x224 for models, 64x56x56 for layers)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--reps", type=int, default=5, help="repetitions; the median is reported")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"), help="bf16: bfloat16 autocast")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--csv", default=None, help="also write the table as CSV to this path")


def _bench_run(args: argparse.Namespace) -> int:
    import torch

    from visionattn.bench import bench_layers, bench_models, parse_shape, write_report
    from visionattn.registry import list_attn

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.models:
        shape = parse_shape(args.input or "3x224x224")
        results = bench_models(args.models, shape, args.batch, args.num_classes, args.device, args.warmup, args.reps,
                               args.precision, args.channels_last)
    else:
        shape = parse_shape(args.input or "64x56x56")
        names = list_attn() if args.layers == ["all"] else args.layers
        results = bench_layers(names, shape, args.batch, args.device, args.warmup, args.reps, args.precision,
                               args.channels_last)
    print(write_report(results, shape, args, args.csv))
    return 0


def _info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="registered model name (see visionattn.list_models())")
    p.add_argument("--input", default=None, help="CxHxW (default: the model's own, e.g. 3x224x224)")
    p.add_argument("--num-classes", type=int, default=None, help="classifier outputs (default: the model's)")


def _info_run(args: argparse.Namespace) -> int:
    from visionattn.bench import parse_shape
    from visionattn.info import describe

    kwargs = {} if args.num_classes is None else {"num_classes": args.num_classes}
    print(describe(args.model, parse_shape(args.input) if args.input else None, **kwargs))
    return 0


def _train_args(p: argparse.ArgumentParser) -> None:
    from visionattn.recipe import add_train_arguments

    add_train_arguments(p)


def _train_run(args: argparse.Namespace) -> int:
    from visionattn.train import run_cli

    return run_cli(args)


def _compare_args(p: argparse.ArgumentParser) -> None:
    from visionattn.recipe import add_train_arguments

    p.add_argument("--models", type=_names, required=True, help="comma-separated model names")
    p.add_argument("--seeds", default="0", help="comma-separated seeds; each model is trained once per seed")
    p.add_argument("--out", default="runs/compare", help="output folder; the same command again resumes there")
    p.add_argument("--cost-batch", type=int, default=None, help="batch for the speed and memory figures "
                   "(default: the training batch size)")
    p.add_argument("--baseline", default=None, help="model the others are compared with (default: the first)")
    add_train_arguments(p, exclude=("--model", "--seed", "--run-dir", "--resume"))


def _compare_run(args: argparse.Namespace) -> int:
    from visionattn.compare import run_comparison, seeds_arg, write_outputs
    from visionattn.recipe import config_from_args

    try:
        seeds = seeds_arg(args.seeds)
        base = config_from_args(argparse.Namespace(**{**vars(args), "model": args.models[0]}))
        rows = run_comparison(args.models, seeds, base, args.out, args.cost_batch)
    except (ValueError, FileNotFoundError) as err:
        print(f"visionattn compare: error: {err}", file=sys.stderr)
        return 2
    table = write_outputs(rows, args.out, args.baseline or args.models[0])
    subset = f", {base.train_subset} training images (a class-balanced subset)" if base.train_subset else ""
    print(f"\n{len(args.models)} models x {len(seeds)} seeds, {base.epochs} epochs each on {base.data}{subset}\n")
    print(table)
    print(f"\ntable: {args.out}/compare.md and compare.csv; plots: {args.out}/accuracy_vs_macs.png, "
          f"accuracy_vs_latency.png, training_curves.png; runs: {args.out}/runs/")
    return 0


COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "layers": ("list every registered layer with its parameters and multiply-adds", _layers_args, _layers_run),
    "compare": ("train several models with one recipe and seeds and tabulate accuracy beside cost",
                _compare_args, _compare_run),
    "bench": ("measure forward and training-step speed and peak memory", _bench_args, _bench_run),
    "info": ("parameters, multiply-adds and a per-stage table of a model", _info_args, _info_run),
    "train": ("train a model on Fashion-MNIST or an image folder (torchrun-ready, resumable)", _train_args,
              _train_run),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="visionattn", description="Attention mechanisms for computer vision.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_args, _) in COMMANDS.items():
        add_args(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command][2](args)


if __name__ == "__main__":
    sys.exit(main())
