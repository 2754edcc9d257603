"""Argument types for the command line, written once and torch-free: ``--help`` and a malformed option are
answered before torch loads. The CLI (:mod:`visionattn.cli`) and the engine's sub-commands (``igpt``, ``show``)
take them from here, so that the engine never imports the CLI."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

__all__ = ["number", "positive_int", "non_negative_int", "positive_float", "non_negative_float"]


def number(kind: type, low: float, needed: str, open_low: bool = False) -> Callable[[str], Any]:
    """An argparse type: ``text`` read as ``kind`` (int or float), finite and at least ``low`` (above it with
    ``open_low``); otherwise ``got '...', needed NEEDED``."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or value != value or value in (float("inf"), float("-inf")) or (
                value <= low if open_low else value < low):
            raise argparse.ArgumentTypeError(f"got {text!r}, needed {needed}")
        return value

    parse.__name__ = needed
    return parse


positive_int = number(int, 1, "a positive integer")
non_negative_int = number(int, 0, "an integer >= 0")
positive_float = number(float, 0.0, "a number > 0", open_low=True)
non_negative_float = number(float, 0.0, "a number >= 0")
