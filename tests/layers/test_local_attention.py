"""SASA local attention: the reference against a dense float64 oracle, the fused kernel against the reference
(forward and gradients, every border mode), the layer's stride, borders and FLOP count."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch

import visionattn.kernels.flex_local_attention as flex
import visionattn.layers.local_attention as la
from visionattn.complexity import count_macs
from visionattn.errors import UsageError
from visionattn.kernels.local_attention import _fwd, kernel_available, kernel_scratch_peak_bytes
from visionattn.layers.local_attention import LocalSelfAttention2d, local_attention
from visionattn.layers.local_attention_ref import (
    BORDERS,
    local_attention_reference,
    local_attention_unfold,
    rel_table_size,
    relative_table,
)

needs_kernel = pytest.mark.skipif(not kernel_available(), reason="the C++ kernel cannot be built here")


def _inputs(b, heads, d, h, w, k, border, dtype=torch.float64, seed=0):
    """qkv and the row and column relative embeddings (heads, T, d)."""
    g = torch.Generator().manual_seed(seed)
    t = rel_table_size(k, border)
    qkv = torch.randn(b, 3 * heads * d, h, w, generator=g, dtype=dtype)
    rows, cols = (torch.randn(heads, t, d, generator=g, dtype=dtype) for _ in range(2))
    return qkv, rows, cols


def _table_inputs(b, heads, d, h, w, k, border, dtype=torch.float64, seed=0):
    """qkv and a (heads, T, T, d) relative table with an independent entry per offset pair (the reference and
    the flex formulation take any table)."""
    g = torch.Generator().manual_seed(seed)
    t = rel_table_size(k, border)
    return (torch.randn(b, 3 * heads * d, h, w, generator=g, dtype=dtype),
            torch.randn(heads, t, t, d, generator=g, dtype=dtype))


def _window(i: int, n: int, k: int, border: str) -> list[tuple[int, int]]:
    """(key position, relative index) along one axis, written out from the definitions."""
    c = k // 2
    if border == "clamp":
        start = min(max(i - c, 0), max(n - k, 0))
        return [(a, a - i + k - 1) for a in range(start, min(start + k, n))]
    keys = [(i + o, o + c) for o in range(-c, c + 1)]
    return keys if border == "zero" else [(a, r) for a, r in keys if 0 <= a < n]


def dense_oracle(qkv, rel, heads, k, border, scale):
    """float64 dense attention over every pixel (and the zero padding), masked to each query's window."""
    qkv, rel = qkv.double(), rel.double()
    b, c3, h, w = qkv.shape
    d, p = c3 // 3 // heads, k // 2
    q, key, val = (t.reshape(b, heads, d, h, w) for t in qkv.chunk(3, dim=1))
    # keys and values of the zero-padded image, flattened; the query sees the padded positions of its window
    kp = torch.nn.functional.pad(key, (p, p, p, p)).flatten(3)
    vp = torch.nn.functional.pad(val, (p, p, p, p)).flatten(3)
    wp = w + 2 * p
    out = torch.zeros(b, heads, d, h, w, dtype=torch.float64)
    for y in range(h):
        for x in range(w):
            logits = torch.full((b, heads, kp.shape[-1]), float("-inf"), dtype=torch.float64)
            for a, ry in _window(y, h, k, border):
                for c, rx in _window(x, w, k, border):
                    j = (a + p) * wp + c + p
                    logits[:, :, j] = scale * (q[:, :, :, y, x] * (kp[:, :, :, j] + rel[None, :, ry, rx])).sum(-1)
            attn = logits.softmax(-1)
            out[:, :, :, y, x] = torch.einsum("bhj,bhdj->bhd", attn, vp)
    return out.reshape(b, heads * d, h, w)


@pytest.mark.parametrize("border", BORDERS)
@pytest.mark.parametrize("size,k", [((5, 4), 3), ((4, 6), 5), ((3, 5), 7)])
def test_reference_matches_dense_oracle(border, size, k):
    qkv, rel = _table_inputs(2, 2, 3, *size, k, border)
    q, kk, v = qkv.chunk(3, dim=1)
    ref = local_attention_reference(q, kk, v, rel, k, border, scale=0.5)
    torch.testing.assert_close(ref, dense_oracle(qkv, rel, 2, k, border, 0.5), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("size,k", [((5, 4), 3), ((6, 7), 5)])
def test_unfold_formulation_is_the_zero_border(size, k):
    """The benchmark's baseline (the open implementations' unfold) computes the "zero" border of the reference."""
    qkv, rel = _table_inputs(2, 2, 3, *size, k, "zero")
    q, kk, v = qkv.chunk(3, dim=1)
    torch.testing.assert_close(local_attention_unfold(q, kk, v, rel, k, 0.5),
                               local_attention_reference(q, kk, v, rel, k, "zero", 0.5), rtol=1e-10, atol=1e-10)


def _grads(fn, *inputs, seed=3):
    """fn's output and the gradients of a random projection of it with respect to every input."""
    inputs = [t.clone().requires_grad_(True) for t in inputs]
    out = fn(*inputs)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(out)
    return (out, *torch.autograd.grad((out * weight).sum(), inputs))


_NAMES = ("output", "grad qkv", "grad rel_rows", "grad rel_cols")


@needs_kernel
@pytest.mark.parametrize("path", ["rows", "lanes"])
@pytest.mark.parametrize("border", BORDERS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("heads,d,size,k", [(2, 3, (5, 4), 7), (2, 4, (9, 11), 3), (1, 5, (13, 10), 5),
                                            (2, 8, (7, 17), 7), (1, 2, (11, 12), 9), (1, 3, (6, 14), 11)])
def test_kernel_matches_reference(path, border, dtype, heads, d, size, k, monkeypatch):
    """Both float paths of the kernel (lanes over pixels of a row, or over 8 planes), forced; float64, "clamp"
    and k = 11 take the generic path whatever is asked."""
    monkeypatch.setenv("VISIONATTN_KERNEL_PATH", path)
    inputs = _inputs(2, heads, d, *size, k, border, dtype=dtype)
    got = _grads(lambda a, r, c: local_attention(a, r, c, heads, k, border, 0.6, impl="kernel"), *inputs)
    want = _grads(lambda a, r, c: local_attention(a.double(), r.double(), c.double(), heads, k, border, 0.6,
                                                  impl="reference"), *inputs)
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    for name, a, b in zip(_NAMES, got, want):
        assert a.dtype == dtype, name
        torch.testing.assert_close(a.double(), b.double(), rtol=tol, atol=tol, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("border", BORDERS)
@pytest.mark.parametrize("heads,d,size,k", [(2, 3, (5, 4), 7), (1, 4, (6, 9), 3), (2, 2, (7, 5), 5)])
def test_flex_formulation_matches_reference(border, heads, d, size, k):
    """The windows, offsets and relative logits the CUDA path hands to FlexAttention, evaluated densely with
    autograd: equal to the reference in output and in both gradients."""
    qkv, rel = _table_inputs(2, heads, d, *size, k, border)
    got = _grads(lambda a, r: flex.dense_local_attention(a, r, heads, k, border, 0.6), qkv, rel)
    want = _grads(lambda a, r: local_attention_reference(*a.chunk(3, dim=1), r, k, border, 0.6), qkv, rel)
    for name, a, b in zip(("output", "grad qkv", "grad rel"), got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=lambda m, n=name: f"{n}: {m}")


def test_flex_window_offsets_written_out():
    win = flex.Window(4, 5, 3, "zero")  # keys on the 6 x 7 padded grid
    inside, rel = win.locate(torch.tensor(0), torch.tensor(0))  # query (0, 0), key (-1, -1): top-left slot
    assert inside and rel == 0
    inside, rel = win.locate(torch.tensor(0), torch.tensor(2 * 7 + 2))  # key (1, 1): bottom-right slot
    assert inside and rel == 8
    assert not win.locate(torch.tensor(0), torch.tensor(3))[0]  # key (-1, 2): two columns away
    clamp = flex.Window(4, 5, 3, "clamp")  # query (0, 0) sees rows and columns 0-2, offsets 0..2 of +-2
    assert clamp.locate(torch.tensor(0), torch.tensor(2 * 5 + 2))[0]
    assert clamp.locate(torch.tensor(0), torch.tensor(2 * 5 + 2))[1] == (2 + 2) * 5 + (2 + 2)
    assert not clamp.locate(torch.tensor(0), torch.tensor(3))[0]


@pytest.mark.parametrize("border", BORDERS)
def test_flex_compiled_forward_matches_reference_on_cpu(border):
    """torch 2.13 compiles FlexAttention's forward on the CPU (no backward there): our block mask, mask_mod and
    score_mod through the real flex_attention, checked here for the forward. Users cannot take this route
    (impl="flex" is refused on the CPU); the check calls the path's own function."""
    inputs = _inputs(2, 2, 4, 6, 5, 3, border, dtype=torch.float32)
    qkv, rows, cols = inputs
    with torch.no_grad():
        got = flex.flex_local_attention(qkv, relative_table(rows, cols), 2, 3, border, 0.6)
        want = local_attention(*inputs, 2, 3, border, 0.6, impl="reference")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.bad_input
def test_flex_is_refused_on_the_cpu():
    inputs = _inputs(1, 2, 2, 5, 5, 3, "mask", dtype=torch.float32)
    with pytest.raises(UsageError, match=r"impl: 'flex' runs on CUDA \(with Triton\) only, got cpu.*impl='kernel'"):
        local_attention(*inputs, 2, 3, "mask", 0.6, impl="flex")


def test_auto_takes_flex_where_it_has_a_backward(monkeypatch):
    seen = []
    monkeypatch.setattr(la, "kernel_available", lambda: False)
    monkeypatch.setattr(la, "flex_available", lambda device: True)
    monkeypatch.setattr(la, "flex_local_attention", lambda *args: seen.append(args) or args[0][:, :4])
    monkeypatch.setattr(la, "_warned_device", set())
    qkv, rows, cols = _inputs(1, 2, 2, 5, 5, 3, "mask", dtype=torch.float32)
    local_attention(qkv, rows, cols, 2, 3)
    assert len(seen) == 1
    with pytest.warns(RuntimeWarning, match="reference"):  # no float64 flex: the reference
        local_attention(qkv.double(), rows.double(), cols.double(), 2, 3)
    assert len(seen) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("border", BORDERS)
def test_flex_on_cuda_matches_reference_with_gradients(border):
    heads, d, k = 2, 16, 7
    inputs = [t.cuda() for t in _inputs(2, heads, d, 20, 19, k, border, dtype=torch.float32)]
    got = _grads(lambda *a: local_attention(*a, heads, k, border, 0.3, impl="flex"), *inputs)
    want = _grads(lambda *a: local_attention(*a, heads, k, border, 0.3, impl="reference"), *inputs)
    for name, a, b in zip(_NAMES, got, want):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3, msg=lambda m, n=name: f"{n}: {m}")


@needs_kernel
@pytest.mark.parametrize("batch,heads,d", [(3, 3, 8), (5, 4, 3)])  # 9 and 20 planes: full and partial groups of 8
def test_kernel_lanes_path_over_several_groups(batch, heads, d, monkeypatch):
    monkeypatch.setenv("VISIONATTN_KERNEL_PATH", "lanes")
    inputs = _inputs(batch, heads, d, 9, 10, 5, "mask", dtype=torch.float32)
    got = _grads(lambda a, r, c: local_attention(a, r, c, heads, 5, "mask", 0.6, impl="kernel"), *inputs)
    want = _grads(lambda a, r, c: local_attention(a.double(), r.double(), c.double(), heads, 5, "mask", 0.6,
                                                  impl="reference"), *inputs)
    for name, a, b in zip(_NAMES, got, want):
        torch.testing.assert_close(a.double(), b.double(), rtol=2e-5, atol=2e-5, msg=lambda m, n=name: f"{n}: {m}")


@needs_kernel
def test_kernel_counts_its_scratch(monkeypatch):
    """The row path's forward holds at least its padded key and value planes: d x (H + k - 1) x 16 floats each
    for W = 6, k = 3 (rows rounded up to 8 lanes plus the window, then to 8 again)."""
    monkeypatch.setenv("VISIONATTN_KERNEL_PATH", "rows")
    qkv, rows, cols = _inputs(1, 1, 4, 5, 6, 3, "mask", dtype=torch.float32)
    kernel_scratch_peak_bytes(reset=True)
    assert kernel_scratch_peak_bytes(reset=True) == 0  # nothing held between calls
    local_attention(qkv, rows, cols, 1, 3, impl="kernel")
    assert kernel_scratch_peak_bytes(reset=True) >= 2 * 4 * 7 * 16 * 4
    assert kernel_scratch_peak_bytes() == 0


@needs_kernel
def test_kernel_op_passes_opcheck():
    inputs = [t.requires_grad_(True) for t in _inputs(2, 2, 3, 6, 5, 3, "mask")]
    torch.library.opcheck(_fwd, (*inputs, 2, 3, 0, 0.5))


@pytest.mark.parametrize("impl", ["kernel", "reference"])
def test_layer_stride_is_attention_then_average_pool(impl):
    if impl == "kernel" and not kernel_available():
        pytest.skip("no kernel")
    torch.manual_seed(0)
    strided = LocalSelfAttention2d(8, 16, kernel_size=3, heads=4, stride=2, impl=impl)
    full = LocalSelfAttention2d(8, 16, kernel_size=3, heads=4, stride=1, impl=impl)
    full.load_state_dict(strided.state_dict())
    x = torch.randn(2, 8, 7, 6)
    out = strided(x)
    assert out.shape == (2, 16, 4, 3)
    y = full(x)
    torch.testing.assert_close(out[:, :, 1, 1], y[:, :, 2:4, 2:4].mean((2, 3)))
    torch.testing.assert_close(out[:, :, 3, 2], y[:, :, 6, 4:6].mean(2))  # the odd last row: one row pooled


@needs_kernel
@pytest.mark.parametrize("border", BORDERS)
@pytest.mark.parametrize("channels,heads", [(16, 4), (12, 3)])  # (12, 3): head 1 holds row and column channels
def test_layer_kernel_and_reference_agree_with_parameter_gradients(border, channels, heads):
    torch.manual_seed(0)
    fast = LocalSelfAttention2d(16, channels, kernel_size=7, heads=heads, border=border, impl="kernel")
    slow = LocalSelfAttention2d(16, channels, kernel_size=7, heads=heads, border=border, impl="reference")
    slow.load_state_dict(fast.state_dict())
    x = torch.randn(2, 16, 9, 8)
    outs = [m(x) for m in (fast, slow)]
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    for out in outs:
        out.square().sum().backward()
    for (name, a), b in zip(fast.named_parameters(), slow.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


def _uniform(border: str, size=(5, 5), k=3):
    """q = 0: every logit is 0, so each output is the plain mean of the values the border mode lets in."""
    qkv, rel = _table_inputs(1, 1, 1, *size, k, border)
    qkv[:, 0] = 0
    q, kk, v = qkv.chunk(3, dim=1)
    return local_attention_reference(q, kk, v, rel, k, border), v[0, 0]


def test_border_modes_differ_only_at_the_border():
    (mask, v), (zero, _), (clamp, _) = (_uniform(b) for b in BORDERS)
    inner = (slice(None), slice(None), slice(1, 4), slice(1, 4))
    torch.testing.assert_close(mask[inner], zero[inner])
    torch.testing.assert_close(mask[inner], clamp[inner])
    # the corner (0, 0): mask averages its 4 in-image neighbours; zero pads 5 zeros into a mean over 9;
    # clamp shifts the window to rows and columns 0-2, 9 real neighbours
    torch.testing.assert_close(mask[0, 0, 0, 0], v[:2, :2].mean())
    torch.testing.assert_close(zero[0, 0, 0, 0], v[:2, :2].sum() / 9)
    torch.testing.assert_close(clamp[0, 0, 0, 0], v[:3, :3].mean())
    assert not torch.allclose(mask[0, 0, 0], zero[0, 0, 0])


def test_clamp_relative_table_covers_shifted_offsets():
    layer = LocalSelfAttention2d(8, kernel_size=7, heads=2, border="clamp")
    assert layer.rel.rows.shape == (13, 4) and layer.rel.table().shape == (2, 13, 13, 4)
    assert [t.shape for t in layer.rel()] == [(2, 13, 4)] * 2
    assert LocalSelfAttention2d(8, kernel_size=7, heads=2).rel.table().shape == (2, 7, 7, 4)


def test_relative_embedding_is_row_then_column_halves():
    layer = LocalSelfAttention2d(8, kernel_size=3, heads=2)
    table = layer.rel.table()  # head 0 holds the row embedding, head 1 the column embedding (d_out / 2 each)
    torch.testing.assert_close(table[0, 2, 0], layer.rel.rows[2])
    torch.testing.assert_close(table[1, 0, 1], layer.rel.cols[1])
    rows, cols = layer.rel()  # the kernels' form: each table zero outside its half
    torch.testing.assert_close(rows[0], layer.rel.rows)
    torch.testing.assert_close(cols[1], layer.rel.cols)
    assert not rows[1].any() and not cols[0].any()


@pytest.mark.bad_input
@pytest.mark.parametrize("kwargs,match", [
    ({"kernel_size": 4}, "kernel_size must be odd"), ({"kernel_size": 0}, "kernel_size must be an integer >= 1"),
    ({"kernel_size": 3.0}, "kernel_size must be an integer"), ({"heads": 3}, "divisible by heads.*heads=3"),
    ({"heads": 0}, "heads must be an integer >= 1"), ({"border": "clmap"}, "border: .*did you mean 'clamp'"),
    ({"groups": 2}, "groups must be 1"), ({"impl": "refrence"}, "impl: .*did you mean 'reference'"),
    ({"out_channels": 7, "heads": 7}, "out_channels must be even"), ({"stride": 0}, "stride must be an integer"),
    ({"qk_scale": float("nan")}, "qk_scale: got nan, needed a finite number"),
    ({"qk_scale": 0.0}, "qk_scale: got 0.0, needed a positive number"),
    ({"qk_scale": "0.5"}, "qk_scale: got '0.5', needed a finite number")])
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(UsageError, match=match):
        LocalSelfAttention2d(8, **{"heads": 2, **kwargs})


@pytest.mark.bad_input
@pytest.mark.parametrize("shape,dtype,match", [
    ((1, 8, 0, 5), torch.float32, "at least 1x1 pixels"), ((2, 8, 4, 0), torch.float32, "at least 1x1 pixels"),
    ((1, 8, 5, 5), torch.int64, "floating-point input, got torch.int64"), ((8, 5, 5), torch.float32, "4-D input"),
    ((1, 6, 5, 5), torch.float32, "8 input channels")])
def test_bad_inputs_raise(shape, dtype, match):
    layer = LocalSelfAttention2d(8, kernel_size=3, heads=2, impl="reference")
    with pytest.raises(UsageError, match=match):
        layer(torch.zeros(shape, dtype=dtype))


@pytest.mark.bad_input
@pytest.mark.parametrize("kwargs,match", [({"impl": "kernal"}, "impl: .*did you mean 'kernel'"),
                                          ({"border": "zeros"}, "border: .*did you mean 'zero'")])
def test_bad_function_arguments_raise(kwargs, match):
    """The functional form checks its names before choosing a path (the kernel's border table gave a KeyError)."""
    qkv, rows, cols = _inputs(1, 2, 2, 4, 4, 3, "mask", dtype=torch.float32)
    with pytest.raises(UsageError, match=match):
        local_attention(qkv, rows, cols, 2, 3, **kwargs)


@pytest.mark.parametrize("impl", ["kernel", "reference"])
def test_empty_batch_gives_an_empty_output(impl):
    if impl == "kernel" and not kernel_available():
        pytest.skip("no kernel")
    layer = LocalSelfAttention2d(8, kernel_size=3, heads=2, stride=2, impl=impl)
    assert layer(torch.zeros(0, 8, 5, 5)).shape == (0, 8, 3, 3)


def test_fallback_warns_and_matches_reference(monkeypatch):
    monkeypatch.setattr(la, "kernel_available", lambda: False)
    monkeypatch.setattr(la, "_warned_device", set())
    qkv, rows, cols = _inputs(1, 2, 2, 5, 5, 3, "mask", dtype=torch.float32)
    with pytest.warns(RuntimeWarning, match="reference"):
        out = local_attention(qkv, rows, cols, 2, 3)
    q, k, v = qkv.chunk(3, dim=1)
    torch.testing.assert_close(out, local_attention_reference(q, k, v, relative_table(rows, cols), 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        local_attention(qkv, rows, cols, 2, 3)  # warned once per device type


@pytest.mark.parametrize("impl", ["kernel", "reference"])
def test_flop_count_is_projection_plus_attention(impl):
    if impl == "kernel" and not kernel_available():
        pytest.skip("no kernel")
    c, h, w, k = 16, 6, 5, 3
    layer = LocalSelfAttention2d(c, kernel_size=k, heads=4, impl=impl)
    projection = 3 * c * c * h * w
    attention = 2 * c * h * w * k * k  # q . (k + r) and the weighted sum of values, per output element
    assert count_macs(layer, torch.randn(1, c, h, w)) == projection + attention


def test_importing_the_layers_does_not_import_dynamo():
    """torch._dynamo (about 2 s) is imported only by a compiled call: window_index makes its compiler-disabled
    wrapper on first need, and FlexAttention and the C++ build machinery load on first use."""
    code = ("import sys, visionattn.layers, visionattn.models\n"
            "heavy = [m for m in ('torch._dynamo', 'torch._inductor', 'torch.utils.cpp_extension',"
            " 'torch.nn.attention.flex_attention') if m in sys.modules]\n"
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_window_index_stays_outside_a_compiled_graph():
    """Under torch.compile the index bookkeeping runs eagerly (a graph break), and the result is the eager one."""
    import torch._dynamo.testing

    counter = torch._dynamo.testing.CompileCounter()
    qkv, rel = _table_inputs(1, 1, 2, 4, 5, 3, "mask", dtype=torch.float32)

    def fn(qkv, rel):
        return local_attention_reference(*qkv.chunk(3, dim=1), rel, 3, "mask")

    torch.testing.assert_close(torch.compile(fn, backend=counter, dynamic=False)(qkv, rel), fn(qkv, rel))
    assert counter.frame_count >= 2  # the graph before the break and the one after it
