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


COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "layers": ("list every registered layer with its parameters and multiply-adds", _layers_args, _layers_run),
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
