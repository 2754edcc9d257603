"""What ``create_model`` does after a registered factory has built the network: the input record, local
pretrained weights and the feature-extraction form (one place, so every model gets the same)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from torch import nn

from visionattn.errors import UsageError
from visionattn.models.features import FeatureNet
from visionattn.models.pretrained import PretrainedCfg, load_pretrained
from visionattn.models.swin_zoo import SWIN_TIMM_NAMES
from visionattn.models.vit_zoo import VIT_TIMM_NAMES
from visionattn.models.zoo import TIMM_NAMES

__all__ = ["finish_model"]


def finish_model(name: str, model: nn.Module, pretrained_file: str | os.PathLike | None = None,
                 features_only: bool = False, out_indices: Sequence[int] | None = None) -> nn.Module:
    """Name the model in its :class:`PretrainedCfg`, load ``pretrained_file`` into it, and wrap it in a
    :class:`FeatureNet` when ``features_only``; the pretrained load's report is ``model.pretrained_report``."""
    if not isinstance(features_only, bool):
        raise UsageError(f"features_only must be True or False, got {features_only!r}")
    if out_indices is not None and not features_only:
        raise UsageError("out_indices selects feature outputs: it needs features_only=True")
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, PretrainedCfg):
        model.pretrained_cfg = cfg.replace(architecture=name,
                                           timm_name=TIMM_NAMES.get(name) or VIT_TIMM_NAMES.get(name)
                                           or SWIN_TIMM_NAMES.get(name))
    if pretrained_file is not None:
        model.pretrained_report = load_pretrained(model, pretrained_file)
    return FeatureNet(model, out_indices) if features_only else model
