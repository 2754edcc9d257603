"""Just-in-time build of the C++ kernels, cached per source, torch version and CPU instruction set.

The first use compiles ``<name>.cpp`` with ``torch.utils.cpp_extension.load`` (about a minute); later uses load
the cached library. The cache lives under ``$VISIONATTN_CACHE`` or ``~/.cache/visionattn/kernels``. Where no
compiler is available the build fails once, with a warning, and callers fall back to their reference code.
Set ``VISIONATTN_NO_KERNELS=1`` to skip the kernels on purpose.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from functools import cache
from pathlib import Path
from types import ModuleType

import torch

__all__ = ["cache_dir", "cpu_flags", "load_kernel", "kernels_disabled"]

_HERE = Path(__file__).resolve().parent


def kernels_disabled() -> bool:
    return os.environ.get("VISIONATTN_NO_KERNELS", "") not in ("", "0")


def cache_dir() -> Path:
    root = os.environ.get("VISIONATTN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "visionattn")
    return Path(root) / "kernels"


def cpu_flags() -> list[str]:
    """Vector flags matching the instruction set ATen detected on this CPU (not ``-march=native``, so that a
    cache shared between machines of one instruction set never holds code for a newer CPU)."""
    capability = torch.backends.cpu.get_cpu_capability()
    if capability == "AVX512":  # the same 256-bit vectors, but 32 vector registers for register blocking
        return ["-mavx2", "-mfma", "-mavx512f", "-mavx512vl", "-mavx512dq", "-mavx512bw"]
    if capability == "AVX2":
        return ["-mavx2", "-mfma"]
    return []


def _sources(source: Path) -> list[Path]:
    """``source`` and every header of this folder it includes, directly or through another (``#include "x.h"``)."""
    found, todo = [], [source]
    while todo:
        path = todo.pop()
        if path in found or not path.is_file():
            continue
        found.append(path)
        todo.extend(_HERE / name for name in re.findall(r'^\s*#\s*include\s+"([^"]+)"', path.read_text(), re.M))
    return sorted(found)


@cache
def load_kernel(name: str) -> ModuleType | None:
    """Build (first use) or load the extension compiled from ``kernels/<name>.cpp`` (its cache key covers the
    headers it includes); None if it cannot be."""
    if kernels_disabled():
        return None
    source = _HERE / f"{name}.cpp"
    flags = ["-O3", "-fopenmp", "-ffp-contract=fast", *cpu_flags()]
    key = hashlib.sha256(" ".join(flags).encode() + torch.__version__.encode())
    for path in _sources(source):
        key.update(path.read_bytes())
    ext_name = f"visionattn_{name}_{torch.backends.cpu.get_cpu_capability().lower()}_{key.hexdigest()[:12]}"
    build_dir = cache_dir() / ext_name
    try:
        from torch.utils import cpp_extension

        build_dir.mkdir(parents=True, exist_ok=True)
        return cpp_extension.load(name=ext_name, sources=[str(source)], extra_cflags=flags,
                                  extra_ldflags=["-fopenmp"], build_directory=str(build_dir), verbose=False)
    except Exception as err:  # a missing compiler or ninja shows up as several exception types
        warnings.warn(f"visionattn could not build its C++ kernel {name!r} ({type(err).__name__}: "
                      f"{str(err).strip().splitlines()[-1] if str(err).strip() else err}); falling back to the "
                      f"slower pure-PyTorch path", RuntimeWarning, stacklevel=2)
        return None
