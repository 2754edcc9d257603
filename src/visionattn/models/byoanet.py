"""timm's ByoaNet names (``timm/models/byoanet.py``: botnet26t, halonet26t, halonet50ts, ...) -> this library's.

timm builds those networks with its "bring your own blocks" ``ByobNet`` (``stem.conv1``, ``stages.i.j.conv1_1x1``,
``self_attn``, ``post_attn``, ``head.fc``); ours are :class:`~visionattn.models.resnet.ResNet` s with the attention
in place of a bottleneck's 3x3 (``conv1``, ``layer{i+1}.j.conv1``, ``conv2``, ``bn2``, ``fc``). One set of rules
renames every one of them; the shapes are the same, so the result loads with ``strict=True``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from visionattn.errors import CheckpointError

__all__ = ["convert_timm_byoanet_state_dict"]

# applied in order to each key; {i} is timm's 0-based stage, renumbered to layer{i + 1}
_TIMM_RULES: tuple[tuple[str, str], ...] = (
    (r"^stem\.conv1\.conv\.", "conv1.0."), (r"^stem\.conv1\.bn\.", "conv1.1."),
    (r"^stem\.conv2\.conv\.", "conv1.3."), (r"^stem\.conv2\.bn\.", "conv1.4."),
    (r"^stem\.conv3\.conv\.", "conv1.6."), (r"^stem\.conv3\.bn\.", "bn1."),
    (r"^stages\.(\d+)\.(\d+)\.shortcut\.conv\.", r"layer{\1}.\2.downsample.0."),
    (r"^stages\.(\d+)\.(\d+)\.shortcut\.bn\.", r"layer{\1}.\2.downsample.1."),
    (r"^stages\.(\d+)\.(\d+)\.conv(\d)_(?:1x1|kxk)\.conv\.", r"layer{\1}.\2.conv\3."),
    (r"^stages\.(\d+)\.(\d+)\.conv(\d)_(?:1x1|kxk)\.bn\.", r"layer{\1}.\2.bn\3."),
    # BoTNet's qkv, HaloNet's q and kv: the attention sits in place of conv2
    (r"^stages\.(\d+)\.(\d+)\.self_attn\.(qkv|q|kv)\.", r"layer{\1}.\2.conv2.\3."),
    (r"^stages\.(\d+)\.(\d+)\.self_attn\.pos_embed\.", r"layer{\1}.\2.conv2.rel_pos."),
    (r"^stages\.(\d+)\.(\d+)\.post_attn\.", r"layer{\1}.\2.bn2."),
    (r"^head\.fc\.", "fc."),
)


def _timm_key(key: str, caller: str) -> str:
    for pattern, repl in _TIMM_RULES:
        new, n = re.subn(pattern, repl, key)
        if n:
            return re.sub(r"^layer\{(\d+)\}", lambda m: f"layer{int(m.group(1)) + 1}", new)
    raise CheckpointError(f"{caller}: {key!r} is not a key of timm's ByoaNet layout (botnet26t_256, halonet26t, "
                          "halonet50ts)")


def convert_timm_byoanet_state_dict(state_dict: Mapping[str, torch.Tensor],
                                    caller: str = "convert_timm_byoanet_state_dict") -> dict[str, torch.Tensor]:
    """A timm ByoaNet state dict under this library's names (``stem.conv1.conv.weight`` -> ``conv1.0.weight``,
    ``stages.2.1.self_attn.kv.weight`` -> ``layer3.1.conv2.kv.weight``, ``stages.3.0.self_attn.pos_embed.height_rel``
    -> ``layer4.0.conv2.rel_pos.height_rel``, ``head.fc.weight`` -> ``fc.weight``, ...), for
    ``load_state_dict(strict=True)``. Tensors are not copied; ``caller`` names the function in errors."""
    return {_timm_key(key, caller): value for key, value in state_dict.items()}
