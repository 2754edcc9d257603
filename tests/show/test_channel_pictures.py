"""The channel, spatial and branch pictures: what they plot is exactly what the layers recorded."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

import visionattn
from visionattn.errors import UsageError
from visionattn.layers.gather_excite import GatherExcite
from visionattn.layers.recording import Recorder
from visionattn.show import branch_pictures as bp
from visionattn.show import channel_pictures as cp
from visionattn.show.catalog import PICTURES
from visionattn.show.registry import Subject

SIZE = 16
CLASS_NAMES = [f"item {i}" for i in range(10)]


def _model(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return visionattn.create_model(name, num_classes=10, in_chans=1, img_size=SIZE, **kwargs).eval()


def _subject(name: str, batch: int = 6, labelled: bool = True, **kwargs) -> Subject:
    images = torch.randn(batch, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    display = torch.rand(batch, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(3))
    labels = torch.tensor([0, 0, 3, 3, 7, 7][:batch]) if labelled else None
    return Subject(_model(name, **kwargs), name, False, images, display, labels, CLASS_NAMES if labelled else None)


def _recorded(subject: Subject, names: list[str], images: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a fresh recording, made here independently of the picture's own."""
    with torch.no_grad(), Recorder(subject.model, names=names) as rec:
        subject.model(subject.images if images is None else images)
    return {n: rec.records[n][0] for n in names}


def _colours(fig) -> list[tuple[float, ...]]:
    return [tuple(line.get_color()) for line in fig.axes[0].lines if not line.get_label().startswith("_")]


@pytest.mark.parametrize(("picture", "model", "layer"), [("se", "se_resnet20", "se"), ("eca", "eca_resnet20", "se"),
                                                         ("ge", "ge_theta_resnet20", "se")])
def test_channel_weights_per_class_are_the_recorded_gates(picture, model, layer):
    subject = _subject(model)
    fig = PICTURES[picture].draw(subject)
    names = [f"layer{s}.2.{layer}" for s in (1, 2, 3)]  # the last block of each stage
    recorded = _recorded(subject, names)
    assert len(fig.axes) == 3
    for ax, name, width in zip(fig.axes, names, (16, 32, 64)):
        gates = recorded[name].flatten(1)  # (B, C)
        assert ax.get_title() == f"layer{name[5]} ({width} channels)"
        assert [line.get_label() for line in ax.lines] == ["item 0", "item 3", "item 7", "all images"]
        for line, c in zip(ax.lines, (0, 3, 7)):
            torch.testing.assert_close(torch.as_tensor(line.get_ydata()), gates[subject.labels == c].mean(dim=0))
            assert list(line.get_xdata()) == list(range(width))
        torch.testing.assert_close(torch.as_tensor(ax.lines[-1].get_ydata()), gates.mean(dim=0))
    assert len(set(_colours(fig))) == 4  # no colour used twice
    assert "untrained" in fig.get_suptitle()
    plt.close(fig)


def test_one_image_without_labels_draws_its_own_weights():
    subject = _subject("se_resnet20", batch=1, labelled=False)
    fig = PICTURES["se"].draw(subject)
    recorded = _recorded(subject, ["layer3.2.se"])
    (line,) = fig.axes[2].lines
    assert line.get_label() == "image 0"
    torch.testing.assert_close(torch.as_tensor(line.get_ydata()), recorded["layer3.2.se"].flatten())
    plt.close(fig)


def test_a_local_gather_excite_gate_is_averaged_over_its_positions():
    subject = _subject("ge_theta_minus_resnet20", attn_kwargs={"extent": 2})
    weights = cp.channel_weights(subject, (GatherExcite,))
    gate = _recorded(subject, ["layer1.2.se"])["layer1.2.se"]
    assert gate.shape == (6, 16, SIZE // 2, SIZE // 2)
    torch.testing.assert_close(weights["layer1"], gate.mean(dim=(2, 3)))


@pytest.mark.parametrize(("picture", "model", "names"), [
    ("cbam", "cbam_resnet20", [f"layer{s}.2.se.spatial" for s in (1, 2, 3)]),
    ("bam", "bam_resnet20", ["layer1.attn", "layer2.attn"]),
])
def test_spatial_maps_are_the_recorded_maps_over_the_images(picture, model, names, monkeypatch):
    monkeypatch.setattr(cp, "MAX_ROWS", 4)
    subject = _subject(model)
    fig = PICTURES[picture].draw(subject)
    recorded = _recorded(subject, names)
    columns = len(names) + 1
    panels = [ax for ax in fig.axes if ax.images]  # the colour bars carry no image
    assert len(panels) == 4 * columns and len(fig.axes) == 4 * columns + len(names)
    for r in range(4):
        image = panels[r * columns].images[0].get_array()
        torch.testing.assert_close(torch.as_tensor(np.asarray(image)), subject.display[r])
        for j, name in enumerate(names, start=1):
            _, overlay = panels[r * columns + j].images
            expected = torch.nn.functional.interpolate(recorded[name][r:r + 1].mean(dim=1, keepdim=True),
                                                       size=(SIZE, SIZE), mode="bilinear")[0, 0]
            torch.testing.assert_close(torch.as_tensor(np.asarray(overlay.get_array())), expected)
    assert panels[1].get_title().startswith("layer1 (16x16 map)")
    plt.close(fig)


def test_enlarge_crops_the_centre_and_keeps_the_size():
    images = torch.randn(2, 3, 12, 10, generator=torch.Generator().manual_seed(0))
    scaled = [bp.enlarge(images, s) for s in bp.SCALES]
    assert scaled[0] is images
    assert all(s.shape == images.shape for s in scaled)
    assert not torch.allclose(scaled[1], scaled[2]) and not torch.allclose(scaled[0], scaled[1])
    # 2x: the central 6 x 5 pixels, each doubled; the corners come from the crop, not from the border
    crop = images[..., 3:9, 2:7]
    torch.testing.assert_close(bp.enlarge(images, 2.0), torch.nn.functional.interpolate(crop, size=(12, 10),
                                                                                        mode="bilinear"))
    assert torch.equal(bp.enlarge(torch.ones(1, 1, 8, 8), 1.5), torch.ones(1, 1, 8, 8))
    for bad in (0.5, "2", True):
        with pytest.raises(UsageError, match="scale"):
            bp.enlarge(images, bad)


def test_sk_plots_the_recorded_branch_weights_at_each_scale():
    subject = _subject("sk_resnet20")
    fig = PICTURES["sk"].draw(subject)
    names = [f"layer{s}.{b}.conv1" for s in (1, 2, 3) for b in range(3)]
    assert len(fig.axes) == 4
    overview, *stages = fig.axes
    assert [line.get_label() for line in overview.lines[:3]] == ["object 1x", "object 1.5x", "object 2x"]
    for line, scale in zip(overview.lines, bp.SCALES):
        a = _recorded(subject, names, bp.enlarge(subject.images, scale))
        diff = torch.stack([(a[n][:, 1] - a[n][:, 0]).mean() for n in names])  # a_5x5 - a_3x3
        torch.testing.assert_close(torch.as_tensor(line.get_ydata()), diff)
        for ax, s in zip(stages, (1, 2, 3)):
            torch.testing.assert_close(torch.as_tensor(ax.lines[bp.SCALES.index(scale)].get_ydata()),
                                       a[f"layer{s}.2.conv1"][:, 1].flatten(1).mean(dim=0))
    assert "5x5" in overview.get_title() and "3x3" in overview.get_title()
    assert len(set(_colours(fig))) == 3
    plt.close(fig)


@pytest.mark.parametrize(("picture", "has_it", "lacks_it"), [
    ("cbam", "cbam_resnet20", "bam_resnet20"), ("bam", "bam_resnet20", "cbam_resnet20"),
    ("se", "se_resnet20", "eca_resnet20"), ("eca", "eca_resnet20", "se_resnet20"),
    ("ge", "ge_theta_minus_resnet20", "resnet20"), ("sk", "sk_resnet20", "splat_resnet20"),
])
def test_accepts_only_models_with_the_layer(picture, has_it, lacks_it):
    entry = PICTURES[picture]
    assert entry.accepts(_model(has_it)) and not entry.accepts(_model(lacks_it))
    assert entry.needs and entry.default_model in visionattn.list_models()
    assert entry.images == ("photos" if picture in ("cbam", "bam") else "fashion-mnist")
    with pytest.raises(UsageError, match="model: .* has no"):
        entry.draw(Subject(_model(lacks_it), lacks_it, True, torch.zeros(1, 1, SIZE, SIZE)))


def test_a_picture_without_images_says_so():
    with pytest.raises(UsageError, match="needs a model and input images"):
        PICTURES["se"].draw(Subject(_model("se_resnet20"), "se_resnet20", True))


def test_line_colours_are_distinct_up_to_twenty():
    assert len(set(cp.line_colours(10))) == 10 and len(set(cp.line_colours(20))) == 20
    with pytest.raises(ValueError, match="at most 20"):
        cp.line_colours(21)


def test_many_classes_keep_distinct_colours():
    weights = torch.rand(30, 4)
    lines = cp.class_means(weights, torch.arange(30), None)
    assert len(lines) == cp.MAX_LINES and list(lines)[-1] == "all images" and list(lines)[0] == "class 0"


def test_the_layer_option_draws_only_that_layer():
    subject = _subject("se_resnet20", batch=2)
    subject.options["layer"] = "layer2.0.se"
    fig = PICTURES["se"].draw(subject)
    (ax,) = fig.axes
    gates = _recorded(subject, ["layer2.0.se"])["layer2.0.se"].flatten(1)
    torch.testing.assert_close(torch.as_tensor(ax.lines[-1].get_ydata()), gates.mean(dim=0))
    plt.close(fig)
    sk = _subject("sk_resnet20", batch=2)
    sk.options["layer"] = "layer2.1.conv1"
    fig = PICTURES["sk"].draw(sk)
    assert len(fig.axes) == 2 and fig.axes[1].get_title() == "layer2.1.conv1 (layer2)"
    assert len(fig.axes[0].get_xticks()) == 9  # the overview keeps every block
    plt.close(fig)
    subject.options["layer"] = "layer2.0.sx"
    with pytest.raises(UsageError, match="--layer: .*did you mean 'layer2.0.se'"):
        PICTURES["se"].draw(subject)


@pytest.mark.parametrize("layer", [3, "3", -6, "layer2.0", "layer2.0.se"])
def test_the_layer_option_takes_an_index_or_the_parent_module_too(layer):
    subject = _subject("se_resnet20", batch=2)  # SE layers: layer1.0.se ... layer3.2.se, three per stage
    subject.options["layer"] = layer
    assert cp.stage_layers(subject, cp._SE) == {"layer2": "layer2.0.se"}
    fig = PICTURES["se"].draw(subject)
    (ax,) = fig.axes
    gates = _recorded(subject, ["layer2.0.se"])["layer2.0.se"].flatten(1)
    torch.testing.assert_close(torch.as_tensor(ax.lines[-1].get_ydata()), gates.mean(dim=0))
    plt.close(fig)


@pytest.mark.parametrize(("layer", "message"), [
    ("layer2.0.sx", "--layer: got 'layer2.0.sx', which is not one of them; did you mean 'layer2.0.se'"),
    (9, "--layer: got 9, out of range; needed one of the model's SqueezeExcite or SEVar1 or SEVar2 or SEVar3 layers "
        "(layer1.0.se, "),
    ("-10", "--layer: got -10, out of range;"),
    ("layer2", "--layer: got 'layer2', which holds 3 of them;"),
    (1.5, "--layer: got 1.5;"),
])
def test_a_wrong_layer_names_the_argument_and_what_it_needs(layer, message):
    subject = _subject("se_resnet20", batch=2)
    subject.options["layer"] = layer
    with pytest.raises(UsageError) as caught:
        cp.stage_layers(subject, cp._SE)
    assert str(caught.value).startswith(message), caught.value
    assert "the name of the module holding it, or its index in [0, 9)" in str(caught.value)
