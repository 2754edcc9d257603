"""The token-attention pictures draw what the recorder recorded: SASA's window of a pixel, Swin's window of a token
(placed by the shifted-window formula), HaloNet's block mean, ViT's class-token rows and rollout (against a loop),
the Sparse Transformer's patterns (against the masks), Image GPT completions; the options' checks and the models
each picture refuses. Tiny models, one image."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import visionattn
from visionattn.errors import UsageError
from visionattn.layers.attention_core import AttentionRecorder
from visionattn.layers.local_attention import LocalSelfAttention2d
from visionattn.layers.recording import Recorder
from visionattn.layers.sparse_patterns import sparse_masks
from visionattn.models.igpt import ImageGPT
from visionattn.show.catalog import PICTURES
from visionattn.show.igpt_pictures import completion_grid, pick_rows
from visionattn.show.registry import Subject
from visionattn.show.rollout import attention_rollout, residual_attention
from visionattn.show.sparse_pictures import BOTH, FIRST, NONE, QUERY, SECOND, pattern_codes
from visionattn.show.token_pictures import halo_view, sasa_view, swin_view
from visionattn.show.vit_pictures import vit_view


def _subject(model: nn.Module | None, side: int, channels: int = 3, name: str = "tiny", **options) -> Subject:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(1, channels, side, side, generator=g)
    display = torch.rand(1, side, side, 3, generator=g)
    return Subject(model.eval() if model is not None else None, name, False, images, display, options=options)


def _overlays(fig) -> list[torch.Tensor]:
    """The weight maps a figure shows: the second image of every axes that has one (the first is the photo)."""
    return [torch.as_tensor(ax.images[1].get_array().filled(math.nan)) for ax in fig.axes if len(ax.images) > 1]


def _sasa_model(border: str = "mask") -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1),
                         LocalSelfAttention2d(8, heads=2, kernel_size=3, border=border))


# --------------------------------------------------------------------------------------------------------- SASA
def test_sasa_draws_the_pixels_recorded_window_weights_at_the_layers_resolution():
    subject = _subject(_sasa_model(), 12, pixel=(7, 4))
    with Recorder(subject.model) as rec, torch.no_grad():
        subject.model(subject.images)
    weights = rec.records["1"][0][0]  # (heads, 6, 6, 9)
    view = sasa_view(subject)
    assert view.layer == "1" and view.map_size == (6, 6) and view.position == (3, 2)  # the 12x12 image halved
    want = torch.full((2, 6, 6), math.nan)
    for u in range(3):
        for v in range(3):
            want[:, 2 + u, 1 + v] = weights[:, 3, 2, u * 3 + v]
    torch.testing.assert_close(view.maps, want, equal_nan=True)
    assert view.boxes["window"] == (2, 1, 4, 3)
    fig = PICTURES["sasa"].draw(subject)
    for drawn, expected in zip(_overlays(fig), view.maps, strict=True):
        torch.testing.assert_close(drawn.float(), expected, equal_nan=True)
    assert "untrained" in fig.get_suptitle()


def test_sasa_clamped_window_at_a_corner_and_one_head():
    subject = _subject(_sasa_model("clamp"), 12, pixel=(0, 11), head=1)
    view = sasa_view(subject)
    assert view.heads == [1] and view.position == (0, 5)
    assert view.boxes["window"] == (0, 3, 2, 5)  # shifted inwards: 3 x 3 real neighbours
    assert torch.isfinite(view.maps[0]).sum() == 9
    torch.testing.assert_close(view.maps[0].nan_to_num(0).sum(), torch.tensor(1.0))


def test_sasa_zero_border_says_how_much_weight_the_padding_takes():
    subject = _subject(_sasa_model("zero"), 12, pixel=(0, 0), head=0)
    with Recorder(subject.model) as rec, torch.no_grad():
        subject.model(subject.images)
    view = sasa_view(subject)
    drawn = view.maps[0].nan_to_num(0).sum()
    assert torch.isfinite(view.maps[0]).sum() == 4  # the corner's window: 2 x 2 pixels of the map
    torch.testing.assert_close(drawn, rec.records["1"][0][0, 0, 0, 0, [4, 5, 7, 8]].sum())
    assert f"weight on the zero padding: {1 - drawn.item():.2f}" in view.note
    assert sasa_view(_subject(_sasa_model(), 12, pixel=(0, 0))).note == ""  # "mask": the padding takes none


def test_sasa_default_layer_is_the_first_at_a_useful_resolution():
    """A 64x64 map is too fine for a 3x3 window (> 16k); the layer after a 4x pooling (16x16) is chosen."""
    torch.manual_seed(0)
    model = nn.Sequential(LocalSelfAttention2d(3, 8, kernel_size=3, heads=2), nn.AvgPool2d(4),
                          LocalSelfAttention2d(8, heads=2, kernel_size=3))
    view = sasa_view(_subject(model, 64))
    assert view.layer == "2" and view.map_size == (16, 16)
    assert sasa_view(_subject(model, 64, layer=0)).layer == "0"


# --------------------------------------------------------------------------------------------------------- Swin
def test_swin_draws_the_tokens_row_placed_by_the_shifted_window_formula():
    """Block 1 of the first stage shifts its 7x7 windows by 3 on the 14x14 map: token (y, x) is in window
    ((y - 3) mod 14 // 7, (x - 3) mod 14 // 7) at slot ((y - 3) mod 14 % 7, (x - 3) mod 14 % 7)."""
    torch.manual_seed(0)
    model = visionattn.create_model("swin_patch2_window7_28")
    name = "layers.0.blocks.1.attn"
    subject = _subject(model, 28, channels=1, pixel=(3, 25), layer=name)
    with AttentionRecorder(model, names=[f"{name}.attend"]) as rec, torch.no_grad():
        model.eval()(subject.images)
    weights = rec.weights[f"{name}.attend"][0][0]  # (4 windows * 2 heads, 49, 49)
    view = swin_view(subject)
    assert view.position == (1, 12)
    assert view.grids == {"grid": (1, (7, 7), (3, 3))}  # the next block works on the next stage's 7x7 map

    def place(y: int, x: int) -> tuple[int, int]:
        ry, rx = (y - 3) % 14, (x - 3) % 14
        return ry // 7 * 2 + rx // 7, ry % 7 * 7 + rx % 7

    window, slot = place(1, 12)
    want = torch.full((2, 14, 14), math.nan)
    for y in range(14):
        for x in range(14):
            w, s = place(y, x)
            if w == window:
                want[:, y, x] = weights[[2 * window, 2 * window + 1], slot, s]
    torch.testing.assert_close(view.maps, want, equal_nan=True)
    torch.testing.assert_close(view.maps.nan_to_num(0).sum((1, 2)), torch.ones(2))
    fig = PICTURES["swin"].draw(subject)
    for drawn, expected in zip(_overlays(fig), view.maps, strict=True):
        torch.testing.assert_close(drawn.float(), expected, equal_nan=True)
    subject.options = {"pixel": (3, 25)}  # the default: the first block, whose next block shifts
    first = swin_view(subject)
    assert first.layer == "layers.0.blocks.0.attn"
    assert first.grids == {"grid": (0, (7, 7), (0, 0)), "next_grid": (1, (7, 7), (3, 3))}
    assert torch.isfinite(first.maps[0]).sum() == 49  # a whole unshifted window: rows 0-6, columns 7-13
    assert torch.isfinite(first.maps[0, :7, 7:]).all()


# --------------------------------------------------------------------------------------------------------- Halo
def test_halo_draws_the_blocks_mean_attention_over_its_window():
    torch.manual_seed(0)
    model = visionattn.create_model("halonet29")
    name = "layer2.1.conv2"  # b = 4, h = 2 on the 14x14 map: 4 x 4 blocks (padded to 16), 8 x 8 windows
    subject = _subject(model, 28, channels=1, pixel=(20, 2), layer=name, head=3)
    with AttentionRecorder(model, names=[f"{name}.attend"]) as rec, torch.no_grad():
        model.eval()(subject.images)
    weights = rec.weights[f"{name}.attend"][0]  # (16 blocks, 4 heads, 16 queries, 64 keys)
    view = halo_view(subject)
    assert view.map_size == (14, 14) and view.position == (10, 1) and view.heads == [3]
    block = 2 * 4 + 0  # block row 10 // 4, column 1 // 4
    mean = weights[block, 3].mean(0).view(8, 8)  # window rows 8 - 2 .. 13, columns -2 .. 5
    want = torch.full((14, 14), math.nan)
    want[6:14, 0:6] = mean[:, 2:]
    torch.testing.assert_close(view.maps[0], want, equal_nan=True)
    assert view.boxes == {"block": (8, 0, 11, 3), "window": (6, 0, 13, 5)}


# ---------------------------------------------------------------------------------------------------------- ViT
def _rollout_loop(layers: list[torch.Tensor]) -> torch.Tensor:
    """Abnar & Zuidema's rollout of one image by loops: (mean over heads + I), each row / its sum, multiplied
    from the first layer to the last (R <- A^_l R)."""
    n = layers[0].shape[-1]
    rollout = [[float(i == j) for j in range(n)] for i in range(n)]
    for weights in layers:
        a = [[sum(weights[0, h, i, j].item() for h in range(weights.shape[1])) / weights.shape[1] + (i == j)
              for j in range(n)] for i in range(n)]
        a = [[v / sum(row) for v in row] for row in a]
        rollout = [[sum(a[i][m] * rollout[m][j] for m in range(n)) for j in range(n)] for i in range(n)]
    return torch.tensor(rollout)


def test_rollout_is_the_loop_and_its_rows_sum_to_one():
    g = torch.Generator().manual_seed(0)
    layers = [torch.rand(1, 3, 5, 5, generator=g).softmax(-1) for _ in range(3)]
    rollout = attention_rollout(layers)
    torch.testing.assert_close(rollout[0], _rollout_loop(layers), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(rollout.sum(-1), torch.ones(1, 5))
    assert not torch.allclose(rollout.sum(-2), torch.ones(1, 5), atol=1e-3)  # the columns: the wrong axis
    torch.testing.assert_close(residual_attention(layers[0]).sum(-1), torch.ones(1, 5))
    with pytest.raises(UsageError, match="layers"):
        attention_rollout([])


def test_vit_draws_the_class_tokens_rows_and_the_rollout():
    torch.manual_seed(0)
    model = visionattn.create_model("vit_patch4_28", depth=2)
    subject = _subject(model, 28, channels=1)
    with AttentionRecorder(model) as rec, torch.no_grad():
        model.eval()(subject.images)
    layers = [rec.weights[f"blocks.{i}.attn.attend"][0] for i in range(2)]
    view = vit_view(subject)
    assert view.layer == "blocks.1.attn.attend" and view.patch == 4
    subject.options = {"layer": "blocks.0"}  # the block for its attention step
    assert vit_view(subject).layer == "blocks.0.attn.attend"
    subject.options = {}
    torch.testing.assert_close(view.maps, layers[1][0, :, 0, 1:].reshape(4, 7, 7))
    torch.testing.assert_close(view.rollout, _rollout_loop(layers)[0, 1:].reshape(7, 7), rtol=1e-4, atol=1e-6)
    fig = PICTURES["vit"].draw(subject)
    drawn = _overlays(fig)
    assert len(drawn) == 5
    for got, want in zip(drawn, [*view.maps, view.rollout]):
        torch.testing.assert_close(got.float(), want)


# ------------------------------------------------------------------------------------------------------- sparse
def test_sparse_patterns_are_the_masks_for_the_query_pixel():
    masks = sparse_masks("strided", 64, 8)
    image, matrix = pattern_codes("strided", 8, 8, None, (4, 4))
    query = 36
    assert image[4, 4] == QUERY
    assert image[3, 5] == FIRST and image[2, 4] == SECOND and image[5, 4] == NONE  # A(1): the last 8 pixels
    codes = masks[0].long() * FIRST + masks[1].long() * SECOND
    assert torch.equal(matrix, codes) and matrix[query, query] == BOTH
    flat = image.flatten().clone()
    flat[query] = codes[query, query]
    assert torch.equal(flat, codes[query])
    fixed, _ = pattern_codes("fixed", 8, 8, 2, (4, 4))
    assert fixed[3, 6] == SECOND and fixed[3, 5] == NONE and fixed[4, 0] == FIRST  # summary columns 6, 7
    fig = PICTURES["sparse"].draw(_subject(None, 8, name="", summary=2))
    shown = [torch.as_tensor(ax.images[0].get_array()) for ax in fig.axes[:4]]
    assert torch.equal(shown[0], image) and torch.equal(shown[1], fixed) and torch.equal(shown[2], codes)


def test_sparse_options_are_checked():
    draw = PICTURES["sparse"].draw
    with pytest.raises(UsageError, match="summary"):
        draw(_subject(None, 8, name="", stride=4, summary=5))
    with pytest.raises(UsageError, match="pixel"):
        draw(_subject(None, 8, name="", pixel=(8, 0)))
    with pytest.raises(UsageError, match="size"):
        draw(_subject(None, 8, name="", size=1))


# --------------------------------------------------------------------------------------------------------- iGPT
def test_igpt_keeps_the_top_half_and_says_the_model_is_untrained():
    torch.manual_seed(0)
    model = ImageGPT(vocab_size=4, seq_len=16, dim=8, depth=2, heads=2, image_size=4).eval()
    subject = _subject(model, 4, channels=1, name="igpt_tiny", completions=2)
    subject.display = subject.display[..., :1].expand(-1, -1, -1, 3)  # grey
    grid, note = completion_grid(subject)
    assert grid.shape == (1, 3, 1, 4, 4) and "evenly spaced" in note
    levels = torch.linspace(0, 1, 4)
    rendered = levels[(subject.display[0, :, :, 0] * 255).round().div(255)[..., None].sub(levels).abs().argmin(-1)]
    torch.testing.assert_close(grid[0, 0, 0], rendered)
    for sample in grid[0, 1:]:
        torch.testing.assert_close(sample[0, :2], rendered[:2])  # the kept top half
    fig = PICTURES["igpt"].draw(subject)
    assert "untrained" in fig.get_suptitle()
    torch.testing.assert_close(torch.as_tensor(fig.axes[0].images[0].get_array()).float(), rendered)
    with pytest.raises(UsageError, match="images"):
        completion_grid(_subject(model, 6, channels=1))


def test_igpt_completes_one_image_per_class():
    subject = _subject(None, 4, channels=1, rows=3)
    subject.display = torch.rand(6, 4, 4, 3)
    assert pick_rows(subject).tolist() == [0, 1, 2]
    subject.labels = torch.tensor([2, 2, 0, 1, 0, 1])
    assert pick_rows(subject).tolist() == [2, 3, 0]  # the first image of class 0, 1, 2
    subject.options = {"rows": 5}
    assert pick_rows(subject).tolist() == [2, 3, 0, 1, 4]  # three classes, then the next images


# ------------------------------------------------------------------------------------------- choices, refusals
def test_options_name_what_is_wrong():
    subject = _subject(_sasa_model(), 12)
    for options, argument in (({"layer": "11"}, "--layer: got 11, out of range; needed one of the model's local "
                                                "attention layers"),
                              ({"layer": "l"}, "--layer: got 'l', which is not one of them"), ({"head": 2}, "head"),
                              ({"pixel": (12, 0)}, "pixel"), ({"image": 1}, "image")):
        subject.options = options
        with pytest.raises(UsageError, match=argument):
            sasa_view(subject)
    with pytest.raises(UsageError, match="did you mean"):
        swin_view(_subject(visionattn.create_model("swin_patch2_window7_28"), 28, 1, layer="layers.0.blocks.0.atn"))


def test_each_picture_accepts_only_models_with_what_it_draws():
    vit = visionattn.create_model("vit_patch4_28", depth=1)
    swin = visionattn.create_model("swin_patch2_window7_28")
    resnet = visionattn.create_model("resnet20")
    igpt = ImageGPT(vocab_size=4, seq_len=16, dim=8, depth=1, heads=2)
    models = {"sasa": _sasa_model(), "swin": swin, "vit": vit, "igpt": igpt,
              "halo": visionattn.create_model("halonet29")}
    for name, own in models.items():
        picture = PICTURES[name]
        assert picture.needs and picture.accepts(own), name
        for other in (resnet, *(m for n, m in models.items() if n != name)):
            assert not picture.accepts(other), (name, type(other).__name__)
    assert PICTURES["sparse"].images == "none" and PICTURES["sparse"].default_model == ""
    assert PICTURES["igpt"].images == "fashion-mnist"
