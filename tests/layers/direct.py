"""Direct computations for the formula tests: plain loops over tiny tensors, no torch.nn.functional.

Each function follows the textbook definition element by element, so a layer that agrees with it implements the
equation, not just the same library calls.
"""

from __future__ import annotations

import math

import torch


def sigmoid(v: torch.Tensor) -> torch.Tensor:
    return 1.0 / (1.0 + torch.exp(-v))


def relu(v: torch.Tensor) -> torch.Tensor:
    return torch.where(v > 0, v, torch.zeros_like(v))


def mean_hw(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C): (1 / HW) sum_j sum_k X[:, :, j, k] by loops."""
    b, c, h, w = x.shape
    out = torch.zeros(b, c, dtype=x.dtype)
    for j in range(h):
        for k in range(w):
            out += x[:, :, j, k]
    return out / (h * w)


def max_hw(x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    out = torch.full((b, c), -math.inf, dtype=x.dtype)
    for j in range(h):
        for k in range(w):
            out = torch.maximum(out, x[:, :, j, k])
    return out


def linear(z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """(B, Cin) -> (B, Cout) with a (Cout, Cin[, 1, 1]) weight, by an explicit sum over the input index."""
    weight = weight.reshape(weight.shape[0], -1)
    out = torch.zeros(z.shape[0], weight.shape[0], dtype=z.dtype)
    for i in range(weight.shape[1]):
        out += z[:, i : i + 1] * weight[:, i]
    return out if bias is None else out + bias


def batch_norm_eval(v: torch.Tensor, bn: torch.nn.BatchNorm2d) -> torch.Tensor:
    """Eval-mode BatchNorm of (B, C, ...) with the module's running statistics and affine parameters."""
    shape = (1, -1) + (1,) * (v.dim() - 2)
    mean, var = bn.running_mean.view(shape), bn.running_var.view(shape)
    return (v - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(shape) + bn.bias.view(shape)


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride: int = 1,
           padding: int = 0, dilation: int = 1, groups: int = 1) -> torch.Tensor:
    """Zero-padded grouped 2-D convolution by loops over output positions and kernel taps."""
    b, cin, h, w = x.shape
    cout, cin_g, kh, kw = weight.shape
    oh = (h + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    ow = (w + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
    out = torch.zeros(b, cout, oh, ow, dtype=x.dtype)
    cout_g = cout // groups
    for o in range(cout):
        g = o // cout_g
        xs = x[:, g * cin_g : (g + 1) * cin_g]
        for i in range(oh):
            for j in range(ow):
                acc = torch.zeros(b, dtype=x.dtype)
                for p in range(kh):
                    for q in range(kw):
                        r, s = i * stride - padding + p * dilation, j * stride - padding + q * dilation
                        if 0 <= r < h and 0 <= s < w:
                            acc += (xs[:, :, r, s] * weight[o, :, p, q]).sum(dim=1)
                out[:, o, i, j] = acc + (0 if bias is None else bias[o])
    return out


def nearest_upsample(a: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize: output (i, j) takes input (floor(i * h_in / h_out), floor(j * w_in / w_out))."""
    b, c, h, w = a.shape
    out = torch.zeros(b, c, *size, dtype=a.dtype)
    for i in range(size[0]):
        for j in range(size[1]):
            out[:, :, i, j] = a[:, :, math.floor(i * h / size[0]), math.floor(j * w / size[1])]
    return out


def randomize_batch_norms(module: torch.nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial running statistics and affine parameters, so eval-mode tests see them."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.3)


def eval_with_trained_batch_norms(layer: torch.nn.Module, channels: int, seed: int = 3) -> torch.nn.Module:
    """Random BatchNorm affine parameters, running statistics from one training-mode batch, then eval mode."""
    torch.manual_seed(seed)
    for m in layer.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.normal_(m.bias)
    with torch.no_grad():
        layer.train()(torch.randn(4, channels, 6, 6) * 2 + 0.5)
    return layer.eval()


def assert_in_place_relus_change_nothing(layer: torch.nn.Module, x: torch.Tensor) -> None:
    """``layer`` (train mode) gives the same output and gradients, bit for bit, as a copy whose ReLUs are not in
    place: running them in place saves memory and changes no value."""
    import copy

    plain = copy.deepcopy(layer)
    for module in plain.modules():
        if isinstance(module, torch.nn.ReLU):
            module.inplace = False
    outs = [m(x) for m in (layer, plain)]
    assert torch.equal(outs[0], outs[1])
    for out in outs:
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    for (name, p), q in zip(layer.named_parameters(), plain.parameters()):
        assert torch.equal(p.grad, q.grad), name
