"""Checkpoints: atomic writes, weights-only loading, and clear errors for bad files."""

from __future__ import annotations

import json
import os
import pickle
import random

import numpy as np
import pytest
import torch
from torch import nn

import visionattn
from tests.engine_support import TinyNet
from visionattn import checkpoint as ckpt
from visionattn.checkpoint import CheckpointDir, CheckpointError
from visionattn.layers.selective_kernel import SelectiveKernel


def _model(seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    return TinyNet(**kw)


def _equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    path = ckpt.atomic_write(tmp_path / "f.bin", b"old content")

    def crash(src, dst):
        raise KeyboardInterrupt("killed between write and rename")

    monkeypatch.setattr(ckpt.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        ckpt.atomic_write(path, b"new content that never lands")
    assert path.read_bytes() == b"old content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]  # no temporary file left


def test_weights_round_trip_with_metadata(tmp_path):
    a, b = _model(0, norm=True), _model(1, norm=True)
    assert not _equal(a, b)
    ckpt.save_weights(tmp_path / "w.safetensors", a, {"model": "tiny", "step": 7})
    meta = ckpt.load_weights(tmp_path / "w.safetensors", b, model_name="tiny")
    assert _equal(a, b) and meta["step"] == "7"
    assert (tmp_path / "w.safetensors").read_bytes()[8:9] == b"{"  # a safetensors header, not a pickle


def test_truncated_weights_name_the_file(tmp_path):
    path = ckpt.save_weights(tmp_path / "w.safetensors", _model(), {"model": "tiny"})
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"w\.safetensors: not a readable safetensors file.*truncated"):
        ckpt.load_weights(path, _model())


def test_weights_of_another_model_or_shape(tmp_path):
    path = ckpt.save_weights(tmp_path / "w.safetensors", _model(norm=True), {"model": "tiny_bn"})
    with pytest.raises(CheckpointError, match="written for model 'tiny_bn', this run builds 'resnet20'"):
        ckpt.load_weights(path, _model(norm=True), model_name="resnet20")
    with pytest.raises(CheckpointError, match=r"tensors the model does not have.*features\.1\."):
        ckpt.load_weights(path, _model(norm=False))
    path = ckpt.save_weights(tmp_path / "w10.safetensors", _model(num_classes=10), {"model": "tiny"})
    with pytest.raises(CheckpointError, match=r"w10.safetensors.*head\.weight: file \(10, 16\) vs model \(7, 16\)"):
        ckpt.load_weights(path, _model(num_classes=7), model_name="tiny")


def test_state_is_loaded_weights_only(tmp_path):
    state = {"epoch": 2, "opt": {"lr": 0.1, "buf": torch.arange(3.0)}, "rng": ckpt.capture_rng(), "h": [{"a": 1}]}
    path = ckpt.save_state(tmp_path / "s.pt", state)
    back = ckpt.load_state(path)
    assert back["epoch"] == 2 and torch.equal(back["opt"]["buf"], torch.arange(3.0))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"s\.pt: not a readable trainer state"):
        ckpt.load_state(path)


class Payload:  # a pickle that would run code on load; weights_only refuses it
    def __reduce__(self):
        return (os.getcwd, ())


def test_state_with_arbitrary_objects_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"x": Payload()}, path, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="evil.pt: not a readable trainer state"):
        ckpt.load_state(path)


def test_rng_capture_and_restore():
    saved = ckpt.capture_rng()
    first = (torch.rand(3), np.random.rand(3), random.random())
    ckpt.restore_rng(saved)
    second = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], second[0]) and np.array_equal(first[1], second[1]) and first[2] == second[2]


def test_checkpoint_dir_follows_the_pointer_and_prunes(tmp_path):
    folder = CheckpointDir(tmp_path / "ck", keep=2)
    models = [_model(seed) for seed in range(3)]
    for step, model in enumerate(models, start=1):
        folder.save(step * 10, model, {"epoch": step}, {"model": "tiny"})
    names = sorted(p.name for p in (tmp_path / "ck").iterdir())
    assert names == ["latest.json", "step-00000020.safetensors", "step-00000020.state.pt",
                     "step-00000030.safetensors", "step-00000030.state.pt"]
    target = _model(9)
    state = folder.load(target, "tiny")
    assert state["epoch"] == 3 and state["step"] == 30 and _equal(target, models[2])


def test_a_kill_before_the_pointer_resumes_the_previous_checkpoint(tmp_path):
    folder = CheckpointDir(tmp_path / "ck")
    old = _model(0)
    folder.save(5, old, {"epoch": 0}, {"model": "tiny"})
    # the next checkpoint's weights are complete, its state half-written, the pointer not yet moved
    ckpt.save_weights(tmp_path / "ck" / "step-00000006.safetensors", _model(1), {"model": "tiny", "step": 6})
    (tmp_path / "ck" / ".step-00000006.state.pt.abc.tmp").write_bytes(b"half")
    target = _model(2)
    assert folder.load(target, "tiny")["step"] == 5 and _equal(target, old)


def test_mismatched_checkpoint_files_are_reported(tmp_path):
    folder = CheckpointDir(tmp_path / "ck", keep=3)
    folder.save(1, _model(0), {}, {"model": "tiny"})
    folder.save(2, _model(1), {}, {"model": "tiny"})
    pointer = json.loads((tmp_path / "ck" / "latest.json").read_text())
    pointer["weights"] = "step-00000001.safetensors"
    (tmp_path / "ck" / "latest.json").write_text(json.dumps(pointer))
    with pytest.raises(CheckpointError, match="do not belong to step 2"):
        folder.load(_model(), "tiny")
    (tmp_path / "ck" / "latest.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="latest.json: unreadable checkpoint pointer"):
        folder.load(_model(), "tiny")
    with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
        CheckpointDir(tmp_path / "none").load(_model())


def test_latest_step_follows_the_pointer(tmp_path):
    folder = CheckpointDir(tmp_path / "ck")
    assert folder.latest_step() is None
    folder.save(7, _model(), {}, {"model": "tiny"})
    assert folder.latest_step() == 7
    (tmp_path / "ck" / "latest.json").write_text("{broken")
    assert folder.latest_step() is None


@pytest.mark.bad_input
@pytest.mark.parametrize("keep", [0, -1, 1.5, True])
def test_keep_must_be_a_positive_whole_number(tmp_path, keep):
    with pytest.raises(ValueError, match=f"keep: got {keep!r}, needed a whole number >= 1"):
        CheckpointDir(tmp_path / "ck", keep=keep)


# ----------------------------------------------------------------------- weights written before 9b8d90e
def _legacy_record() -> dict:
    from tests.models.test_legacy import _record

    return _record()


def _legacy_file(path, name: str, source: nn.Module | None = None, **metadata) -> tuple[nn.Module, object]:
    """A model (``source``, or a new one with every tensor moved off its initial value) and its weights saved
    under the module names of the code before 9b8d90e (the record's)."""
    from safetensors.torch import save_file

    from tests.models.test_legacy import _old_named, _perturbed

    if source is None:
        torch.manual_seed(0)
        source = _perturbed(visionattn.create_model(name))
    save_file(_old_named(name, source), str(path), metadata={"model": name, **metadata})
    return source, path


def test_weights_in_the_old_layout_are_converted_on_load(tmp_path):
    source, path = _legacy_file(tmp_path / "old.safetensors", "sk_resnet20", step="4")
    target = visionattn.create_model("sk_resnet20")
    meta = ckpt.load_weights(path, target, "sk_resnet20")
    assert _equal(target, source) and meta["step"] == "4"
    sk_layers = sum(isinstance(m, SelectiveKernel) for m in target.modules())
    assert sk_layers == 9  # fuse (d, C) and select (M C, d) of each became 1x1 convolutions
    assert meta[ckpt.CONVERTED] == (
        f"old.safetensors: weights in the module layout before 9b8d90e (stem., stages., head.); converted on "
        f"load to today's names (conv1, layer1.., fc): {len(source.state_dict())} tensors renamed, "
        f"{2 * sk_layers} reshaped")
    ckpt.save_weights(tmp_path / "new.safetensors", target, {"model": "sk_resnet20"})  # written in today's layout
    assert ckpt.CONVERTED not in ckpt.load_weights(tmp_path / "new.safetensors", visionattn.create_model("sk_resnet20"))


def test_old_weights_for_another_model_are_still_refused(tmp_path):
    _, path = _legacy_file(tmp_path / "old.safetensors", "resnet20")
    with pytest.raises(CheckpointError, match="written for model 'resnet20', this run builds 'se_resnet20'"):
        ckpt.load_weights(path, visionattn.create_model("se_resnet20"), "se_resnet20")
    with pytest.raises(CheckpointError, match=r"old\.safetensors does not fit ResNet: .*missing.*layer1\.0\.se\."):
        ckpt.load_weights(path, visionattn.create_model("se_resnet20"))


def test_a_key_outside_the_old_layout_names_the_file(tmp_path):
    from safetensors.torch import save_file

    state = {"stages.stage1.0.branch.0.0.weight": torch.zeros(1), "stray.weight": torch.zeros(1)}
    save_file(state, str(tmp_path / "w.safetensors"))
    with pytest.raises(CheckpointError, match=r"w\.safetensors: state: key 'stray\.weight' is not in the old layout"):
        ckpt.load_weights(tmp_path / "w.safetensors", visionattn.create_model("resnet20"))


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_resuming_an_old_checkpoint_converts_weights_and_optimizer_state(tmp_path, optimizer):
    """An old run's checkpoint: weights under the old names, SK's fuse/select momenta of the old (d, C) shape."""
    def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
        params = list(model.parameters())
        if optimizer == "sgd":
            return torch.optim.SGD(params, lr=0.1, momentum=0.9)
        return torch.optim.AdamW(params, lr=0.01)

    def train_step(model: nn.Module, opt: torch.optim.Optimizer) -> None:
        x = torch.randn(4, *model.input_size, generator=torch.Generator().manual_seed(3))
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()

    from tests.models.test_legacy import _perturbed

    torch.manual_seed(0)
    model = _perturbed(visionattn.create_model("sk_resnet20")).train()
    opt = make_optimizer(model)
    train_step(model, opt)  # the old run, up to its checkpoint
    folder = CheckpointDir(tmp_path / "ck")
    folder.save(5, _model(), {"epoch": 1}, {"model": "sk_resnet20"})  # then both files replaced by old ones
    _legacy_file(tmp_path / "ck" / "step-00000005.safetensors", "sk_resnet20", model, step="5")
    saved = opt.state_dict()
    old_shapes = dict(zip(model.state_dict(), (shape for _, shape in _legacy_record()["sk_resnet20"])))
    old_state = {i: {k: (v.reshape(old_shapes[name]) if k != "step" else v) for k, v in saved["state"][i].items()}
                 for i, (name, _) in enumerate(model.named_parameters())}
    assert sum(v.shape != saved["state"][i][k].shape for i, s in old_state.items() for k, v in s.items()) > 0
    state = {"epoch": 1, "optimizer": {**saved, "state": old_state}}
    ckpt.save_state(tmp_path / "ck" / "step-00000005.state.pt", {**state, "step": 5})

    target = visionattn.create_model("sk_resnet20").train()
    resumed = folder.load(target, "sk_resnet20")
    assert "converted on load" in resumed[ckpt.CONVERTED] and resumed["epoch"] == 1 and _equal(target, model)
    target_opt = make_optimizer(target)
    target_opt.load_state_dict(resumed["optimizer"])
    moments = 1 if optimizer == "sgd" else 2  # momentum_buffer; exp_avg and exp_avg_sq (Adam's step is a scalar)
    assert ckpt.fit_optimizer_state(target_opt) == 2 * 9 * moments
    assert ckpt.fit_optimizer_state(target_opt) == 0
    train_step(target, target_opt)
    train_step(model, opt)  # the old run's next step, in the optimizer that never left memory
    assert _equal(target, model)
