"""Multi-process data-parallel training: two gloo processes under torchrun against one process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.engine_support import HERE, TinyNet, child_env, make_fashion_mnist


def _args(data: Path, run_dir: Path, dump: Path) -> list[str]:
    # a model without BatchNorm: DDP averages gradients exactly, but BatchNorm statistics of two half batches
    # differ from those of one full batch, which would make the comparison with one process approximate only
    return [str(HERE / "engine_support.py"), "train", "--model", "test_tiny", "--data-dir", str(data),
            "--epochs", "2", "--batch-size", "16", "--threads", "1", "--ckpt-every", "5", "--no-progress",
            "--erasing", "0.5", "--lr", "0.3", "--run-dir", str(run_dir),
            "--dump-dir", str(dump)]


@pytest.mark.slow
def test_two_processes_stay_in_sync_and_match_one_process(tmp_path):
    data = make_fashion_mnist(tmp_path / "fm", n_train=96, n_test=30)
    env = child_env(threads=1)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          *_args(data, tmp_path / "run2", tmp_path / "dump2")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-3000:]
    one = subprocess.run([sys.executable, *_args(data, tmp_path / "run1", tmp_path / "dump1")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]

    rank0, rank1 = (load_file(tmp_path / "dump2" / f"rank{r}.safetensors") for r in (0, 1))
    single = load_file(tmp_path / "dump1" / "rank0.safetensors")
    torch.manual_seed(0)  # the trainer's initialisation, to show that the weights did move
    initial = TinyNet().state_dict()
    assert max((rank0[k] - initial[k]).abs().max().item() for k in rank0) > 0.05
    for k in rank0:
        assert torch.equal(rank0[k], rank1[k]), f"replicas differ in {k}"
        # same global batches, same augmentation; only the order of floating-point sums differs
        torch.testing.assert_close(rank0[k], single[k], rtol=1e-4, atol=1e-5, msg=f"1 vs 2 processes: {k}")
    assert torch.equal(rank0["head.weight"], load_file(tmp_path / "run2" / "checkpoints" /
                                                           "step-00000012.safetensors")["head.weight"]) is not False

    log = (tmp_path / "run2" / "log.txt").read_text()
    assert "2 process(es) on cpu" in log and log.count("epoch 2/2") == 1  # rank 0 alone writes the run log
    saved = load_file(tmp_path / "run2" / "model.safetensors")
    assert all(torch.equal(saved[k], rank0[k]) for k in rank0)
    # global metrics: the two processes' halves of each epoch add up to the one-process numbers
    import json

    rows2 = [json.loads(x) for x in (tmp_path / "run2" / "metrics.jsonl").read_text().splitlines()]
    rows1 = [json.loads(x) for x in (tmp_path / "run1" / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(rows1, rows2):
        assert a["train_acc"] == b["train_acc"] and a["test_acc"] == b["test_acc"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)


@pytest.mark.slow
def test_two_processes_with_batchnorm_end_with_identical_replicas(tmp_path):
    """BatchNorm statistics come from each process's half batch; the trainer re-aligns them to rank 0's."""
    data = make_fashion_mnist(tmp_path / "fm", n_train=64, n_test=20)
    args = _args(data, tmp_path / "run", tmp_path / "dump")
    args[args.index("test_tiny")] = "test_tiny_bn"
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          *args], env=child_env(threads=1), capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-3000:]
    rank0, rank1 = (load_file(tmp_path / "dump" / f"rank{r}.safetensors") for r in (0, 1))
    assert any("running_var" in k for k in rank0)
    for k in rank0:
        assert torch.equal(rank0[k], rank1[k]), f"replicas differ in {k}"
