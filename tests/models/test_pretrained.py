"""Local pretrained weights: files in the ecosystem's layout load, adapt (classifier, input channels) and fail
clearly when they are of another architecture.

The "timm checkpoints" here are state dicts of our own models, which have timm's names and shapes for every
architecture of ``TIMM_NAMES`` (tests/models/test_timm_layout.py checks that against a record of timm's).
"""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import save_file

import visionattn
from visionattn.errors import CheckpointError, UsageError
from visionattn.models.pretrained import IMAGENET_MEAN, adapt_input_conv, check_pretrained, load_pretrained


def _source(name: str = "resnet18", seed: int = 0, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = visionattn.create_model(name, **kwargs).eval()
    with torch.no_grad():  # statistics off their defaults, so that a load that skipped them would show
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1), m.running_var.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    model = _source()
    path = tmp_path_factory.mktemp("weights") / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model, path


def _same_tensors(a: dict, b: dict, skip: tuple[str, ...] = ()) -> None:
    assert set(a) == set(b)
    for k in a:
        if not k.startswith(skip):
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_a_safetensors_file_loads_and_gives_the_same_outputs(resnet18_file):
    source, path = resnet18_file
    model = visionattn.create_model("resnet18", pretrained_file=path).eval()
    _same_tensors(model.state_dict(), source.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), source(x), rtol=0, atol=0)
    assert model.pretrained_report.notes() == [f"pretrained weights from {path}: {len(source.state_dict())} "
                                                "tensors loaded"]


def test_a_training_checkpoint_with_wrapper_and_ddp_prefix_loads(tmp_path):
    source = _source()
    path = tmp_path / "checkpoint.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    model = visionattn.create_model("resnet18", pretrained_file=path)
    _same_tensors(model.state_dict(), source.state_dict())


def test_another_class_count_replaces_the_classifier(resnet18_file):
    source, path = resnet18_file
    torch.manual_seed(5)
    fresh = visionattn.create_model("resnet18", num_classes=10)
    torch.manual_seed(5)
    model = visionattn.create_model("resnet18", num_classes=10, pretrained_file=path)
    assert model.pretrained_report.classifier_reset
    _same_tensors(model.state_dict(), {**source.state_dict(), "fc.weight": fresh.fc.weight,
                                       "fc.bias": fresh.fc.bias}, skip=("fc.",))
    torch.testing.assert_close(model.fc.weight, fresh.fc.weight)  # the new classifier's own initialisation
    assert model.fc.out_features == 10 and model.pretrained_cfg.num_classes == 10


def test_one_channel_sums_the_rgb_filters(resnet18_file):
    """A grey image x through the adapted stem is the RGB network's output for (x, x, x)."""
    source, path = resnet18_file
    model = visionattn.create_model("resnet18", in_chans=1, pretrained_file=path).eval()
    torch.testing.assert_close(model.conv1.weight, source.conv1.weight.sum(dim=1, keepdim=True))
    assert model.pretrained_report.adapted_in_chans == (3, 1)
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), source(x.expand(-1, 3, -1, -1)), atol=1e-4, rtol=1e-4)


def test_more_channels_repeat_the_filters_scaled():
    w = torch.randn(4, 3, 3, 3)
    five = adapt_input_conv(w, 5)
    torch.testing.assert_close(five, torch.cat([w, w[:, :2]], dim=1) * 3 / 5)
    torch.testing.assert_close(adapt_input_conv(w, 3), w)


def test_a_plain_resnet_file_leaves_only_the_new_attention_layers_at_init(resnet18_file):
    """A researcher's case: CBAM in a pretrained ResNet. Every backbone tensor comes from the file; the report
    names exactly the CBAM tensors."""
    source, path = resnet18_file
    model = visionattn.create_model("resnet18", attn="cbam", pretrained_file=path)
    report = model.pretrained_report
    state = model.state_dict()
    assert report.new_layers == [k for k in state if ".se." in k] and report.new_layers
    _same_tensors({k: v for k, v in state.items() if ".se." not in k}, source.state_dict())
    assert "start from their initialisation" in report.notes()[-1]
    with pytest.raises(CheckpointError, match=r"not in the file \(first: layer1\.0\.se\."):
        load_pretrained(visionattn.create_model("resnet18", attn="cbam"), path, allow_new_layers=False)


def test_check_pretrained_on_the_meta_device_changes_nothing(resnet18_file):
    _, path = resnet18_file
    with torch.device("meta"):
        model = visionattn.create_model("resnet18", num_classes=3, in_chans=1)
    report = check_pretrained(model, path)
    assert report.classifier_reset and report.adapted_in_chans == (3, 1)
    assert model.conv1.weight.is_meta


def test_features_only_takes_the_same_file(resnet18_file):
    source, path = resnet18_file
    net = visionattn.create_model("resnet18", pretrained_file=path, features_only=True).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(net(x)[-1], source.forward_features(x), rtol=0, atol=0)


def test_pretrained_cfg_names_the_normalisation():
    cfg = visionattn.create_model("resnet50d", num_classes=0).pretrained_cfg
    assert (cfg.mean, cfg.architecture, cfg.timm_name, cfg.first_conv) == (
        IMAGENET_MEAN, "resnet50d", "resnet50d", "conv1.0")
    mean, std = cfg.normalization(1)
    assert mean == pytest.approx([sum(IMAGENET_MEAN) / 3]) and len(std) == 1
    small = visionattn.create_model("resnet20").pretrained_cfg
    assert small.input_size == (1, 28, 28) and small.crop_pct == 1.0 and small.timm_name is None


@pytest.mark.bad_input
def test_a_file_of_another_architecture_names_the_first_keys(resnet18_file):
    _, path = resnet18_file
    with pytest.raises(CheckpointError, match=r"does not fit the architecture 'resnet34'.*first: layer1\.2\."):
        visionattn.create_model("resnet34", pretrained_file=path)
    with pytest.raises(CheckpointError, match=r"does not fit the architecture 'skresnet18'.*layer1\.0\.conv1\.paths"):
        visionattn.create_model("skresnet18", pretrained_file=path)
    with pytest.raises(CheckpointError, match=r"shapes differ: layer1\.0\.conv1\.weight file \(64, 64, 3, 3\)"):
        visionattn.create_model("resnet26", pretrained_file=path)


class _Payload:
    def __reduce__(self):  # what a malicious pickle does: call a function on load
        return (print, ("code ran",))


@pytest.mark.bad_input
@pytest.mark.parametrize("make,match", [
    (lambda p: None, "does not exist"),
    (lambda p: p.write_bytes(b"not a checkpoint"), "cannot be read as PyTorch weights with weights_only=True"),
    (lambda p: p.write_bytes(pickle.dumps({"w": _Payload()}, protocol=2)), "never pickled code"),
    (lambda p: torch.save(torch.zeros(3), p), "holds a Tensor, needed a state dict"),
    (lambda p: torch.save({"conv1.weight": torch.zeros(1), "step": 3}, p), r"entries \['step'\] are not tensors"),
])
def test_unusable_files_are_clear_errors(tmp_path, capsys, make, match):
    path = tmp_path / "weights.pth"
    make(path)
    with pytest.raises(CheckpointError, match=match):
        visionattn.create_model("resnet18", pretrained_file=path)
    assert "code ran" not in capsys.readouterr().out


@pytest.mark.bad_input
def test_a_broken_safetensors_file_is_a_clear_error(tmp_path):
    path = tmp_path / "weights.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        visionattn.create_model("resnet18", pretrained_file=path)


@pytest.mark.bad_input
@pytest.mark.parametrize("kwargs,match", [
    ({"features_only": "yes"}, "features_only must be True or False, got 'yes'"),
    ({"out_indices": (1, 2)}, "out_indices selects feature outputs: it needs features_only=True"),
])
def test_bad_create_model_options(kwargs, match):
    with pytest.raises(UsageError, match=match):
        visionattn.create_model("resnet20", **kwargs)


def test_a_file_in_the_old_layout_is_converted(tmp_path):
    """Weights that `visionattn train` wrote before the ecosystem names (stem./stages./head.) still load."""
    import gzip
    import json
    from pathlib import Path

    record = json.loads(gzip.decompress((Path(__file__).parents[1] / "data" /
                                         "legacy_state_dict_keys.json.gz").read_bytes()))["se_resnet20"]
    source = _source("se_resnet20")
    old = {key: t for (key, shape), t in zip(record, source.state_dict().values(), strict=True)}
    assert all(list(old[k].shape) == shape for k, shape in record)  # the old names pair with today's order
    path = tmp_path / "old.safetensors"
    save_file({k: v.contiguous() for k, v in old.items()}, str(path))
    model = visionattn.create_model("se_resnet20", pretrained_file=path)
    assert model.pretrained_report.converted and "converted" in model.pretrained_report.notes()[1]
    _same_tensors(model.state_dict(), source.state_dict())
