"""The registry's look-ups, its "did you mean", and the lazy package import."""

import subprocess
import sys

import pytest

import visionattn
from visionattn.errors import UsageError, did_you_mean
from visionattn.registry import ATTN, MODELS, Entry


def test_import_does_not_load_torch_until_a_name_is_asked_for():
    code = ("import sys, visionattn; before = 'torch' in sys.modules; visionattn.list_attn(); "
            "print(before, 'torch' in sys.modules, 'visionattn.layers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True", "True"]


def test_public_names_resolve_lazily():
    assert visionattn.create_attn is visionattn.registry.create_attn
    assert "se" in visionattn.list_attn() and "resnet50" in visionattn.list_models()
    assert visionattn.layers.SqueezeExcite.__name__ == "SqueezeExcite"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = visionattn.nope


def test_family_filter():
    assert "se" in visionattn.list_attn("channel") and "sk" not in visionattn.list_attn("channel")
    assert set(ATTN.families()) >= {"channel", "branch", "self-attention"}


@pytest.mark.parametrize(("name", "suggested"), [("resnet5", "resnet50"), ("se_resnet", "se_resnet50"),
                                                 ("Resnet50", "resnet50"), ("sknet", "sknet50")])
def test_did_you_mean_finds_the_close_name(name, suggested):
    assert repr(suggested) in did_you_mean(name, MODELS.names())


def test_did_you_mean_stays_quiet_when_nothing_is_close():
    assert did_you_mean("qqqq", ["se", "eca"]) == ""


@pytest.mark.bad_input
@pytest.mark.parametrize(("call", "match"), [
    (lambda: visionattn.create_attn("sqeeze", 8), r"name: unknown attention layer name 'sqeeze'"),
    (lambda: visionattn.create_attn("cbma", 8), r"did you mean 'cbam'"),
    (lambda: visionattn.create_attn(None, 8), r"unknown attention layer name None"),
    (lambda: visionattn.create_model("resnet5"), r"unknown model name 'resnet5'; did you mean 'resnet50'"),
    (lambda: visionattn.create_model("qqqq"), r"the model names are: .*resnet50"),
    (lambda: visionattn.list_attn("chanel"), r"family: unknown attention layer family name 'chanel'.*'channel'"),
    (lambda: visionattn.list_models("resnet_small"), r"family: .*'resnet-small'"),
    (lambda: visionattn.create_attn("se", 8, rd_ration=0.5), r"rd_ration: 'se' takes no keyword.*'rd_ratio'"),
    (lambda: visionattn.create_attn("eca", 8, kernel=3), r"kernel: 'eca' takes no keyword 'kernel'"),
    (lambda: visionattn.create_model("resnet20", atn="se"), r"atn: 'resnet20' takes no keyword.*'attn'"),
    (lambda: visionattn.create_model("resnet50", attn="se", attn_kwargs={"rd_ration": 1}),
     r"attn_kwargs: 'se' takes no keyword 'rd_ration'"),
])
def test_unknown_names_are_clear_errors(call, match):
    with pytest.raises(UsageError, match=match):
        call()


def test_entry_placement_flags_are_checked_when_registered():
    def factory(channels):  # pragma: no cover - never built
        raise AssertionError

    with pytest.raises(UsageError, match=r"placement: got 'stages' for 'x', needed one of block, stage, after.*"
                                         r"did you mean 'stage'"):
        Entry(name="x", factory=factory, placement="stages")
    with pytest.raises(UsageError, match="own_norm_act: 'x' sets it but is not conv_like"):
        Entry(name="x", factory=factory, own_norm_act=True)
    with pytest.raises(UsageError, match="placement: 'x' is conv_like"):
        Entry(name="x", factory=factory, conv_like=True, placement="after")


def test_a_layer_registered_elsewhere_is_placed_by_its_entry(monkeypatch):
    """The plug reads the placement from the registry, not from a list of names: a new layer registered with
    placement="stage" goes at the ends of the stages, as BAM does."""
    import torch

    from visionattn.models.resnet import ResNet

    entry = Entry(name="my_gate", factory=lambda channels: torch.nn.Conv2d(channels, channels, 1),
                  family="channel", placement="stage")
    monkeypatch.setitem(ATTN._entries, "my_gate", entry)
    model = ResNet("basic", (1, 1, 1), (8, 16, 32), num_classes=2, small_input=True, attn="my_gate")
    gates = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1)
             and m.in_channels == m.out_channels and "downsample" not in name]
    bam = ResNet("basic", (1, 1, 1), (8, 16, 32), num_classes=2, small_input=True, attn="bam")
    assert gates == [n for n, m in bam.named_modules() if type(m).__name__ == "BottleneckAttention"]
    assert gates == ["layer1.attn", "layer2.attn"]  # every stage but the last
