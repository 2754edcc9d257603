"""Pretrained weights from a local file: read, adapt to the model, check, load; and each model's input record.

Nothing is downloaded: a user fetches a checkpoint once (e.g. timm's ``model.safetensors`` from the Hugging Face
Hub, or torchvision's ``.pth``) and passes its path, ``create_model("resnet50", pretrained_file=PATH)`` or
``visionattn train --pretrained PATH``. Files are read without executing code: safetensors, or a PyTorch file
through ``torch.load(weights_only=True)``.

What loading does, in order (:func:`load_pretrained`):

1. Read the tensors; unwrap a training checkpoint (``{"state_dict": ...}``, ``{"model": ...}``) and the prefixes
   that ``DistributedDataParallel`` (``module.``) and ``torch.compile`` (``_orig_mod.``) add. A state dict in
   this project's layout before the ecosystem names (keys ``stem.``, ``stages.``, ``head.``) is converted
   (:mod:`visionattn.models.legacy`).
2. Let the model fit the file to itself where it knows how: a model with a method
   ``adapt_pretrained_state(state) -> (state, notes)`` gets the tensors and returns them changed, with a sentence
   for the report per change (a ViT resamples the file's position embeddings to its own grid of patches).
3. Adapt the first convolution to the model's input channels, timm's rule: for 1 channel its RGB filters are
   summed (the network then sees a grey image as it saw (x, x, x)); for C > 3 the filters are repeated and
   scaled by 3 / C.
4. Leave out the classifier when its shape differs from the model's (another class count, or none): the model
   keeps its freshly initialised ``fc`` (:meth:`~visionattn.models.resnet.ResNet.reset_classifier`).
5. Check the fit: every file tensor must have a place of the same shape in the model. The only model tensors
   allowed to be absent from the file are those of attention layers the file has no trace of (a timm ResNet-50
   into ``cbam_resnet50``: the CBAM layers start from their initialisation; the report lists them), and
   ``num_batches_tracked``. Anything else is an architecture mismatch: a :class:`CheckpointError` naming the
   first keys that differ.

Every model carries a :class:`PretrainedCfg` (``model.pretrained_cfg``): the input it expects and the
normalisation its weights were trained with, as timm's ``pretrained_cfg``; the trainer normalises with it
when it fine-tunes from a file.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visionattn.errors import CheckpointError, UsageError

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "FASHION_MNIST_MEAN", "FASHION_MNIST_STD", "PretrainedCfg",
           "LoadReport", "read_state_dict", "adapt_input_conv", "check_pretrained", "load_pretrained"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# the training split's statistics on the [0, 1] scale (what the trainer computes on that data)
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)

_WRAPPERS = ("state_dict", "model", "model_state", "model_state_dict", "module")
_PREFIXES = ("module.", "_orig_mod.")
_SHOW = 3  # how many keys an error names


@dataclass(frozen=True)
class PretrainedCfg:
    """What a model's weights expect of their input: timm's ``pretrained_cfg`` fields.

    Args:
        input_size: (C, H, W) the network is built for.
        mean, std: per-channel normalisation on the [0, 1] scale that the weights were trained with (ImageNet's
            for the ImageNet models; Fashion-MNIST's for the small-image models, which default to it).
        crop_pct: centre-crop fraction for evaluation (timm's default 0.875 at 224; 1.0 for small images).
        interpolation: resize filter for evaluation (timm's default ``"bilinear"``).
        num_classes: classifier outputs.
        first_conv: the first convolution's module name (the one :func:`adapt_input_conv` changes), or None
            when the stem is not a convolution.
        classifier: the classifier's module name.
        architecture: the registered model name.
        timm_name: timm's name for the same network, where timm has it (the same state dict loads in both).
    """

    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float = 0.875
    interpolation: str = "bilinear"
    num_classes: int = 1000
    first_conv: str | None = "conv1"
    classifier: str = "fc"
    architecture: str | None = None
    timm_name: str | None = None

    def replace(self, **changes: Any) -> PretrainedCfg:
        return dataclasses.replace(self, **changes)

    def normalization(self, in_chans: int | None = None,
                      argument: str = "in_chans") -> tuple[list[float], list[float]]:
        """(mean, std) for ``in_chans`` channels (default: the record's own). One channel from three takes
        their averages, the grey image the summed stem filters see best; three from one repeats it."""
        in_chans = self.input_size[0] if in_chans is None else in_chans
        mean, std = list(self.mean), list(self.std)
        if len(mean) == in_chans:
            return mean, std
        if in_chans == 1:
            return [sum(mean) / len(mean)], [sum(std) / len(std)]
        if len(mean) == 1:
            return mean * in_chans, std * in_chans
        raise UsageError(f"{argument}: the weights were trained on {len(mean)}-channel images, normalisation for "
                         f"{in_chans} channels is not defined; use 1 or {len(mean)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did; :meth:`notes` says it in sentences for the log.

    Attributes:
        path: the file.
        loaded: number of model tensors taken from the file.
        new_layers: model tensors left at their initialisation: attention layers the file does not have.
        classifier_reset: the file's classifier did not fit (class count) and the model keeps its new one.
        adapted_in_chans: (file channels, model channels) when the first convolution was adapted.
        converted: the file was in this project's old layout and was converted.
        model_notes: what the model's own ``adapt_pretrained_state`` changed (e.g. resampled position embeddings).
        metadata: the file's own metadata (safetensors), e.g. our trainer's model name.
    """

    path: Path
    loaded: int = 0
    new_layers: list[str] = field(default_factory=list)
    classifier_reset: bool = False
    adapted_in_chans: tuple[int, int] | None = None
    converted: bool = False
    model_notes: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)

    def notes(self) -> list[str]:
        out = [f"pretrained weights from {self.path}: {self.loaded} tensors loaded"]
        if self.converted:
            out.append("the file has visionattn's module names before the timm ones (stem., stages., head.): converted")
        if self.adapted_in_chans:
            src, dst = self.adapted_in_chans
            how = "summed over its RGB filters" if dst == 1 else f"repeated and scaled by 3/{dst}"
            out.append(f"first convolution adapted from {src} to {dst} input channels ({how})")
        out.extend(self.model_notes)
        if self.classifier_reset:
            out.append("classifier replaced: the file's has another class count; the new one starts from scratch")
        if self.new_layers:
            layers = sorted({_module_of(k) for k in self.new_layers})
            out.append(f"{len(self.new_layers)} tensors of {len(layers)} layers not in the file start from their "
                       f"initialisation: {', '.join(layers[:4])}{', ...' if len(layers) > 4 else ''}")
        return out


def _module_of(key: str) -> str:
    return key.rsplit(".", 1)[0]


def _read_file(path: Path, argument: str) -> tuple[dict[str, Any], dict[str, str]]:
    if path.suffix == ".safetensors":
        try:
            from safetensors import safe_open
        except ImportError:  # pragma: no cover - safetensors comes with the train extra
            raise UsageError(f"{argument}: reading .safetensors needs the safetensors package: "
                             "pip install 'visionattn[train]'") from None
        try:
            with safe_open(str(path), framework="pt") as f:
                return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
        except Exception as err:  # SafetensorError, OSError, ValueError
            raise CheckpointError(f"{argument}: {path} is not a readable safetensors file "
                                  f"({type(err).__name__}: {err})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError for code in the file, RuntimeError/EOFError for a broken one
        first = (str(err).strip().splitlines() or [""])[0]
        raise CheckpointError(f"{argument}: {path} cannot be read as PyTorch weights with weights_only=True "
                              f"({type(err).__name__}: {first}); only tensors are read, never pickled code: use "
                              "a state dict saved with torch.save, or safetensors") from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{argument}: {path} holds a {type(obj).__name__}, needed a state dict "
                              "(a mapping of names to tensors)")
    return dict(obj), {}


def read_state_dict(path: str | os.PathLike,
                    argument: str = "pretrained_file") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors of a weights file, unwrapped and without ``module.``/``_orig_mod.`` prefixes, and its metadata;
    errors name ``argument`` (the caller's name for the file: ``--pretrained`` on the command line).

    Raises:
        CheckpointError: missing or unreadable file, or one that holds no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{argument}: {path} does not exist" if not path.exists() else
                              f"{argument}: {path} is not a file")
    state, metadata = _read_file(path, argument)
    for key in _WRAPPERS:  # a training checkpoint: the weights sit under one of these
        inner = state.get(key)
        if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            state = dict(inner)
            break
    others = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    if others or not state:
        raise CheckpointError(f"{argument}: {path} is not a state dict of tensors"
                              + (f" (entries {others[:_SHOW]} are not tensors)" if others else " (it is empty)"))
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state, metadata


def adapt_input_conv(weight: torch.Tensor, in_chans: int, argument: str = "in_chans") -> torch.Tensor:
    """The first convolution's weight (O, I, kh, kw) for ``in_chans`` input channels, timm's rule.

    1 channel: the sum over the I filters (of three RGB filters, the one a grey image (x, x, x) sees).
    Otherwise from 3: the filters repeated ceil(C / 3) times, cut to C, scaled by 3 / C so that the
    response to a constant image keeps its size.
    """
    have = weight.shape[1]
    if have == in_chans:
        return weight
    if in_chans == 1:
        if have > 3 and have % 3 == 0:  # groups of RGB (stacked frames): sum within each group
            return weight.reshape(weight.shape[0], have // 3, 3, *weight.shape[2:]).sum(dim=2)
        return weight.sum(dim=1, keepdim=True)
    if have != 3:
        raise CheckpointError(f"{argument}: the file's first convolution takes {have} channels; adapting it to "
                              f"{in_chans} is defined from 3 (RGB) only")
    repeat = math.ceil(in_chans / 3)
    return weight.repeat(1, repeat, 1, 1)[:, :in_chans] * (3 / in_chans)


def _attention_modules(model: nn.Module) -> list[str]:
    """Names of the modules that are registered attention layers (the layers a plain checkpoint may lack)."""
    from visionattn.registry import ATTN

    kinds = tuple(e.factory for e in (ATTN.get(n) for n in ATTN.names()) if isinstance(e.factory, type))
    return [name for name, m in model.named_modules() if name and isinstance(m, kinds)]


def _cfg(model: nn.Module) -> PretrainedCfg | None:
    cfg = getattr(model, "pretrained_cfg", None)
    return cfg if isinstance(cfg, PretrainedCfg) else None


def _prepare(model: nn.Module, path: str | os.PathLike, allow_new_layers: bool,
             argument: str) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Read, convert and adapt the file for ``model`` and check that it fits; nothing is loaded yet."""
    state, metadata = read_state_dict(path, argument)
    report = LoadReport(Path(path), metadata=metadata)
    from visionattn.models.legacy import convert_legacy_state_dict, is_legacy_state_dict

    target = model.state_dict()
    if is_legacy_state_dict(state.keys()):
        state, report.converted = convert_legacy_state_dict(state, expected=target), True
    adapt = getattr(model, "adapt_pretrained_state", None)
    if callable(adapt):  # a model's own fitting of a file, e.g. a ViT resampling the file's position embeddings
        state, notes = adapt(state)
        report.model_notes.extend(notes)
    cfg = _cfg(model)
    first = f"{cfg.first_conv}.weight" if cfg is not None and cfg.first_conv else None
    if first in state and first in target and state[first].dim() == 4 and target[first].dim() == 4:
        have, want = state[first].shape[1], target[first].shape[1]
        if have != want:
            state[first] = adapt_input_conv(state[first], want, f"{argument} {path}")
            report.adapted_in_chans = (have, want)
    classifier = cfg.classifier if cfg is not None else "fc"
    head = [k for k in state if k.startswith(classifier + ".")]
    if head and any(k not in target or state[k].shape != target[k].shape for k in head):
        for k in head:
            del state[k]
        report.classifier_reset = True

    unexpected = [k for k in state if k not in target]
    shapes = [k for k in state if k in target and state[k].shape != target[k].shape]
    missing = [k for k in target if k not in state]
    new_layer_keys: set[str] = set()
    if allow_new_layers:
        present = {_module_of(k) for k in state}
        for prefix in _attention_modules(model):  # a layer is new when no tensor of the file lies inside it
            if not any(m == prefix or m.startswith(prefix + ".") for m in present):
                new_layer_keys.update(k for k in missing if k.startswith(prefix + "."))
    allowed = new_layer_keys | {k for k in missing if k.endswith("num_batches_tracked")}
    if report.classifier_reset:
        allowed |= {k for k in missing if k.startswith(classifier + ".")}
    missing = [k for k in missing if k not in allowed]
    if unexpected or shapes or missing:
        name = cfg.architecture if cfg is not None and cfg.architecture else type(model).__name__
        problems = []
        if shapes:
            problems.append("shapes differ: " + "; ".join(
                f"{k} file {tuple(state[k].shape)} vs model {tuple(target[k].shape)}" for k in shapes[:_SHOW]))
        if missing:
            problems.append(f"{len(missing)} model tensors not in the file (first: {', '.join(missing[:_SHOW])})")
        if unexpected:
            problems.append(f"{len(unexpected)} file tensors the model does not have (first: "
                            f"{', '.join(unexpected[:_SHOW])})")
        hint = _hint(state.keys())
        raise CheckpointError(f"{argument}: {path} does not fit the architecture {name!r}: "
                              + "; ".join(problems) + hint)
    report.new_layers = [k for k in target if k in new_layer_keys]
    report.loaded = len(state)
    return state, report


def _hint(keys: Any) -> str:
    """A guess at what the file is, from its names: helps with the commonest mix-ups."""
    keys = list(keys)
    if any(re.match(r"layer\d+\.\d+\.conv\d\.conv\.", k) for k in keys):
        return "; the file has SK-network layout (conv1.conv...): is it an SK ResNet (sknet50, skresnet18/34)?"
    if any(k.startswith("conv1.0.") for k in keys):
        return "; the file has a deep stem (conv1.0...): is it a ResNet-D/ResNeSt (resnet50d, resnest50, ...)?"
    return ""


def check_pretrained(model: nn.Module, path: str | os.PathLike, allow_new_layers: bool = True,
                     argument: str = "pretrained_file") -> LoadReport:
    """Everything :func:`load_pretrained` checks, without changing ``model`` (which may live on the meta device):
    for checks before any work starts."""
    return _prepare(model, path, allow_new_layers, argument)[1]


@torch.no_grad()
def load_pretrained(model: nn.Module, path: str | os.PathLike, allow_new_layers: bool = True,
                    argument: str = "pretrained_file") -> LoadReport:
    """Load a local weights file into ``model`` (see the module docstring for what is adapted and allowed).

    Args:
        model: the network, built for the data it will see (``num_classes``, ``in_chans``).
        path: a ``.safetensors`` file, or a PyTorch file readable with ``weights_only=True``.
        allow_new_layers: let attention layers that the file has no trace of keep their initialisation
            (False: every tensor but a refitted classifier must come from the file).
        argument: the name of the file in error messages (``--pretrained`` on the command line).

    Returns:
        A :class:`LoadReport`; ``report.notes()`` for the log.

    Raises:
        CheckpointError: unreadable file, or one of another architecture (names the first keys that differ).
    """
    state, report = _prepare(model, path, allow_new_layers, argument)
    model.load_state_dict(state, strict=False)  # _prepare checked: what is absent is exactly what may be
    return report
