"""The recorder on token attention: SASA's window weights (kind ``"local_attention"``) on the C++ kernel path and
the reference, checked against a loop over every pixel and window slot written from eq. 2-3; applied to the
values they give the layer's output, which the recorder leaves unchanged; with no recorder attached nothing is
recomputed. The attention stem's weights, applied to its spatially aware values (eq. 5-6). Swin's recorded window
weights, reassembled, give one shifted window's output."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

import visionattn.layers.local_attention as la
from visionattn.kernels.flex_local_attention import flex_available
from visionattn.kernels.local_attention import kernel_available
from visionattn.layers.attention_core import AttentionRecorder
from visionattn.layers.attention_stem import AttentionStem2d
from visionattn.layers.local_attention import LocalSelfAttention2d
from visionattn.layers.recording import Recorder
from visionattn.layers.window_attention import WindowAttention

IMPLS = [pytest.param("kernel", marks=pytest.mark.skipif(not kernel_available(), reason="no C++ kernel here")),
         "reference"]
SIZE = (5, 6)


def _sasa(impl: str, border: str = "mask", stride: int = 1, kernel_size: int = 3) -> LocalSelfAttention2d:
    torch.manual_seed(0)
    return LocalSelfAttention2d(8, heads=2, kernel_size=kernel_size, stride=stride, border=border, impl=impl).double()


def _x(channels: int = 8, size: tuple[int, int] = SIZE, seed: int = 1) -> torch.Tensor:
    return torch.randn(2, channels, *size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _slots(i: int, n: int, k: int, border: str) -> list[tuple[int, int, bool]]:
    """Along one axis, for window slot u = 0 .. k-1 of query i: (key position, relative-table index, inside the
    image), from the definitions (the window centred on i, or shifted inwards for "clamp")."""
    c = k // 2
    if border == "clamp":
        start = min(max(i - c, 0), max(n - k, 0))
        return [(start + u, start + u - i + k - 1, start + u < n) for u in range(k)]
    return [(i - c + u, u, 0 <= i - c + u < n) for u in range(k)]


def _qkv(layer: LocalSelfAttention2d, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """q, k, v as (B, heads, d, H, W) and r(u, v) = [row_u, col_v] split into heads, (heads, T, T, d) (eq. 3)."""
    w = layer.qkv.weight.flatten(1)
    qkv = torch.einsum("oc,bchw->bohw", w, x)
    q, k, v = (t.unflatten(1, (layer.heads, -1)) for t in qkv.chunk(3, dim=1))
    t = layer.rel.rows.shape[0]
    r = torch.cat([layer.rel.rows[:, None, :].expand(t, t, -1), layer.rel.cols[None, :, :].expand(t, t, -1)], -1)
    return q, k, v, rearrange(r, "u v (h d) -> h u v d", h=layer.heads)


def _loop_weights(layer: LocalSelfAttention2d, x: torch.Tensor) -> torch.Tensor:
    """softmax over the k x k window of scale * q . (k + r), pixel by pixel, slot by slot (eq. 2-3); a slot
    outside the image leaves the softmax ("mask") or takes part with k = 0 ("zero")."""
    q, k, _, r = _qkv(layer, x)
    b, heads, _, height, width = q.shape
    ks = layer.kernel_size
    out = torch.zeros(b, heads, height, width, ks * ks, dtype=x.dtype)
    for y in range(height):
        for z in range(width):
            logits = torch.full((b, heads, ks * ks), -math.inf, dtype=x.dtype)
            for u, (a, ru, in_a) in enumerate(_slots(y, height, ks, layer.border)):
                for v, (c, rv, in_c) in enumerate(_slots(z, width, ks, layer.border)):
                    inside = in_a and in_c
                    if inside or layer.border == "zero":
                        key = k[:, :, :, a, c] if inside else torch.zeros_like(q[:, :, :, y, z])
                        logits[:, :, u * ks + v] = layer.scale * (q[:, :, :, y, z] * (key + r[:, ru, rv])).sum(-1)
            out[:, :, y, z] = logits.softmax(-1)
    return out


def _loop_apply(layer: LocalSelfAttention2d, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """y_ij = sum over the window of weight * v (eq. 2), v = 0 outside the image, then the stride's pooling."""
    _, _, v, _ = _qkv(layer, x)
    b, heads, d, height, width = v.shape
    ks = layer.kernel_size
    out = torch.zeros(b, heads, d, height, width, dtype=x.dtype)
    for y in range(height):
        for z in range(width):
            for u, (a, _, in_a) in enumerate(_slots(y, height, ks, layer.border)):
                for w, (c, _, in_c) in enumerate(_slots(z, width, ks, layer.border)):
                    if in_a and in_c:
                        out[:, :, :, y, z] += weights[:, :, y, z, u * ks + w, None] * v[:, :, :, a, c]
    out = out.flatten(1, 2)
    return F.avg_pool2d(out, layer.stride, ceil_mode=True) if layer.stride > 1 else out


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("border,stride", [("mask", 1), ("zero", 1), ("clamp", 1), ("mask", 2)])
def test_sasa_records_the_window_softmax_that_gives_its_output(impl, border, stride):
    layer, x = _sasa(impl, border, stride), _x()
    with torch.no_grad():
        plain = layer(x)
        with Recorder(layer) as rec:
            out = layer(x)
    assert torch.equal(out, plain)  # the path's own output, recorder or not
    assert rec.kinds == {"": "local_attention"}
    (weights,) = rec.records[""]
    assert weights.shape == (2, 2, *SIZE, 9) and not weights.requires_grad
    torch.testing.assert_close(weights, _loop_weights(layer, x), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(_loop_apply(layer, x, weights), out, rtol=1e-10, atol=1e-10)


@pytest.mark.skipif(not torch.cuda.is_available() or not flex_available(torch.device("cuda")),
                    reason="needs a CUDA GPU with Triton (the FlexAttention path)")
def test_sasa_records_the_same_weights_on_the_flex_path():
    """On CUDA (FlexAttention), the recorded weights are the reference's on the CPU and, applied to the values,
    give the flex path's output (float32)."""
    layer, x = _sasa("reference").float(), _x().float()
    with torch.no_grad(), Recorder(layer) as rec:
        layer(x)
        flex_layer = _sasa("flex").float().cuda()
        with Recorder(flex_layer) as flex_rec:
            out = flex_layer(x.cuda()).cpu()
    (weights,) = flex_rec.records[""]
    torch.testing.assert_close(weights, rec.records[""][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(_loop_apply(layer, x, weights), out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_sasa_recording_is_off_until_attached(impl, monkeypatch):
    """No recomputation (neither the method nor the reference's weights function) with no recorder attached,
    one per call with one; the same gradients either way."""
    layer, x = _sasa(impl), _x().requires_grad_()
    calls: list[str] = []
    method, function = LocalSelfAttention2d.window_weights, la.local_attention_weights

    def counted_method(*args):
        calls.append("window_weights")
        return method(*args)

    def counted_function(*args):
        calls.append("local_attention_weights")
        return function(*args)

    monkeypatch.setattr(LocalSelfAttention2d, "window_weights", counted_method)
    monkeypatch.setattr(la, "local_attention_weights", counted_function)
    rec = Recorder(layer)  # built, not attached
    layer(x).square().sum().backward()
    plain = [x.grad.clone(), *(p.grad.clone() for p in layer.parameters())]
    assert calls == [] and rec.records == {} and layer.recorder is None
    layer.zero_grad()
    x.grad = None
    with rec:
        layer(x).square().sum().backward()
    assert calls == ["window_weights", "local_attention_weights"]
    assert len(rec.records[""]) == 1
    for a, b in zip(plain, [x.grad, *(p.grad for p in layer.parameters())]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("border", ["mask", "zero"])
def test_the_stem_records_the_weights_it_applies_to_its_spatially_aware_values(border):
    """y_ij = sum_ab A_ab (sum_m p(a, b, m) W_V^m) x_ab (eq. 5-6) with the recorded A, slot (a, b) at offset
    (a - k // 2, b - k // 2); each pixel's weights sum to 1, zero outside the image with "mask"."""
    torch.manual_seed(0)
    layer = AttentionStem2d(3, 8, kernel_size=4, heads=2, mixtures=3, border=border).double()
    x, ks = _x(3), 4
    with torch.no_grad():
        plain = layer(x)
        with Recorder(layer) as rec:
            out = layer(x)
    assert torch.equal(out, plain)
    (weights,) = rec.records[""]  # (B, heads, H, W, k^2)
    assert weights.shape == (2, 2, *SIZE, ks * ks)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, *SIZE, dtype=x.dtype))
    p = layer.mixture()  # (k, k, m)
    w_v = layer.values.weight.flatten(1).unflatten(0, (3, 8))  # (m, d_out, C_in)
    want = torch.zeros(2, 8, *SIZE, dtype=x.dtype)
    head = torch.arange(8) // 4  # the head of each output channel
    for y in range(SIZE[0]):
        for z in range(SIZE[1]):
            for a in range(ks):
                for b in range(ks):
                    yy, zz, w = y + a - ks // 2, z + b - ks // 2, weights[:, :, y, z, a * ks + b]
                    if not (0 <= yy < SIZE[0] and 0 <= zz < SIZE[1]):
                        if border == "mask":
                            assert torch.all(w == 0)
                        continue
                    value = torch.einsum("m,moc,bc->bo", p[a, b], w_v, x[:, :, yy, zz])
                    want[:, :, y, z] += w[:, head] * value
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)


def test_swin_recorded_window_weights_reassemble_one_shifted_windows_output():
    """The (B, windows * heads, N, N) weights of SW-MSA (window-major, as recorded): window w's weights times
    the values of its tokens in the rolled map, through ``proj``, are the layer's output at those tokens' places
    (rolled back). The window chosen holds tokens from the map's opposite sides (the shift mask's regions)."""
    torch.manual_seed(0)
    m, s, heads, dim = 4, 2, 2, 8
    layer = WindowAttention(dim, heads, m, s).double().eval()
    x = torch.randn(2, 8, 8, dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with AttentionRecorder(layer) as rec:
        out = layer(x)
    (weights,) = rec.weights["attend"]
    assert weights.shape == (2, 4 * heads, m * m, m * m)
    window = 3  # the bottom-right window: rows and columns wrapped around by the roll
    rows = [(window // 2 * m + i + s) % 8 for i in range(m)]  # its rows in the original map
    cols = [(window % 2 * m + j + s) % 8 for j in range(m)]
    tokens = x[:, rows][:, :, cols].reshape(2, m * m, dim)  # raster order inside the window
    v = (tokens @ layer.qkv.weight.T + layer.qkv.bias)[..., 2 * dim:].unflatten(-1, (heads, -1))  # (B, N, h, d)
    mixed = torch.stack([weights[:, window * heads + h] @ v[:, :, h] for h in range(heads)], 2).flatten(2)
    want = mixed @ layer.proj.weight.T + layer.proj.bias
    torch.testing.assert_close(out[:, rows][:, :, cols].reshape(2, m * m, dim), want, rtol=1e-10, atol=1e-10)
    assert (weights[:, window * heads] == 0).any()  # the shift mask keeps the wrapped pieces apart
