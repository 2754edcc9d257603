"""Print the README's layer table: parameters and multiply-adds of every registered layer.

Usage: ``python benchmarks/layer_table.py [--channels 64 --size 56 56]`` (Markdown on stdout); the same table as
``visionattn layers``. Multiply-adds come from ``torch.utils.flop_counter`` (matrix products and convolutions,
plus the formulas the custom attention kernels register), for one (1, C, H, W) input.
"""

from __future__ import annotations

import argparse

from visionattn.complexity import format_table, layer_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--size", type=int, nargs=2, default=(56, 56))
    args = parser.parse_args()
    rows = layer_rows(args.channels, tuple(args.size))
    print(format_table(rows, ["name", "family", "params", "macs"], human=("params", "macs")))


if __name__ == "__main__":
    main()
