"""Pieces every layer shares: argument checks, the bottleneck width, activation lookup, the excite MLP.

Every check raises :class:`visionattn.errors.UsageError` (a ``ValueError``) naming the argument, what it got and
what it needs, so that each layer validates its constructor arguments with the same few calls.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache, wraps

import torch
from torch import nn

from visionattn.errors import UsageError, check_finite, did_you_mean

__all__ = [
    "cache_unless_compiling",
    "LayerSpec",
    "check_positive_int",
    "check_bool",
    "check_ratio",
    "check_norm_batch",
    "check_odd",
    "check_feature_map",
    "check_images",
    "make_divisible",
    "reduced_channels",
    "get_act_layer",
    "create_act",
    "ConvMlp",
    "ConvNormAct",
    "pair",
]

LayerSpec = str | Callable[..., nn.Module] | None

_ACTIVATIONS: dict[str, Callable[..., nn.Module]] = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "leaky_relu": nn.LeakyReLU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "gelu": nn.GELU,
    "mish": nn.Mish,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "hard_sigmoid": nn.Hardsigmoid,
    "hard_swish": nn.Hardswish,
    "identity": nn.Identity,
}


def check_positive_int(name: str, value: object, minimum: int = 1) -> int:
    """Return ``value`` if it is an int >= ``minimum``, else raise a UsageError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UsageError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_bool(name: str, value: object) -> bool:
    """Return ``value`` if it is a bool; a string such as ``"no"`` would otherwise count as true."""
    if not isinstance(value, bool):
        raise UsageError(f"{name} must be True or False, got {value!r}")
    return value


def check_ratio(name: str, value: object) -> float:
    """Return ``value`` if it is a finite number > 0 (a bottleneck ratio such as ``rd_ratio``)."""
    check_finite(name, value)  # type: ignore[arg-type]
    if not value > 0:  # type: ignore[operator]
        raise UsageError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def check_odd(name: str, value: object, why: str) -> int:
    """Return ``value`` if it is an odd int >= 1; ``why`` says what an even one would break."""
    check_positive_int(name, value)
    if value % 2 == 0:  # type: ignore[operator]
        raise UsageError(f"{name} must be odd {why}, got {value}")
    return value  # type: ignore[return-value]


def check_norm_batch(module: nn.Module, x: torch.Tensor, pooled: tuple[int, int] = (1, 1)) -> None:
    """In training, a BatchNorm over a ``pooled`` map sees ``B * h * w`` values per channel; one is not enough.

    Called at the first line of ``forward`` by layers whose BatchNorm normalises a pooled map, so that batch size
    1 in training gets a message naming the layer and the way out instead of BatchNorm's own.
    """
    if module.training and x.shape[0] * pooled[0] * pooled[1] == 1:
        where = "a 1x1 pooled map" if pooled == (1, 1) else f"a {pooled[0]}x{pooled[1]} pooled map"
        raise UsageError(f"{type(module).__name__}: its BatchNorm over {where} needs a batch of at least 2 in "
                         f"training, got a batch of {x.shape[0]} (input shape {tuple(x.shape)}); train with batch "
                         f"size >= 2, or call .eval() to use the running statistics")


def pair(name: str, value: int | tuple[int, int]) -> tuple[int, int]:
    """``7 -> (7, 7)``; a 2-tuple of positive ints passes through; anything else is a ValueError."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if not (isinstance(value, (tuple, list)) and len(value) == 2):
        raise UsageError(f"{name} must be an int or a pair of ints, got {value!r}")
    return (check_positive_int(name, value[0]), check_positive_int(name, value[1]))


def check_feature_map(x: torch.Tensor, channels: int, layer: str) -> None:
    """Raise a UsageError unless ``x`` is a (B, ``channels``, H, W) tensor."""
    if x.dim() != 4:
        raise UsageError(f"{layer} expects a 4-D input (B, C, H, W), got a {x.dim()}-D tensor of shape "
                         f"{tuple(x.shape)}")
    if x.shape[1] != channels:
        raise UsageError(f"{layer} was built for {channels} input channels, got an input with {x.shape[1]} "
                         f"channels (shape {tuple(x.shape)})")


def check_images(x: torch.Tensor, in_chans: int) -> None:
    """A UsageError unless ``x`` is a (B, ``in_chans``, H, W) batch of images (every network's first check)."""
    if x.dim() != 4 or x.shape[1] != in_chans:
        raise UsageError(f"the network expects images (B, {in_chans}, H, W), got a tensor of shape "
                         f"{tuple(x.shape)}; set in_chans to match")


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None, round_limit: float = 0.9) -> int:
    """Round ``value`` to a multiple of ``divisor`` (never below ``min_value`` nor below ``round_limit * value``).

    With ``divisor=1`` this is plain rounding, so ``channels * rd_ratio`` is kept as the papers write it.
    """
    min_value = min_value or divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < round_limit * value:
        new_value += divisor
    return new_value


def reduced_channels(
    channels: int, rd_ratio: float = 1 / 16, rd_channels: int | None = None, rd_divisor: int = 1
) -> int:
    """The bottleneck width ``C / r`` of an excite MLP, in the community's convention.

    ``rd_channels`` wins when given; otherwise ``channels * rd_ratio`` rounded to a multiple of ``rd_divisor``
    (1 keeps the papers' exact ``C / r``), and never below 1.
    """
    check_positive_int("channels", channels)
    if rd_channels is not None:
        return check_positive_int("rd_channels", rd_channels)
    check_ratio("rd_ratio", rd_ratio)
    check_positive_int("rd_divisor", rd_divisor)
    return make_divisible(channels * rd_ratio, rd_divisor, min_value=1, round_limit=0.0)


def get_act_layer(spec: LayerSpec, name: str = "act_layer") -> Callable[..., nn.Module]:
    """Resolve an activation given by name (``"relu"``, ``"sigmoid"``, ...) or as a module class/factory."""
    if spec is None:
        return nn.Identity
    if isinstance(spec, str):
        try:
            return _ACTIVATIONS[spec.lower()]
        except KeyError:
            hint = did_you_mean(spec.lower(), sorted(_ACTIVATIONS))
            raise UsageError(f"{name}: {spec!r} is not a known activation{hint}; choose one of "
                             f"{', '.join(sorted(_ACTIVATIONS))} or pass an nn.Module class") from None
    if isinstance(spec, nn.Module):  # an instance would be shared by every use and called without an input
        raise UsageError(f"{name} must be a name or an nn.Module class, got the instance {spec!r}; pass "
                         f"{type(spec).__name__} (the class) instead")
    if callable(spec):
        return spec
    raise UsageError(f"{name} must be a name, an nn.Module class or None, got {spec!r}")


# activations whose in-place form gives bit-identical outputs and gradients: the backward needs only the sign of
# the result, which the in-place form keeps
_IN_PLACE_SAFE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU)


def create_act(spec: LayerSpec, name: str = "act_layer", inplace: bool = False) -> nn.Module:
    """Instantiate the activation ``spec`` (see :func:`get_act_layer`).

    ``inplace=True`` builds ReLU, ReLU6 and LeakyReLU in place (what timm does after every BatchNorm: no new
    tensor per activation); other activations are built as usual. Only for an input that nothing else needs
    afterwards, such as the fresh output of a BatchNorm or a convolution in the same module.
    """
    factory = get_act_layer(spec, name)
    if inplace and factory in _IN_PLACE_SAFE:
        return factory(inplace=True)
    return factory()


class ConvMlp(nn.Module):
    """The excite MLP ``W2 . act(norm(W1 . z))`` written with 1x1 convolutions.

    The papers write it with linear layers on a pooled vector (SE eq. 2.2, CBAM eq. 4.3, BAM eq. 5.1); 1x1
    convolutions hold the same parameters and also apply it at every position of a gathered map (GE eq. 6.4).

    Args:
        channels: input and output channels C.
        hidden: bottleneck width C / r.
        act_layer: activation between the two layers.
        norm: put a BatchNorm before the activation (BAM, eq. 5.1).
        bias: whether the two 1x1 convolutions carry a bias.

    Shape:
        - Input: (B, C, h, w), usually h = w = 1
        - Output: (B, C, h, w), no gate applied
    """

    def __init__(self, channels: int, hidden: int, act_layer: LayerSpec = "relu", norm: bool = False,
                 bias: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=check_bool("bias", bias))
        self.bn = nn.BatchNorm2d(hidden) if check_bool("norm", norm) else nn.Identity()
        self.act = create_act(act_layer, inplace=True)  # on fc1's (or bn's) fresh output
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.bn(self.fc1(z))))


class ConvNormAct(nn.Module):
    """A convolution, its BatchNorm and an activation as one unit with the children ``conv``, ``bn``, ``act``.

    The ecosystem's name for this unit (timm's ``ConvNormAct``): SK's paths and the convolutions of the SK
    networks are laid out this way, so their checkpoints load by name.

    Args:
        conv: the convolution (any module that maps C_in to ``out_channels`` channels).
        out_channels: channels of the BatchNorm.
        act_layer: activation after the BatchNorm (None: none).

    Shape:
        - Input: what ``conv`` takes
        - Output: what ``conv`` gives
    """

    def __init__(self, conv: nn.Module, out_channels: int, act_layer: LayerSpec = "relu") -> None:
        super().__init__()
        self.conv = conv
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = create_act(act_layer, inplace=True)  # on the BatchNorm's fresh output, as timm's

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


def is_power_of_two(value: int) -> bool:
    return value > 0 and math.log2(value).is_integer()


def cache_unless_compiling(maxsize: int) -> Callable[[Callable], Callable]:
    """``functools.lru_cache(maxsize)``, bypassed while ``torch.compile`` traces (which ignores the cache, with a
    warning): for the small constant tensors (masks) a call needs again and again."""
    def wrap(fn: Callable) -> Callable:
        cached = lru_cache(maxsize)(fn)

        @wraps(fn)
        def call(*args: object) -> object:
            return fn(*args) if torch.compiler.is_compiling() else cached(*args)
        return call
    return wrap
