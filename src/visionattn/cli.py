"""The ``visionattn`` command. Thin: it parses arguments, validates them and calls the engine.

Each sub-command is a ``Command`` in ``COMMANDS``: its help, its ``add_arguments(parser)`` and ``run(args)``, which
returns the exit status. Parsing imports nothing heavy: the argument types below are plain Python, so ``--help``,
``--version`` and a malformed option are answered before torch loads; a command imports the engine when it runs.
A command with sub-commands of its own (``igpt train|sample|complete|probe``) parses them into ``subcommand``,
which the error prefix names too (``visionattn igpt train: error: ...``).

Errors take one path (:func:`main`): a user's mistake (:class:`~visionattn.errors.UsageError`, any ``ValueError``
or ``OSError``) prints ``visionattn CMD: error: MESSAGE`` and exits with status 2; Ctrl-C prints one line and
exits with 130; argparse's own errors have the same prefix and status.
"""

from __future__ import annotations

import argparse
import importlib.util
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from visionattn.argtypes import non_negative_int, positive_int
from visionattn.errors import TRAIN_EXTRA_INSTALL, UsageError, check_names, check_output_file
from visionattn.formats import PRECISIONS

__all__ = ["main", "build_parser", "COMMANDS", "TRAIN_EXTRA"]

# the `train` extra (pyproject.toml): what train and compare need beyond torch
TRAIN_EXTRA = ("tqdm", "matplotlib", "safetensors", "PIL", "skimage")


# ------------------------------------------------------------------------------------ argument types (no torch)


def shape_arg(text: str) -> tuple[int, int, int]:
    """``"3x224x224"`` -> ``(3, 224, 224)``."""
    try:
        shape = tuple(int(p) for p in text.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"got {text!r}, needed CxHxW with three positive integers (e.g. 3x224x224)")
    return shape  # type: ignore[return-value]


def names_arg(text: str) -> list[str]:
    """``"se, eca"`` -> ``["se", "eca"]``; at least one name."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"got {text!r}, needed comma-separated names such as resnet20,se_resnet20")
    return names


def seeds_arg(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; at least one integer (repeats are refused by the comparison's checks)."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds:
        raise argparse.ArgumentTypeError(f"got {text!r}, needed comma-separated integers such as 0,1,2")
    return seeds


# --------------------------------------------------------------------------------------------- the commands
def _models_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--family", default=None, help="only this family, e.g. resnet-small (default: every family)")


def _models_run(args: argparse.Namespace) -> int:
    from visionattn.complexity import format_table
    from visionattn.registry import MODELS

    names = MODELS.names(args.family, "--family")
    rows = [{"name": n, "family": MODELS.get(n).family, "description": MODELS.get(n).description} for n in names]
    print(f"{len(rows)} registered models (visionattn info NAME for parameters and multiply-adds)\n")
    print(format_table(rows, ["name", "family", "description"]))
    return 0


def _layers_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--channels", type=positive_int, default=64, help="input channels C (default 64)")
    p.add_argument("--size", type=positive_int, nargs=2, default=(56, 56), metavar=("H", "W"),
                   help="feature map size (default 56 56)")
    p.add_argument("--family", default=None, help="only this family, e.g. channel (default: every family)")


def _layers_run(args: argparse.Namespace) -> int:
    from visionattn.complexity import buildable_layer_rows, format_table
    from visionattn.registry import ATTN

    ATTN.names(args.family, "--family")  # an unknown family fails here, before any layer is built
    h, w = args.size
    rows, unbuildable = buildable_layer_rows(args.channels, (h, w), args.family, ("--channels", "--size"))
    print(f"Registered attention layers: parameters and multiply-adds for a {args.channels}x{h}x{w} input\n")
    print(format_table(rows, ["name", "family", "params", "macs", "description"], human=("macs",)))
    if unbuildable:
        print(f"\nNot buildable at {args.channels} channels ({h}x{w}):")
        for name, why in unbuildable.items():
            print(f"- {name}: {why}")
    return 0


def _bench_args(p: argparse.ArgumentParser) -> None:
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--models", type=names_arg, help="comma-separated model names (required: this or --layers)")
    what.add_argument("--layers", type=names_arg,
                      help="comma-separated layer names, 'all' for every layer (required: this or --models)")
    p.add_argument("--input", type=shape_arg, default=None,
                   help="CxHxW (default 3x224x224 for models, 64x56x56 for layers)")
    p.add_argument("--batch", type=positive_int, default=8, help="batch size (default 8)")
    p.add_argument("--num-classes", type=positive_int, default=None,
                   help="classifier outputs of the models (default: each model's own, e.g. 10 for resnet20)")
    p.add_argument("--warmup", type=non_negative_int, default=2, help="untimed runs first (default 2)")
    p.add_argument("--reps", type=positive_int, default=5, help="timed repetitions; the median is reported (default 5)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto (default cpu)")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS, help="bf16: bfloat16 autocast (default fp32)")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format (default off)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--csv", default=None, help="also write the table as CSV to this file (default: none)")


def _bench_run(args: argparse.Namespace) -> int:
    import torch

    from visionattn.bench import bench_layers, bench_models, check_device, write_report
    from visionattn.registry import ATTN, MODELS

    device = str(check_device(args.device, "--device"))
    if args.csv is not None:
        check_output_file(args.csv, "--csv")
    if args.threads:
        torch.set_num_threads(args.threads)
    counts = (args.warmup, args.reps, args.precision, args.channels_last)
    if args.models:
        check_names("--models", "model", args.models, MODELS.names())
        shape = args.input or (3, 224, 224)
        results = bench_models(args.models, shape, args.batch, args.num_classes, device, *counts)
    else:
        names = ATTN.names() if args.layers == ["all"] else args.layers
        check_names("--layers", "attention layer", names, ATTN.names())
        shape = args.input or (64, 56, 56)
        results = bench_layers(names, shape, args.batch, device, *counts)
    print(write_report(results, shape, args, args.csv))
    return 0


def _info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="registered model name (visionattn models lists them)")
    p.add_argument("--input", type=shape_arg, default=None, help="CxHxW (default: the model's own, e.g. 3x224x224)")
    p.add_argument("--num-classes", type=positive_int, default=None,
                   help="classifier outputs (default: the model's own)")


def _info_run(args: argparse.Namespace) -> int:
    from visionattn.info import describe
    from visionattn.registry import MODELS

    check_names("model", "model", [args.model], MODELS.names())
    kwargs = {} if args.num_classes is None else {"num_classes": args.num_classes}
    print(describe(args.model, args.input, **kwargs))
    return 0


def _train_args(p: argparse.ArgumentParser) -> None:
    from visionattn.recipe import add_train_arguments

    add_train_arguments(p)


def _train_run(args: argparse.Namespace) -> int:
    from visionattn.train import run_cli

    return run_cli(args)


def _igpt_args(p: argparse.ArgumentParser) -> None:
    from visionattn.igpt_commands import add_arguments

    add_arguments(p)


def _igpt_run(args: argparse.Namespace) -> int:
    from visionattn.igpt_commands import run

    return run(args)


def _show_args(p: argparse.ArgumentParser) -> None:
    from visionattn.show.command import add_arguments

    add_arguments(p)


def _show_run(args: argparse.Namespace) -> int:
    from visionattn.show.command import run

    return run(args)


def _compare_args(p: argparse.ArgumentParser) -> None:
    from visionattn.recipe import add_train_arguments

    p.add_argument("--models", type=names_arg, required=True, help="comma-separated model names, each once")
    p.add_argument("--seeds", type=seeds_arg, default=[0],
                   help="comma-separated seeds, each once; every model is trained once per seed (default 0)")
    p.add_argument("--out", default="runs/compare",
                   help="output folder; the same command again resumes there (default runs/compare)")
    p.add_argument("--cost-batch", type=positive_int, default=None, help="batch for the speed and memory figures "
                   "(default: the training batch size)")
    p.add_argument("--baseline", default=None,
                   help="one of --models, the others are compared with it (default: the first)")
    add_train_arguments(p, exclude=("--model", "--seed", "--run-dir", "--resume", "--overwrite"))


def _compare_run(args: argparse.Namespace) -> int:
    from visionattn.compare import run_comparison, write_outputs
    from visionattn.recipe import config_from_args

    base = config_from_args(argparse.Namespace(**{**vars(args), "model": args.models[0]}))
    rows = run_comparison(args.models, args.seeds, base, args.out, args.cost_batch, baseline=args.baseline,
                          flags=True)
    table = write_outputs(rows, args.out, args.baseline or args.models[0])
    subset = f", {base.train_subset} training images (a class-balanced subset)" if base.train_subset else ""
    print(f"\n{len(args.models)} models x {len(args.seeds)} seeds, {base.epochs} epochs each on {base.data}{subset}\n")
    print(table)
    print(f"\ntable: {args.out}/compare.md and compare.csv; plots: {args.out}/accuracy_vs_macs.png, "
          f"accuracy_vs_latency.png, training_curves.png; runs: {args.out}/runs/")
    return 0


def _compare_interrupted(args: argparse.Namespace, argv: Sequence[str]) -> str:
    return (f"finished runs are kept in {args.out}; to resume, run the same command again: "
            f"visionattn {shlex.join(argv)}")


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="the folder of a finished `visionattn compare` (its --out); "
                   "report.html is written there (default runs/demo)")


def _report_run(args: argparse.Namespace) -> int:
    from visionattn.show.report import make_report

    print(f"report: {make_report(args.out, argument='--out')}")
    return 0


@dataclass(frozen=True)
class Command:
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    needs_train_extra: bool = False
    interrupted: Callable[[argparse.Namespace, Sequence[str]], str] | None = None  # the resume hint after Ctrl-C


COMMANDS: dict[str, Command] = {
    "models": Command("list the registered models (name, family, description)", _models_args, _models_run),
    "layers": Command("list every registered layer with its parameters and multiply-adds", _layers_args,
                      _layers_run),
    "compare": Command("train several models with one recipe and seeds and tabulate accuracy beside cost",
                       _compare_args, _compare_run, needs_train_extra=True, interrupted=_compare_interrupted),
    "report": Command("one self-contained HTML page of a finished comparison: table, plots, pictures from its "
                      "models, speed of its attention layers", _report_args, _report_run, needs_train_extra=True),
    "bench": Command("measure forward and training-step speed and peak memory", _bench_args, _bench_run),
    "info": Command("parameters, multiply-adds and a per-stage table of a model", _info_args, _info_run),
    "train": Command("train a model on Fashion-MNIST or an image folder (torchrun-ready, resumable)", _train_args,
                     _train_run, needs_train_extra=True),
    "igpt": Command("Image GPT: train by next-pixel prediction, sample, complete test images, linear probe",
                    _igpt_args, _igpt_run, needs_train_extra=True),
    "show": Command("draw what an attention mechanism computes on real images (a trained run's model or an "
                    "untrained one) as a PNG", _show_args, _show_run, needs_train_extra=True),
}


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("visionattn")
    except metadata.PackageNotFoundError:  # run from a source tree that is not installed
        from visionattn import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="visionattn", description="Attention mechanisms for computer vision.")
    parser.add_argument("--version", action="version", version=f"visionattn {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        command_parser = sub.add_parser(name, help=command.help, description=command.help)
        command.add_arguments(command_parser)
        command_parser.set_defaults(_parser=command_parser)  # for its own "unrecognized arguments" error
    return parser


def _check_train_extra() -> None:
    missing = [name for name in TRAIN_EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        raise UsageError(f"needs the 'train' extra, which is not installed (missing: {', '.join(missing)}); "
                         f"install it with {TRAIN_EXTRA_INSTALL}")


def _message(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror and err.filename is not None:
        return f"{err.filename}: {err.strerror}"  # not "[Errno 2] ..."
    return str(err) or type(err).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``visionattn`` with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args, unknown = build_parser().parse_known_args(argv)
        command_parser = vars(args).pop("_parser")
        if unknown:  # said by the sub-command, so that the message has its prefix like every other error
            command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    except SystemExit as stop:  # --help, --version, or argparse's own error (already printed, status 2)
        return stop.code if isinstance(stop.code, int) else 2
    command = COMMANDS[args.command]
    prefix = " ".join(["visionattn", args.command, *([args.subcommand] if getattr(args, "subcommand", None) else [])])
    try:
        if command.needs_train_extra:
            _check_train_extra()
        return command.run(args)
    except KeyboardInterrupt as err:
        hint = command.interrupted(args, argv) if command.interrupted else str(err)
        print(f"\n{prefix}: interrupted" + (f"; {hint}" if hint else ""), file=sys.stderr)
        return 130
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] not in TRAIN_EXTRA:
            raise
        print(f"{prefix}: error: needs {err.name!r} from the 'train' extra; install it with {TRAIN_EXTRA_INSTALL}",
              file=sys.stderr)
        return 2
    except (ValueError, OSError) as err:  # UsageError, DataError and CheckpointError are ValueErrors
        print(f"{prefix}: error: {_message(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
