"""visionattn: attention mechanisms for computer vision as faithful, tested, drop-in PyTorch layers.

The public face: :func:`create_attn` / :func:`list_attn` for layers, :func:`create_model` / :func:`list_models`
for networks.

Importing the package is cheap: torch, the layers and the models are imported on first use of any of these names
(or of ``visionattn.layers`` / ``visionattn.models``), so that the command line can parse its arguments, print
``--help`` and reject a bad option before it loads torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = ["create_attn", "list_attn", "create_model", "list_models", "__version__"]

_REGISTRY_NAMES = {"create_attn", "list_attn", "create_model", "list_models"}
_SUBMODULES = {"layers", "models", "kernels", "data", "registry", "testing", "errors"}


def __getattr__(name: str) -> Any:
    if name in _REGISTRY_NAMES:
        from visionattn import registry

        return getattr(registry, name)
    if name in _SUBMODULES:
        return importlib.import_module(f"visionattn.{name}")
    raise AttributeError(f"module 'visionattn' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _REGISTRY_NAMES | _SUBMODULES)
