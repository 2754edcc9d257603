"""State dicts in the module layout before the ecosystem names (commit 9b8d90e), converted to today's.

Checkpoints written by ``visionattn train`` before 9b8d90e name the ResNet family's tensors by container index:
``stem.convs.N``, ``stages.stageS.J.branch.K.I``, ``stages.stageS.J.attn``, ``stages.stageS.J.shortcut.I`` and
``head.3``. Today's modules carry torchvision's and timm's names (:mod:`visionattn.models.blocks`). The rules
below map one to the other by name, one regular expression per old module, never by tensor order:

=========================================================  ======================================================
before 9b8d90e                                             now
=========================================================  ======================================================
``stem.convs.0`` / ``.1`` (7x7 or 3x3 conv, or SASA's      ``conv1`` / ``bn1``
attention stem; and its BN)
``stem.convs.{0,1,3,4,6}`` / ``.7`` (deep stem)            ``conv1.{0,1,3,4,6}`` / ``bn1``
``stages.stageS.J.branch.K.0`` / ``.1`` (conv, BN)         ``layerS.J.conv{n}`` / ``bn{n}``; SK networks ("units"
                                                           layout): ``layerS.J.conv{n}.conv`` / ``conv{n}.bn``
``stages.stageS.J.branch.K.<name>`` (a layer with its own  ``layerS.J.conv{n}.<name>``
BN: SplAt, SK)
``...branch.K.split.branches.i.0`` / ``.1`` (SK)           ``...conv{n}.paths.i.conv`` / ``paths.i.bn``
``...branch.K.fuse.fc`` (d, C), ``fuse.bn``,               ``...conv{n}.attn.fc_reduce`` (d, C, 1, 1),
``select.fc`` (M C, d) (SK)                                ``attn.bn``, ``attn.fc_select`` (M C, d, 1, 1)
``stages.stageS.J.attn`` (block attention)                 ``layerS.J.se``
``...attn.fc.fc1`` / ``fc.fc2`` (SE's excite MLP)          ``...se.fc1`` / ``se.fc2``
``stages.stageS.J.shortcut.I``                             ``layerS.J.downsample.I``
``stages.stageS.N.<name>`` (stage-end layer, e.g. BAM,     ``layerS.attn.<name>``
after the N blocks)
``head.3`` (the classifier)                                ``fc``
=========================================================  ======================================================

The residual branch's index K numbered every module of the old ``nn.Sequential``; the bottleneck's index 2 was its
average pool (ResNeSt's ``avd``, an identity elsewhere; no parameters), so K = 0, 1, 3 are the convolutions
n = 1, 2, 3 (K = 0, 1 in a basic block). The new modules are registered in the old order, so the converted state
dict lists its tensors in the same order as the model's (the trainer's optimizer state maps by that order).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping

import torch

from visionattn.errors import CheckpointError

__all__ = ["convert_legacy_state_dict", "is_legacy_state_dict", "LEGACY_COMMIT"]

LEGACY_COMMIT = "9b8d90e"
"""The commit that renamed the modules; state dicts written before it are in the legacy layout."""

_LEGACY_ROOT = re.compile(r"(stem\.convs\.\d+|stages\.stage\d+\.\d+|head\.\d+)\.")
_STEM = re.compile(r"stem\.convs\.(\d+)\.(.+)")
_BLOCK = re.compile(r"stages\.stage(\d+)\.(\d+)\.(.+)")
_HEAD = re.compile(r"head\.3\.(weight|bias)")
_CONV_UNIT = re.compile(r"branch\.(\d+)\.(\d+)\.(.+)")  # conv-BN(-ReLU) Sequential: 0 conv, 1 BN
_OWN_NORM = re.compile(r"branch\.(\d+)\.([A-Za-z_]\w*\..+)")  # a layer with its own BN in the conv's place
_BLOCK_ATTN = re.compile(r"attn\.(.+)")
_SHORTCUT = re.compile(r"shortcut\.(\d+\..+)")
_SE_MLP = re.compile(r"fc\.(fc[12]\.(?:weight|bias))")
# SK's Split / Fuse / Select (old) -> paths / attn (timm's SelectiveKernel); the fully connected layers became
# 1x1 convolutions, so their (out, in) weights gain two trailing axes
_SK_RULES = (
    (re.compile(r"split\.branches\.(\d+)\.0\.(.+)"), r"paths.\1.conv.\2"),
    (re.compile(r"split\.branches\.(\d+)\.1\.(.+)"), r"paths.\1.bn.\2"),
    (re.compile(r"fuse\.fc\.weight"), "attn.fc_reduce.weight"),
    (re.compile(r"fuse\.bn\.(.+)"), r"attn.bn.\1"),
    (re.compile(r"select\.fc\.weight"), "attn.fc_select.weight"),
)
_SK_RESHAPED = ("attn.fc_reduce.weight", "attn.fc_select.weight")
_CONV_NUMBER = {0: 1, 1: 2, 3: 3}  # branch index K -> n of conv{n}; K = 2 is the bottleneck's avd pool


def is_legacy_state_dict(keys: Iterable[str]) -> bool:
    """Whether ``keys`` are in the layout before 9b8d90e: some key starts with ``stem.convs.N.``,
    ``stages.stageS.J.`` or ``head.N.`` (today's ResNets have ``conv1``, ``layer1``, ``fc`` instead)."""
    return any(_LEGACY_ROOT.match(k) for k in keys)


def _fail(key: str, why: str) -> CheckpointError:
    return CheckpointError(f"state: key {key!r} {why}; needed a state dict of visionattn's ResNet family written "
                           f"before {LEGACY_COMMIT} (keys stem.convs.N, stages.stageS.J.branch/attn/shortcut, "
                           f"head.3)")


def _attn_layer(prefix: str, rest: str, expected: Collection[str] | None) -> str:
    """An attention layer's tensor: SE's ``fc.fc1``/``fc.fc2`` became ``fc1``/``fc2``, the rest kept their names.

    CBAM's channel gate on its own (``attn=cbam_channel``) has the same old keys as SE but kept ``fc.fc1``: when
    the model's keys are ``expected`` and hold that name rather than the flattened one, it is kept.
    """
    m = _SE_MLP.fullmatch(rest)
    if m is None:
        return prefix + rest
    flat = prefix + m.group(1)
    if expected is not None and flat not in expected and prefix + rest in expected:
        return prefix + rest
    return flat


def _sk_part(key: str, rest: str) -> str:
    """The new name, inside ``conv{n}``, of an old SK tensor (``rest`` after ``branch.K.``); others unchanged."""
    if not rest.startswith(("split.", "fuse.", "select.")):
        return rest  # SplAt and the other layers with their own BN kept their names
    for pattern, template in _SK_RULES:
        m = pattern.fullmatch(rest)
        if m is not None:
            return m.expand(template)
    raise _fail(key, "is not a tensor of the old selective kernel (split.branches.i.0/1, fuse.fc, fuse.bn, "
                     "select.fc)")


def _block_key(key: str, stage: str, index: str, rest: str, units: bool,
               expected: Collection[str] | None) -> str:
    """The new name of ``stages.stage{stage}.{index}.{rest}``."""
    block = f"layer{stage}.{index}."
    m = _CONV_UNIT.fullmatch(rest)
    if m is not None:
        k, sub, tail = int(m.group(1)), int(m.group(2)), m.group(3)
        if k not in _CONV_NUMBER or sub not in (0, 1):
            raise _fail(key, f"names module {sub} of branch module {k}, which holds no parameters in the old "
                             "blocks (branch 0, 1, 3: conv 0, BN 1)")
        n = _CONV_NUMBER[k]
        if units:
            return f"{block}conv{n}.{'conv' if sub == 0 else 'bn'}.{tail}"
        return f"{block}{'conv' if sub == 0 else 'bn'}{n}.{tail}"
    m = _OWN_NORM.fullmatch(rest)
    if m is not None:
        k = int(m.group(1))
        if k not in _CONV_NUMBER:
            raise _fail(key, f"names branch module {k}, the bottleneck's average pool (no parameters)")
        return f"{block}conv{_CONV_NUMBER[k]}.{_sk_part(key, m.group(2))}"
    m = _BLOCK_ATTN.fullmatch(rest)
    if m is not None:
        return _attn_layer(f"{block}se.", m.group(1), expected)
    m = _SHORTCUT.fullmatch(rest)
    if m is not None:
        return f"{block}downsample.{m.group(1)}"
    # not branch / attn / shortcut: a stage-end layer (BAM), the stage's last child after its blocks
    return _attn_layer(f"layer{stage}.attn.", rest, expected)


def _stem_key(key: str, index: int, rest: str, deep: bool) -> str:
    """The new name of ``stem.convs.{index}.{rest}``: the deep stem's convs keep their indices under ``conv1``."""
    if deep:
        if index == 7:
            return f"bn1.{rest}"
        if index in (0, 1, 3, 4, 6):
            return f"conv1.{index}.{rest}"
    elif index in (0, 1):
        return f"{'conv1' if index == 0 else 'bn1'}.{rest}"
    raise _fail(key, f"names stem module {index}, which holds no parameters in the old "
                     f"{'deep' if deep else 'basic'} stem")


def convert_legacy_state_dict(state: Mapping[str, torch.Tensor],
                              expected: Collection[str] | None = None) -> dict[str, torch.Tensor]:
    """``state`` in the layout before 9b8d90e (``stem.``, ``stages.``, ``head.``), under today's module names.

    Each key is renamed by the rules of the module docstring; SK's fuse and select weights, (d, C) and (M C, d)
    linear weights before, are reshaped to the 1x1 convolutions' (d, C, 1, 1) and (M C, d, 1, 1). The tensors
    themselves are not copied; the order of ``state`` is kept.

    Args:
        state: the old state dict (e.g. read from an old checkpoint's safetensors file).
        expected: the keys of the model it is for (optional). Only needed for CBAM's channel gate used alone
            (``attn=cbam_channel``), whose old keys are SE's but whose names did not change.

    Returns:
        A new dict: the same tensors under the new keys.

    Raises:
        CheckpointError: a key that is not one of the old layout's (its message names the key).
    """
    deep = any(k.startswith("stem.convs.7.") for k in state)  # the deep stem's last BN; the basic stem has 0, 1
    units = any(".split.branches." in k for k in state)  # SK networks are laid out as timm's SKNet now
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if (m := _STEM.fullmatch(key)) is not None:
            new = _stem_key(key, int(m.group(1)), m.group(2), deep)
        elif (m := _BLOCK.fullmatch(key)) is not None:
            new = _block_key(key, m.group(1), m.group(2), m.group(3), units, expected)
        elif (m := _HEAD.fullmatch(key)) is not None:
            new = f"fc.{m.group(1)}"
        else:
            raise _fail(key, "is not in the old layout")
        if new.endswith(_SK_RESHAPED) and tensor.dim() == 2:
            tensor = tensor.reshape(*tensor.shape, 1, 1)
        if new in out:
            raise _fail(key, f"maps to {new!r}, which an earlier key already took")
        out[new] = tensor
    return out
