"""Our state dicts against timm's, without timm: the keys and shapes recorded from timm 1.0.31.

``tests/data/timm_state_dict_keys.json.gz`` holds ``{timm_name: [[key, shape], ...]}`` in state-dict order, written
by ``benchmarks/record_timm_layout.py`` (which needs timm). For every pair of ``TIMM_NAMES`` our model has exactly
those keys, shapes and order, so a checkpoint of either loads into the other with ``strict=True``
(``benchmarks/timm_parity.py`` checks the outputs with timm itself). Structure is checked on the ``meta`` device;
only the two small models that load real tensors are built on the CPU.
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
from visionattn.models.zoo import TIMM_NAMES

RECORD = Path(__file__).resolve().parent.parent / "data" / "timm_state_dict_keys.json.gz"


@cache
def _record() -> dict[str, list[tuple[str, tuple[int, ...]]]]:
    raw = json.loads(gzip.decompress(RECORD.read_bytes()))
    return {name: [(key, tuple(shape)) for key, shape in entries] for name, entries in raw.items()}


def _meta(name: str) -> nn.Module:
    with torch.device("meta"):
        return visionattn.create_model(name)


def _layout(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(key, tuple(t.shape)) for key, t in model.state_dict().items()]


def _first_difference(ours: list, theirs: list) -> str:
    for i, (a, b) in enumerate(zip(ours, theirs)):
        if a != b:
            return f"entry {i}: ours {a} vs timm {b}"
    return f"lengths: ours {len(ours)} vs timm {len(theirs)}"


def _meta_state_dict(timm_name: str) -> dict[str, torch.Tensor]:
    return {key: torch.empty(shape, device="meta") for key, shape in _record()[timm_name]}


def test_the_record_covers_exactly_the_timm_names():
    # a pair added to TIMM_NAMES without re-recording (or a stale entry) fails here
    assert len(set(TIMM_NAMES.values())) == len(TIMM_NAMES), "two of our models map to one timm name"
    assert sorted(_record()) == sorted(TIMM_NAMES.values())


@pytest.mark.parametrize("ours, theirs", sorted(TIMM_NAMES.items()))
def test_our_state_dict_has_timms_keys_and_shapes_in_order(ours: str, theirs: str):
    got, want = _layout(_meta(ours)), _record()[theirs]
    assert set(got) == set(want), (f"{ours} vs timm {theirs}: missing {sorted(set(want) - set(got))[:5]}, "
                                   f"unexpected {sorted(set(got) - set(want))[:5]}")
    assert got == want, f"{ours} vs timm {theirs}: same entries, different order at {_first_difference(got, want)}"


@pytest.mark.parametrize("ours, theirs", [("resnet18", "resnet18"), ("skresnet18", "skresnet18")])
def test_a_checkpoint_in_timms_layout_loads_strictly_and_round_trips(ours: str, theirs: str):
    gen = torch.Generator().manual_seed(0)
    checkpoint = {key: (torch.randint(0, 100, shape, generator=gen) if key.endswith("num_batches_tracked")
                        else torch.randn(shape, generator=gen))
                  for key, shape in _record()[theirs]}
    model = visionattn.create_model(ours)
    model.load_state_dict(checkpoint, strict=True)
    back = model.state_dict()
    # ours written out is timm's layout again, every tensor where it was: it loads into timm with strict=True
    assert list(back) == list(checkpoint)
    for key, tensor in checkpoint.items():
        assert torch.equal(back[key], tensor.to(back[key].dtype)), key
    fresh = visionattn.create_model(ours)
    fresh.load_state_dict(back, strict=True)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), back.values()))


@pytest.mark.parametrize("ours, new_layers", [
    ("cbam_resnet50", r"layer\d+\.\d+\.se\..+"),
    ("ge_theta_plus_resnet50", r"layer\d+\.\d+\.se\..+"),
    ("bam_resnet50", r"layer\d+\.attn\..+"),
])
def test_a_timm_resnet50_checkpoint_loads_with_only_the_new_layers_missing(ours: str, new_layers: str):
    model = _meta(ours)
    added = [key for key in model.state_dict() if re.fullmatch(new_layers, key)]
    assert added, f"{ours} has no keys matching {new_layers}"
    # assign=True keeps the meta tensors (no ResNet-50 allocated); the shapes of the matched keys are still checked
    result = model.load_state_dict(_meta_state_dict("resnet50"), strict=False, assign=True)
    assert result.unexpected_keys == []
    # BatchNorm fills a missing num_batches_tracked with 0 itself (old checkpoints lack it), so PyTorch leaves
    # those out of the report; every other tensor of the new layers is listed, and nothing else
    assert sorted(result.missing_keys) == sorted(k for k in added if not k.endswith(".num_batches_tracked"))


def test_a_shape_mismatch_against_the_record_is_an_error():
    # the check above relies on load_state_dict comparing shapes of meta tensors; make sure it does
    checkpoint = _meta_state_dict("resnet50")
    checkpoint["fc.weight"] = torch.empty(10, 2048, device="meta")
    with pytest.raises(RuntimeError, match="size mismatch for fc.weight"):
        _meta("cbam_resnet50").load_state_dict(checkpoint, strict=False, assign=True)
