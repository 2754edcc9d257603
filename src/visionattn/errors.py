"""The one error path for a user's mistakes: the exception classes, "did you mean" and the argument checks.

Every check that can blame a user's input raises a :class:`UsageError` (or a subclass: ``DataError``,
``CheckpointError``) whose message names the argument, what it got and what it needs. They are ``ValueError``\\s,
so library callers catch them as they always have; the command line catches them in one place
(:func:`visionattn.cli.main`) and prints ``visionattn CMD: error: MESSAGE`` with exit status 2, never a traceback.

This module imports nothing heavy (no torch), so the command line can validate before it loads anything.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["TRAIN_EXTRA_INSTALL", "UsageError", "CheckpointError", "did_you_mean", "unknown_name", "check_names",
           "check_positive", "check_non_negative", "check_finite", "check_range", "check_choice", "check_writable_dir",
           "check_output_file", "check_png_out"]

# how to install the `train` extra (training, plots, pictures), for every error that needs it
TRAIN_EXTRA_INSTALL = "pip install 'visionattn[train]' (or make install in a clone of the repository)"


class UsageError(ValueError):
    """A user's input that cannot be used: the message names the argument, what it got and what it needs."""


class CheckpointError(UsageError):
    """A checkpoint or weights file that cannot be used: unreadable, for another model, or of the wrong shapes."""


def did_you_mean(name: str, choices: Iterable[str], n: int = 3) -> str:
    """``"; did you mean 'se', 'sk'?"`` for the closest ``choices`` to ``name``, or ``""`` when none is close."""
    choices = list(choices)
    close = difflib.get_close_matches(name, choices, n=n, cutoff=0.6)
    if not close:  # a prefix or substring is a good guess too: 'resnet' -> 'resnet18', 'resnet20', ...
        close = [c for c in choices if name and (c.startswith(name) or name in c)][:n]
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def unknown_name(argument: str, kind: str, name: Any, choices: Iterable[str]) -> UsageError:
    """The error for a name that is not registered: ``argument: unknown KIND 'x'; did you mean ...?``."""
    choices = sorted(choices)
    hint = did_you_mean(str(name), choices)
    listing = "" if hint else f"; the {kind} names are: {', '.join(choices)}"
    return UsageError(f"{argument}: unknown {kind} name {name!r}{hint}{listing}")


def check_names(argument: str, kind: str, names: Sequence[str], choices: Iterable[str]) -> None:
    """Every one of ``names`` is one of ``choices``; the first that is not gets :func:`unknown_name`'s error."""
    choices = list(choices)
    for name in names:
        if name not in choices:
            raise unknown_name(argument, kind, name, choices)


def check_writable_dir(path: str | os.PathLike, argument: str) -> Path:
    """``path`` is a directory that exists or can be made by this user: its nearest existing ancestor is a
    writable directory (checked before any work, so a run never fails on its output folder at the end)."""
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{argument}: got {str(path)!r}, but {existing} is a file; needed a directory path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{argument}: got {str(path)!r}, but {existing} is not writable; needed a directory this "
                         "user can write")
    return path


def check_output_file(path: str | os.PathLike, argument: str = "csv") -> Path:
    """``path`` when a file can be written there (checked before any work): not a folder, in a writable folder."""
    out = Path(path)
    if not str(path):
        raise UsageError(f"{argument}: got an empty path, needed a file to write")
    if out.is_dir():
        raise UsageError(f"{argument}: {str(path)!r} is a folder, needed a file path")
    parent = out.parent
    if not parent.is_dir():
        what = "is not a folder" if parent.exists() else "does not exist"
        raise UsageError(f"{argument}: cannot write {str(path)!r}: {str(parent)!r} {what}")
    if not os.access(parent, os.W_OK | os.X_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise UsageError(f"{argument}: cannot write {str(path)!r}: permission denied")
    return out


def check_png_out(out: str | os.PathLike, argument: str = "--out", *, overwrite: bool = True,
                  make_folder: bool = False) -> Path:
    """``out`` as the PNG file a command writes, checked before any work (``visionattn show`` and ``visionattn igpt
    sample|complete``): a .png path in a folder this user can write (with ``make_folder``, a folder that the command
    makes when it saves, or one that exists), not an existing file unless ``overwrite``."""
    path = Path(out)
    if path.suffix.lower() != ".png":
        raise UsageError(f"{argument}: got {str(out)!r}, needed a .png file")
    if make_folder and not path.parent.is_dir():
        check_writable_dir(path.parent, argument)
    else:
        check_output_file(out, argument)
    if path.exists() and not overwrite:
        raise UsageError(f"{argument}: {str(out)!r} exists; give --overwrite to replace it, or another --out")
    return path


def check_finite(argument: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UsageError(f"{argument}: got {value!r}, needed a finite number")
    return value


def check_positive(argument: str, value: float) -> float:
    check_finite(argument, value)
    if not value > 0:
        raise UsageError(f"{argument}: got {value!r}, needed a positive number")
    return value


def check_non_negative(argument: str, value: float) -> float:
    check_finite(argument, value)
    if value < 0:
        raise UsageError(f"{argument}: got {value!r}, needed a number >= 0")
    return value


def check_range(argument: str, value: float, low: float, high: float, *, high_open: bool = False) -> float:
    """``low <= value <= high`` (``< high`` with ``high_open``)."""
    check_finite(argument, value)
    if not (low <= value < high if high_open else low <= value <= high):
        raise UsageError(f"{argument}: got {value!r}, needed a value in [{low}, {high}{')' if high_open else ']'}")
    return value


def check_choice(argument: str, value: Any, choices: Iterable[str]) -> Any:
    choices = list(choices)
    if value not in choices:
        hint = did_you_mean(str(value), choices)
        raise UsageError(f"{argument}: got {value!r}, needed one of {', '.join(map(repr, choices))}{hint}")
    return value
