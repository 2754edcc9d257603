"""State dicts in the layout before 9b8d90e convert to today's module names, for every model of the record.

``tests/data/legacy_state_dict_keys.json.gz`` holds each registered model's keys and shapes as the code before
9b8d90e registered them, in its registration order ({model: [[key, shape], ...]}). Structure is checked on
``meta`` tensors (no memory); the outputs on a few small models built for real.
"""

from __future__ import annotations

import gzip
import json
import re
from functools import cache
from pathlib import Path

import pytest
import torch
from torch import nn

import visionattn
from visionattn.errors import CheckpointError, UsageError
from visionattn.models.legacy import convert_legacy_state_dict, is_legacy_state_dict
from visionattn.registry import get_model_entry

RECORD = Path(__file__).resolve().parent.parent / "data" / "legacy_state_dict_keys.json.gz"


@cache
def _record() -> dict[str, list[tuple[str, tuple[int, ...]]]]:
    with gzip.open(RECORD, "rt") as f:
        return {name: [(k, tuple(shape)) for k, shape in rows] for name, rows in json.load(f).items()}


def _old_meta(name: str) -> dict[str, torch.Tensor]:
    return {k: torch.empty(shape, device="meta") for k, shape in _record()[name]}


def _meta(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return visionattn.create_model(name, **kwargs)


def test_the_record_covers_the_models_of_the_old_code():
    assert len(_record()) == 65
    new_since = {"skresnet18", "skresnet34", "eca_resnet50d"}  # registered with 9b8d90e
    # the library's own models only: tests register tiny models of their own in the same process
    ours = {n for n in visionattn.list_models()
            if get_model_entry(n).factory.__module__.startswith("visionattn.")}
    # the transformers, BoTNets and non-local ResNets (issue 14), Swin, HaloNets and axial ResNets (issue 15)
    # and Image GPT (issue 16) later still, with names of their own
    ours = {n for n in ours if not n.startswith(("vit_", "botnet", "nonlocal_", "swin_", "halonet", "axial", "igpt"))}
    assert set(_record()) == ours - new_since


@pytest.mark.parametrize("name", sorted(_record()))
def test_converted_keys_and_shapes_are_the_models_in_its_order(name):
    model = _meta(name)
    converted = convert_legacy_state_dict(_old_meta(name))
    got = [(k, tuple(v.shape)) for k, v in converted.items()]
    want = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert set(got) == set(want), (sorted(set(got) - set(want))[:3], sorted(set(want) - set(got))[:3])
    # the old code registered its parameters in the same order: the trainer's optimizer state, which maps by
    # position within its two groups (weight decay on tensors of 2 or more axes), still fits
    assert got == want
    params = dict(model.named_parameters())
    old_shapes = dict(zip(converted, (shape for _, shape in _record()[name])))
    assert [k for k in converted if k in params] == list(params)
    assert all((len(old_shapes[k]) > 1) == (p.dim() > 1) for k, p in params.items())


def test_is_legacy_state_dict():
    assert is_legacy_state_dict(_old_meta("resnet20"))
    assert not is_legacy_state_dict(_meta("resnet20").state_dict())
    assert not is_legacy_state_dict(["head.weight", "stages.0.blocks.0.weight", "stem.0.weight"])  # timm's ViTs
    assert not is_legacy_state_dict([])


def _perturbed(model: nn.Module) -> nn.Module:
    """Every tensor moved off its initial value (BNs start equal; a swap of two would otherwise go unseen)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for key, t in model.state_dict().items():
            if t.is_floating_point():
                t.add_(0.1 * torch.randn(t.shape, generator=g))
                if key.endswith("running_var"):
                    t.abs_().add_(0.5)
    return model.eval()


def _old_named(name: str, model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s tensors under the recorded old names: the record lists the old keys in the old code's
    registration order, paired here by position (the test above checks that the orders agree)."""
    state, old = model.state_dict(), _record()[name]
    assert len(state) == len(old)
    out = {}
    for (key, tensor), (old_key, shape) in zip(state.items(), old):
        assert tensor.numel() == torch.Size(shape).numel(), (key, old_key)
        out[old_key] = tensor.clone().reshape(shape)
    assert [(k, tuple(v.shape)) for k, v in out.items()] == old
    return out


@pytest.mark.parametrize("name", ["resnet20", "sk_resnet20", "se_resnet20", "bam_resnet20", "resnest29"])
def test_an_old_state_dict_loads_strictly_and_gives_the_same_outputs(name):
    torch.manual_seed(0)
    source = _perturbed(visionattn.create_model(name))
    old = _old_named(name, source)
    torch.manual_seed(1)
    target = visionattn.create_model(name).eval()
    target.load_state_dict(convert_legacy_state_dict(old), strict=True)
    x = torch.randn(2, *source.input_size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(target(x), source(x))


def test_cbam_channel_alone_keeps_its_names_when_the_model_keys_are_given():
    # CBAM's channel gate in SE's slot has SE's old keys (attn.fc.fc1) but kept them (se.fc.fc1)
    model = _meta("resnet20", attn="cbam_channel")
    old = dict(zip((k for k, _ in _record()["se_resnet20"]), model.state_dict().values()))
    assert list(convert_legacy_state_dict(old, expected=model.state_dict())) == list(model.state_dict())
    assert "layer1.0.se.fc1.weight" in convert_legacy_state_dict(old)  # without the model: SE's rule


@pytest.mark.bad_input
@pytest.mark.parametrize("key, why", [
    ("conv1.weight", "is not in the old layout"),
    ("stages.stage1.0.branch.2.0.weight", "branch module 2, which holds no parameters"),
    ("stages.stage1.0.branch.0.2.weight", "module 2 of branch module 0"),
    ("stem.convs.2.weight", "stem module 2"),
    ("stages.stage1.0.branch.1.split.paths.0.weight", "not a tensor of the old selective kernel"),
])
def test_a_key_outside_the_old_layout_is_named(key, why):
    state = {**_old_meta("resnet20"), key: torch.empty(1, device="meta")}
    with pytest.raises(CheckpointError, match=re.escape(f"state: key '{key}' ") + ".*" + why) as err:
        convert_legacy_state_dict(state)
    assert isinstance(err.value, UsageError)
