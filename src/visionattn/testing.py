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
    "check_finite",
    "check_batch_independence",
    "check_bf16",
    "check_compile",
    "check_gradcheck",
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


def check_grads_reach_params(module: nn.Module, x: torch.Tensor) -> None:
    """Backward from a random projection of the output gives every trainable parameter a finite, non-zero grad."""
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
    """In eval mode, sample i's output is the same alone as inside the batch."""
    module.eval()
    with torch.no_grad():
        full = _forward(module, x)
        for i in range(x.shape[0]):
            alone = _forward(module, x[i : i + 1])
            if not torch.allclose(alone[0], full[i], atol=atol, rtol=rtol):
                diff = (alone[0] - full[i]).abs().max().item()
                raise AssertionError(f"eval output of sample {i} depends on the rest of the batch "
                                     f"(max difference {diff:.3g})")


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

