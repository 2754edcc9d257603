"""2D relative positions: the global logits against loops over every query and key pixel, the relative-to-absolute
trick, the resampling of the tables for another map size, and SASA's embedding living here unchanged."""

from __future__ import annotations

import pytest
import torch

import visionattn.layers.local_attention as la
import visionattn.layers.local_attention_ref as ref
from visionattn.errors import UsageError
from visionattn.layers.relative_position import (
    RelativeEmbedding2d,
    RelativePositionLogits2d,
    relative_logits_1d,
    relative_position_bias,
    relative_position_index,
    relative_table,
    resample_bias_table,
    resample_offsets,
)


def _loop_logits(q: torch.Tensor, rel_h: torch.Tensor, rel_w: torch.Tensor, size: tuple[int, int],
                 scale: float = 1.0) -> torch.Tensor:
    """bias[b, n, i, j] = scale * (q_i . r^h[h_j - h_i] + q_i . r^w[w_j - w_i]), pixel by pixel."""
    height, width = size
    b, heads, hw, _ = q.shape
    out = torch.empty(b, heads, hw, hw, dtype=q.dtype)
    for i in range(hw):
        hi, wi = divmod(i, width)
        for j in range(hw):
            hj, wj = divmod(j, width)
            r = rel_h[hj - hi + height - 1] + rel_w[wj - wi + width - 1]
            out[:, :, i, j] = scale * (q[:, :, i] * r).sum(-1)
    return out


def _q(b: int, heads: int, size: tuple[int, int], d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, heads, size[0] * size[1], d, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("n", [1, 2, 5])
def test_relative_to_absolute_trick_matches_a_loop(n):
    g = torch.Generator().manual_seed(n)
    q, table = torch.randn(2, 3, n, 4, generator=g), torch.randn(2 * n - 1, 4, generator=g)
    got = relative_logits_1d(q, table)
    want = torch.stack([torch.stack([q[..., i, :] @ table[j - i + n - 1] for j in range(n)], -1)
                        for i in range(n)], -2)
    assert got.shape == (2, 3, n, n)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize(("n_q", "n_k"), [(1, 3), (2, 6), (4, 8), (3, 3)])
def test_relative_logits_of_a_query_block_inside_a_key_window(n_q, n_k):
    g = torch.Generator().manual_seed(n_q * 10 + n_k)
    q, table = torch.randn(2, n_q, 4, generator=g), torch.randn(2 * n_k - 1, 4, generator=g)
    want = torch.stack([torch.stack([q[..., i, :] @ table[j - i + n_k - 1] for j in range(n_k)], -1)
                        for i in range(n_q)], -2)
    torch.testing.assert_close(relative_logits_1d(q, table), want)


def test_relative_logits_need_a_table_of_the_key_window():
    with pytest.raises(UsageError, match="2 n_k - 1 rows"):
        relative_logits_1d(torch.randn(1, 4, 2), torch.randn(4, 2))  # even
    with pytest.raises(UsageError, match="n_k >= n_q = 4"):
        relative_logits_1d(torch.randn(1, 4, 2), torch.randn(5, 2))  # 3 keys for 4 queries


def test_block_logits_against_a_loop_over_query_block_and_key_window():
    torch.manual_seed(0)
    block, window = (2, 3), (4, 5)
    layer = RelativePositionLogits2d(3, window).double()
    q = torch.randn(2, 3, 6, block[0] * block[1], 3, dtype=torch.float64)  # (B, heads, blocks, b^2, d)
    got = layer(q, block, window)
    assert got.shape == (2, 3, 6, 6, 20)
    rel_h, rel_w = layer.height_rel.detach(), layer.width_rel.detach()
    for i in range(6):
        hi, wi = divmod(i, block[1])
        for j in range(20):
            hj, wj = divmod(j, window[1])
            r = rel_h[hj - hi + window[0] - 1] + rel_w[wj - wi + window[1] - 1]
            torch.testing.assert_close(got[..., i, j], (q[..., i, :] * r).sum(-1))
    with pytest.raises(UsageError, match="must cover"):
        layer(torch.randn(1, 25, 3), (5, 5), (4, 5))


def test_swin_index_is_query_minus_key_in_raster_order():
    height, width = 2, 3
    index = relative_position_index((height, width))
    assert index.shape == (6, 6) and index.dtype == torch.int64
    for i in range(6):
        for j in range(6):
            (hi, wi), (hj, wj) = divmod(i, width), divmod(j, width)
            assert index[i, j] == (hi - hj + height - 1) * (2 * width - 1) + wi - wj + width - 1
    assert relative_position_index(1).tolist() == [[0]]
    # every offset of a square window appears, the zero offset on the diagonal at the table's centre
    index = relative_position_index(3)
    assert sorted(set(index.flatten().tolist())) == list(range(25)) and set(index.diagonal().tolist()) == {12}


def test_swin_bias_gathers_one_scalar_per_head_and_offset():
    table = torch.randn(15, 4)  # a 2 x 3 window, 4 heads
    index = relative_position_index((2, 3))
    bias = relative_position_bias(table, index)
    assert bias.shape == (4, 6, 6)
    for h in range(4):
        for i in range(6):
            for j in range(6):
                assert bias[h, i, j] == table[index[i, j], h]


def test_swin_table_resampling_keeps_a_constant_and_the_size():
    table = torch.full((13 * 13, 3), 0.25)
    got = resample_bias_table(table, 7, 12)
    assert got.shape == (23 * 23, 3)
    torch.testing.assert_close(got, torch.full_like(got, 0.25))
    assert resample_bias_table(table, (7, 7), 7) is table
    with pytest.raises(UsageError, match=r"window \(6, 6\)"):
        resample_bias_table(table, 6, 7)


@pytest.mark.parametrize("size", [(3, 4), (1, 3), (2, 1)])
def test_logits_match_the_definition_at_the_built_size(size):
    torch.manual_seed(0)
    layer = RelativePositionLogits2d(5, size, scale=0.7).double()
    q = _q(2, 3, size, 5)
    want = _loop_logits(q, layer.height_rel.detach(), layer.width_rel.detach(), size, 0.7)
    torch.testing.assert_close(layer(q, size), want)


def test_tables_are_per_axis_offsets_with_the_official_init():
    torch.manual_seed(0)
    layer = RelativePositionLogits2d(64, (14, 9))
    assert layer.height_rel.shape == (27, 64) and layer.width_rel.shape == (17, 64)
    for t in (layer.height_rel, layer.width_rel):  # normal, std dim_head^-1/2 (BoTNet's code, timm)
        assert abs(t.std().item() / 64 ** -0.5 - 1) < 0.1 and abs(t.mean().item()) < 0.02


def test_resampling_is_linear_along_the_offset_axis_with_half_pixel_centres():
    table = torch.tensor([[0.0, 10.0], [1.0, 20.0], [3.0, 40.0]])  # offsets -1, 0, +1 of a 2-pixel axis
    got = resample_offsets(table, 5)  # offsets -2 ... 2 of a 3-pixel axis
    # source position of entry j: (j + 1/2) * 3 / 5 - 1/2 = -0.2, 0.4, 1.0, 1.6, 2.2 (clamped at the ends)
    t0, t1, t2 = table
    want = torch.stack([t0, 0.6 * t0 + 0.4 * t1, t1, 0.4 * t1 + 0.6 * t2, t2])
    torch.testing.assert_close(got, want)
    assert resample_offsets(table, 3) is table


def test_a_second_size_uses_the_resampled_tables_in_the_same_formula():
    torch.manual_seed(0)
    layer = RelativePositionLogits2d(4, (4, 4)).double()
    for size in ((6, 5), (2, 3)):
        rel_h, rel_w = layer.tables(size)
        assert rel_h.shape == (2 * size[0] - 1, 4) and rel_w.shape == (2 * size[1] - 1, 4)
        torch.testing.assert_close(rel_h, resample_offsets(layer.height_rel, 2 * size[0] - 1))
        q = _q(1, 2, size, 4, seed=1)
        torch.testing.assert_close(layer(q, size), _loop_logits(q, rel_h.detach(), rel_w.detach(), size))
    # and the tables learn through the resampling
    layer(_q(1, 2, (6, 5), 4), (6, 5)).square().sum().backward()
    assert layer.height_rel.grad.abs().sum() > 0 and layer.width_rel.grad.abs().sum() > 0


def test_half_precision_queries_get_a_bias_of_their_dtype():
    layer = RelativePositionLogits2d(8, (3, 3))
    q = torch.randn(2, 2, 9, 8).bfloat16()
    out = layer(q, (3, 3))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), layer(q.float(), (3, 3)), atol=0.1, rtol=0.05)


def test_bad_arguments_and_shapes_are_usage_errors():
    with pytest.raises(UsageError, match="spatial_size"):
        RelativePositionLogits2d(8, (0, 3))
    with pytest.raises(UsageError, match="dim_head"):
        RelativePositionLogits2d(0, 4)
    with pytest.raises(UsageError, match="scale"):
        RelativePositionLogits2d(8, 4, scale=0.0)
    layer = RelativePositionLogits2d(8, (3, 3))
    with pytest.raises(UsageError, match="H \\* W = 9"):
        layer(torch.randn(1, 2, 10, 8), (3, 3))
    with pytest.raises(UsageError, match="d = 8"):
        layer(torch.randn(1, 2, 9, 4), (3, 3))


def test_sasa_embedding_lives_here_and_stays_importable_where_it_was():
    assert la.RelativeEmbedding2d is RelativeEmbedding2d
    assert ref.relative_table is relative_table
    torch.manual_seed(0)
    layer = la.LocalSelfAttention2d(16, kernel_size=3, heads=2)
    assert [k for k in layer.state_dict()] == ["qkv.weight", "rel.rows", "rel.cols"]
    rows, cols = layer.rel()
    torch.testing.assert_close(layer.rel.table()[:, 1, 2], rows[:, 1] + cols[:, 2])
