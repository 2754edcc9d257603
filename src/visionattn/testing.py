"""The layer contract as reusable checks.

Every registered layer and model runs through these in the test suite; they are public so that a user can hold
their own module to the same contract. Each check raises ``AssertionError`` with a message saying what broke.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.func import functional_call

__all__ = [
    "check_output_shape",
    "check_grads_reach_params",
    "open_zero_scales",
    "check_finite",
    "check_batch_independence",
    "check_empty_batch",
    "check_batch_of_one",
    "check_he_init",
    "check_bf16",
    "check_compile",
    "check_gradcheck",
    "check_feature_api",
]


def _forward(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = module(x)
    if not isinstance(out, torch.Tensor):
        raise AssertionError(f"{type(module).__name__} returned {type(out).__name__}, expected a Tensor")
    return out


def check_output_shape(module: nn.Module, x: torch.Tensor, expected: tuple[int, ...]) -> torch.Tensor:
    out = _forward(module, x)
    if tuple(out.shape) != tuple(expected):
        raise AssertionError(f"output shape {tuple(out.shape)} != expected {tuple(expected)} for input "
                             f"{tuple(x.shape)}")
    return out


def open_zero_scales(module: nn.Module) -> list[str]:
    """Set every normalisation layer's all-zero scale to 1, in place; returns their names.

    A residual branch that starts at zero (the non-local block's BatchNorm, ResNet's ``zero_init_last``) passes
    no gradient to the layers before that scale at initialisation, by design; opening it lets a check test the
    wiring of those layers.
    """
    opened = []
    with torch.no_grad():
        for name, m in module.named_modules():
            weight = getattr(m, "weight", None)
            norm = isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm))
            if norm and isinstance(weight, torch.Tensor) and weight.numel() and not weight.any():
                weight.fill_(1.0)
                opened.append(name)
    return opened


def check_grads_reach_params(module: nn.Module, x: torch.Tensor, open_zero_init: bool = True) -> None:
    """Backward from a random projection of the output gives every trainable parameter a finite, non-zero grad.

    With ``open_zero_init`` (default) an all-zero normalisation scale is first set to 1 (:func:`open_zero_scales`):
    a branch initialised to zero is correct, and its gradient at step 0 is zero by design.
    """
    if open_zero_init:
        open_zero_scales(module)
    module.train()
    module.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_(True)
    out = _forward(module, x)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(0), dtype=out.dtype)
    (out * weight).sum().backward()
    missing = [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]
    zero = [n for n, p in module.named_parameters() if p.grad is not None and not p.grad.abs().sum() > 0]
    bad = [n for n, p in module.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    if missing or zero or bad:
        raise AssertionError(f"gradients: none for {missing}, all-zero for {zero}, non-finite for {bad}")
    if x.grad is None or not torch.isfinite(x.grad).all():
        raise AssertionError("the input's gradient is missing or not finite")


def check_finite(module: nn.Module, x: torch.Tensor) -> None:
    """No NaN or Inf in the output, in train and eval mode."""
    for training in (True, False):
        module.train(training)
        with torch.no_grad():
            out = _forward(module, x)
        if not torch.isfinite(out).all():
            raise AssertionError(f"non-finite output in {'train' if training else 'eval'} mode for input with "
                                 f"max |x| = {x.abs().max().item():.3g}")


def check_batch_independence(module: nn.Module, x: torch.Tensor, atol: float = 1e-5, rtol: float = 1e-4) -> None:
    """In eval mode, sample i's output is the same alone as inside the batch.

    ``atol`` is relative to the output's scale where that exceeds 1: float32 rounding grows with the values (a
    freshly initialised network in eval mode, whose BatchNorm statistics have seen a batch or two, can give
    large logits).
    """
    module.eval()
    with torch.no_grad():
        full = _forward(module, x)
        scale = max(1.0, full.abs().max().item())
        for i in range(x.shape[0]):
            alone = _forward(module, x[i : i + 1])
            if not torch.allclose(alone[0], full[i], atol=atol * scale, rtol=rtol):
                diff = (alone[0] - full[i]).abs().max().item()
                raise AssertionError(f"eval output of sample {i} depends on the rest of the batch "
                                     f"(max difference {diff:.3g})")


def check_empty_batch(module: nn.Module, x: torch.Tensor, expected: tuple[int, ...]) -> None:
    """An empty batch (B = 0) gives an empty output of the ``expected`` shape, in train and eval mode."""
    if x.shape[0] != 0:
        raise AssertionError(f"check_empty_batch needs a batch of 0, got input shape {tuple(x.shape)}")
    for training in (True, False):
        module.train(training)
        with torch.no_grad():
            out = _forward(module, x)
        if tuple(out.shape) != tuple(expected):
            raise AssertionError(f"empty batch in {'train' if training else 'eval'} mode gave shape "
                                 f"{tuple(out.shape)}, expected {tuple(expected)}")


def check_batch_of_one(module: nn.Module, x: torch.Tensor, expected: tuple[int, ...]) -> bool:
    """A batch of one in training either works or raises a UsageError that names the layer, the need for a
    batch of at least 2 and the way out (eval mode); eval mode always works. Returns whether training worked."""
    from visionattn.errors import UsageError  # here, so that importing this module stays light

    if x.shape[0] != 1:
        raise AssertionError(f"check_batch_of_one needs a batch of 1, got input shape {tuple(x.shape)}")
    worked = True
    try:
        check_output_shape(module.train(), x, expected)
    except UsageError as e:
        msg, name = str(e), type(module).__name__
        for needed in (name, "batch of at least 2 in training", ".eval()"):
            if needed not in msg:
                raise AssertionError(f"the batch-of-one error does not say {needed!r}: {msg}") from e
        worked = False
    with torch.no_grad():
        check_output_shape(module.eval(), x, expected)
    return worked


def check_he_init(module: nn.Module, rel_tol: float = 0.1) -> None:
    """Every 2-D convolution weight, and every expert of an expert bank (a 5-D ``weight``), has the standard
    deviation of He's initialisation (fan-out, ReLU gain): ``sqrt(2 / (out_channels * kh * kw))``.

    The tolerance is ``rel_tol`` plus four standard errors of a sample standard deviation, ``4 / sqrt(2 n)``
    for n weights, so a small kernel is not blamed for sampling noise; PyTorch's default initialisation is
    off by a factor of 2.4 or more for every convolution the networks here hold.
    """
    bad = []
    for name, m in module.named_modules():
        weight = getattr(m, "weight", None)
        if isinstance(m, nn.Conv2d):
            kernels = [weight]
        elif isinstance(weight, torch.Tensor) and weight.dim() == 5:  # (n experts, O, C / g, kh, kw)
            kernels = list(weight)
        else:
            continue
        for k in kernels:
            he = (2.0 / (k.shape[0] * k[0, 0].numel())) ** 0.5
            std = k.detach().float().std().item()
            if abs(std / he - 1) > rel_tol + 4 / (2 * k.numel()) ** 0.5:
                bad.append(f"{name or type(m).__name__}: std {std:.4g}, He {he:.4g}")
    if bad:
        raise AssertionError(f"{len(bad)} convolution weights are not He-initialised: " + "; ".join(bad[:5]))


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12)).item()


def check_bf16(module: nn.Module, x: torch.Tensor, max_rel_err: float = 0.05) -> None:
    """A bf16 copy runs, returns bf16, stays finite and close to the fp32 output (eval mode)."""
    module.eval()
    low = copy.deepcopy(module).to(torch.bfloat16)
    with torch.no_grad():
        ref = _forward(module, x)
        out = _forward(low, x.to(torch.bfloat16))
    if out.dtype != torch.bfloat16:
        raise AssertionError(f"bf16 input gave a {out.dtype} output")
    if not torch.isfinite(out).all():
        raise AssertionError("bf16 forward produced NaN/Inf")
    err = _rel_err(out, ref)
    if err > max_rel_err:
        raise AssertionError(f"bf16 output differs from fp32 by relative error {err:.3g} > {max_rel_err}")


def check_compile(module: nn.Module, x: torch.Tensor, atol: float = 1e-4, rtol: float = 1e-4) -> None:
    """``torch.compile`` (inductor) gives the eager output, in eval mode."""
    module.eval()
    compiled = torch.compile(module, dynamic=False)
    with torch.no_grad():
        ref = _forward(module, x)
        out = compiled(x)
    if not torch.allclose(out, ref, atol=atol, rtol=rtol):
        raise AssertionError(f"compiled output differs from eager by {(out - ref).abs().max().item():.3g}")


def check_gradcheck(module: nn.Module, x: torch.Tensor, fast_mode: bool = True) -> None:
    """float64 ``torch.autograd.gradcheck`` with respect to the input and every parameter (train mode)."""
    module = copy.deepcopy(module).double().train()
    names = [n for n, p in module.named_parameters() if p.requires_grad]
    params = tuple(p.detach().clone().requires_grad_(True) for n, p in module.named_parameters() if p.requires_grad)
    buffers = {n: b.clone() for n, b in module.named_buffers()}

    def fn(inp: torch.Tensor, *ps: torch.Tensor) -> torch.Tensor:
        # fresh buffers each call: BatchNorm's running statistics must not drift between the numerical probes
        state = {**{n: b.clone() for n, b in buffers.items()}, **dict(zip(names, ps))}
        return functional_call(module, state, (inp,))

    inputs = (x.detach().double().requires_grad_(True), *params)
    torch.autograd.gradcheck(fn, inputs, fast_mode=fast_mode, atol=1e-5, rtol=1e-3)



@torch.no_grad()
def check_feature_api(model: nn.Module, x: torch.Tensor, atol: float = 1e-5) -> None:
    """The timm model API of a network, in eval mode: ``forward_head(forward_features(x))`` is ``forward(x)``;
    ``pre_logits`` gives (B, num_features); ``features_only`` gives one map per ``feature_info`` entry with its
    channel count and reduction; ``pretrained_cfg`` names the input the network is built for."""
    from visionattn.models.features import FeatureNet

    model.eval()
    logits = _forward(model, x)
    features = model.forward_features(x)
    torch.testing.assert_close(model.forward_head(features), logits, atol=atol, rtol=1e-4)
    pre = model.forward_head(features, pre_logits=True)
    if tuple(pre.shape) != (x.shape[0], model.num_features):
        raise AssertionError(f"pre_logits shape {tuple(pre.shape)} != (B, num_features={model.num_features})")
    maps = FeatureNet(model)(x)
    info = model.feature_info
    if len(maps) != len(info):
        raise AssertionError(f"features_only gave {len(maps)} maps for {len(info)} feature_info entries")
    for f, m in zip(info, maps):
        want = (x.shape[0], f["num_chs"], -(-x.shape[2] // f["reduction"]), -(-x.shape[3] // f["reduction"]))
        if tuple(m.shape) != want:
            raise AssertionError(f"feature {f['module']}: shape {tuple(m.shape)} != {want} from feature_info {f}")
    if features.dim() == 4:  # a CNN: the last map is what forward_features returns
        torch.testing.assert_close(maps[-1], features, atol=atol, rtol=1e-4)
    else:  # tokens (a ViT): the maps are the model's intermediates, whose final tokens are forward_features'
        final, inter = model.forward_intermediates(x, list(range(len(info))))
        torch.testing.assert_close(final, features, atol=atol, rtol=1e-4)
        for m, i in zip(maps, inter):
            torch.testing.assert_close(m, i, atol=atol, rtol=1e-4)
    cfg = getattr(model, "pretrained_cfg", None)
    if cfg is None or tuple(cfg.input_size) != tuple(model.input_size):
        raise AssertionError(f"pretrained_cfg {cfg} does not name the input size {model.input_size}")
