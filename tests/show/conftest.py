"""What the show tests share: a stand-in Fashion-MNIST folder and a finished tiny classification run on it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.engine_support import make_fashion_mnist, register_tiny_models
from visionattn.recipe import TrainConfig
from visionattn.train import train

register_tiny_models()


def tiny_run(data: Path, run_dir: Path) -> Path:
    """A finished classification run of test_tiny on ``data`` (2 steps) in ``run_dir``."""
    train(TrainConfig(model="test_tiny", data_dir=str(data), epochs=1, max_steps=2, batch_size=32, threads=1,
                      progress=False, run_dir=str(run_dir), device="cpu"))
    return run_dir


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory) -> Path:
    return make_fashion_mnist(tmp_path_factory.mktemp("fmnist"), n_train=64, n_test=40)


@pytest.fixture(scope="module")
def run(fmnist, tmp_path_factory) -> Path:
    return tiny_run(fmnist, tmp_path_factory.mktemp("runs") / "tiny")
