"""visionattn: attention mechanisms for computer vision as faithful, tested, drop-in PyTorch layers.

The public face: :func:`create_attn` / :func:`list_attn` for layers, :func:`create_model` / :func:`list_models`
for networks.
"""

from visionattn import layers, models  # noqa: F401  (importing registers every layer and model)
from visionattn.registry import create_attn, create_model, list_attn, list_models

__version__ = "0.1.0"
__all__ = ["create_attn", "list_attn", "create_model", "list_models", "__version__"]
