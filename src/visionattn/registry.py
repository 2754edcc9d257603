"""Name -> factory registries for attention layers and for models.

A layer registers itself with :func:`register_attn` where it is defined; :func:`create_attn` builds it by name.
Each entry carries what the generic contract tests need to know about it (whether it needs the input's spatial
size, whether it changes the channel count or resolution like a convolution, which keyword variants to test), so
a layer registered later is covered by those tests without extra code.

Every look-up (:meth:`Registry.get`, :meth:`Registry.names`, ``in``) first imports :mod:`visionattn.layers` and
:mod:`visionattn.models`, whose modules register themselves; so this module, and ``import visionattn``, stay free
of torch until a layer or model is asked for.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from visionattn.errors import UsageError, did_you_mean, unknown_name

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "PLACEMENTS",
    "Entry",
    "Registry",
    "ATTN",
    "MODELS",
    "register_attn",
    "create_attn",
    "create_attn_for_size",
    "list_attn",
    "get_attn_entry",
    "register_model",
    "create_model",
    "list_models",
    "get_model_entry",
]


PLACEMENTS = ("block", "stage", "after")
"""Where a layer that is not ``conv_like`` goes in a ResNet by default (:attr:`Entry.placement`)."""


@dataclass(frozen=True)
class Entry:
    """One registered layer or model.

    Args:
        name: registry name, e.g. ``"se"``.
        factory: class or function that builds the module.
        paper: short citation, e.g. ``"Hu et al. 2018, Squeeze-and-Excitation Networks"``.
        description: one line for tables and the README.
        family: ``"channel"``, ``"branch"``, ``"self-attention"``, ... (models: ``"resnet"``, ...).
        needs_spatial_size: the design fixes the input's (H, W); the factory takes ``spatial_size``.
        conv_like: a drop-in convolution: takes ``out_channels`` and ``stride``, may change C and (H, W).
        variants: keyword sets the contract tests build besides the defaults.
        defaults: keyword arguments applied before the caller's (used by named variants of one class).
        min_channels: smallest channel count the default configuration accepts (for contract tests).
        placement: where its paper puts a layer that is not ``conv_like`` in a ResNet (the plug's default,
            :mod:`visionattn.models.plug`): ``"block"`` (in every residual block, before the sum), ``"stage"``
            (at the end of every stage but the last: BAM) or ``"after"`` (on a block's output: non-local).
        own_norm_act: ``conv_like`` only: it ends in its own BN and activation (SK, SplAt), so the block adds
            none after it.
        unit_layout: ``conv_like`` only: blocks with it name their convolutions as units (``conv1.conv``,
            ``conv1.bn``: timm's SKNet layout) rather than flat (``conv1``, ``bn1``).
        every_conv: ``conv_like`` only: it replaces every convolution of a residual branch (CondConv, dynamic
            convolution), not only the k x k one.
    """

    name: str
    factory: Callable[..., nn.Module]
    paper: str = ""
    description: str = ""
    family: str = ""
    needs_spatial_size: bool = False
    conv_like: bool = False
    variants: tuple[Mapping[str, Any], ...] = ()
    defaults: Mapping[str, Any] = field(default_factory=dict)
    min_channels: int = 1
    placement: str = "block"
    own_norm_act: bool = False
    unit_layout: bool = False
    every_conv: bool = False

    def __post_init__(self) -> None:
        if self.placement not in PLACEMENTS:
            raise UsageError(f"placement: got {self.placement!r} for {self.name!r}, needed one of "
                             f"{', '.join(PLACEMENTS)}{did_you_mean(str(self.placement), PLACEMENTS)}")
        conv_only = [key for key in ("own_norm_act", "unit_layout", "every_conv") if getattr(self, key)]
        if conv_only and not self.conv_like:
            raise UsageError(f"{conv_only[0]}: {self.name!r} sets it but is not conv_like; only a layer that takes "
                             "the place of a convolution has a norm, a layout or convolutions to replace")
        if self.conv_like and self.placement != "block":
            raise UsageError(f"placement: {self.name!r} is conv_like, so it goes in place of a convolution; "
                             f"leave placement at 'block', got {self.placement!r}")

    def build(self, *args: Any, **kwargs: Any) -> nn.Module:
        self.check_keywords(kwargs)
        try:
            return self.factory(*args, **{**self.defaults, **kwargs})
        except TypeError as err:  # a keyword that a factory forwarding **kwargs passed on to a class that lacks it
            match = re.search(r"unexpected keyword argument '(\w+)'", str(err))
            if match is None or match.group(1) not in kwargs:
                raise
            raise UsageError(f"{match.group(1)}: {self.name!r} takes no keyword {match.group(1)!r}") from None

    def check_keywords(self, kwargs: Mapping[str, Any], argument: str | None = None) -> None:
        """Refuse a keyword the factory does not name (with a "did you mean"), before anything is built; a
        factory that takes ``**kwargs`` is checked by what it forwards them to."""
        try:
            params = inspect.signature(self.factory).parameters
        except (TypeError, ValueError):
            return
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return
        known = [p for p in params if p not in ("self", "channels")]
        for key in kwargs:
            if key not in params:
                raise UsageError(f"{argument or key}: {self.name!r} takes no keyword {key!r}"
                                 f"{did_you_mean(str(key), known)}; it takes {', '.join(known)}")


def _register_all() -> None:
    """Import the packages whose modules register the layers and models (a no-op once they are imported)."""
    import visionattn.layers  # noqa: F401
    import visionattn.models  # noqa: F401


class Registry:
    """A mapping of names to :class:`Entry`, with a decorator to fill it."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def add(self, entry: Entry) -> None:
        if entry.name in self._entries:
            raise ValueError(f"{self.kind} name {entry.name!r} is already registered")
        self._entries[entry.name] = entry

    def register(self, name: str, **meta: Any) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
        def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
            self.add(Entry(name=name, factory=factory, **meta))
            return factory

        return decorator

    def get(self, name: str) -> Entry:
        _register_all()
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise unknown_name("name", self.kind, name, self._entries) from None

    def names(self, family: str | None = None, argument: str = "family") -> list[str]:
        """Sorted names, of one ``family`` only when given (an unknown family is an error naming ``argument``,
        not an empty list)."""
        _register_all()
        if family is not None and family not in self.families():
            raise unknown_name(argument, f"{self.kind} family", family, self.families())
        return sorted(n for n, e in self._entries.items() if family is None or e.family == family)

    def families(self) -> list[str]:
        _register_all()
        return sorted({e.family for e in self._entries.values()})

    def __contains__(self, name: object) -> bool:
        _register_all()
        return name in self._entries


ATTN = Registry("attention layer")
MODELS = Registry("model")


def register_attn(name: str, **meta: Any) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register a layer class (or factory function) under ``name``; see :class:`Entry` for ``meta``."""
    return ATTN.register(name, **meta)


def get_attn_entry(name: str) -> Entry:
    return ATTN.get(name)


def create_attn(name: str, channels: int, **kwargs: Any) -> nn.Module:
    """Build the attention layer registered as ``name`` for ``channels`` input channels.

    Example:
        >>> layer = create_attn("se", 64, rd_ratio=1 / 8)
    """
    return ATTN.get(name).build(channels, **kwargs)


def create_attn_for_size(name: str, channels: int, size: tuple[int, int], **kwargs: Any) -> nn.Module:
    """:func:`create_attn` for a (``channels``, H, W) feature map of ``size`` = (H, W): designs that fix the
    spatial size (``Entry.needs_spatial_size``) get ``spatial_size=size`` unless the caller gives one."""
    if ATTN.get(name).needs_spatial_size:
        kwargs.setdefault("spatial_size", tuple(size))
    return create_attn(name, channels, **kwargs)


def list_attn(family: str | None = None) -> list[str]:
    """Sorted names of the registered attention layers, optionally of one ``family`` only."""
    return ATTN.names(family)


def register_model(name: str, **meta: Any) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register a model factory under ``name``."""
    return MODELS.register(name, **meta)


def get_model_entry(name: str) -> Entry:
    return MODELS.get(name)


def create_model(name: str, pretrained_file: str | None = None, features_only: bool = False,
                 out_indices: Any = None, **kwargs: Any) -> nn.Module:
    """Build the model registered as ``name`` (e.g. ``num_classes=10, in_chans=1``).

    Args:
        name: registered model name (:func:`list_models`).
        pretrained_file: a local ``.safetensors`` or PyTorch weights file (timm's, torchvision's or ours) to
            start from; the classifier is replaced when its class count differs, a 1-channel model sums the
            stem's RGB filters (:mod:`visionattn.models.pretrained`). Nothing is downloaded.
        features_only: return the stages' feature maps instead of logits (:mod:`visionattn.models.features`).
        out_indices: with ``features_only``, which of ``feature_info``'s outputs to return (default: all).
        **kwargs: the model's own arguments.

    Example:
        >>> model = create_model("resnet50", num_classes=10, pretrained_file="resnet50.safetensors")
    """
    model = MODELS.get(name).build(**kwargs)
    from visionattn.models.factory import finish_model  # the models package is imported by the lookup above

    return finish_model(name, model, pretrained_file, features_only, out_indices)


def list_models(family: str | None = None) -> list[str]:
    """Sorted names of the registered models, optionally of one ``family`` only."""
    return MODELS.names(family)
