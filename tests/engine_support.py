"""Shared pieces of the engine tests: tiny registered models, generated Fashion-MNIST files, a CLI runner.

Run as a script (``python tests/engine_support.py train ...``, also under ``torchrun``) it registers the tiny
models and runs ``visionattn train`` with the given options; ``--dump-dir D`` additionally writes each process's
final weights to ``D/rank<R>.safetensors`` so a test can compare the replicas.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


class TinyNet(nn.Module):
    """Two convolutions and a linear classifier; optional BatchNorm, dropout and a per-call delay.

    The delay (``sleep_ms``) stretches a run so a test can kill it mid-epoch reliably.

    Shape:
        - Input: (B, in_chans, H, W)
        - Output: (B, num_classes)
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 1, norm: bool = False, dropout: float = 0.0,
                 sleep_ms: float = 0.0) -> None:
        super().__init__()
        norm_layer = nn.BatchNorm2d if norm else nn.Identity
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 8, 3, padding=1), norm_layer(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), norm_layer(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(16, num_classes)
        self.sleep_ms = sleep_ms

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.sleep_ms:
            time.sleep(self.sleep_ms / 1000)
        return self.head(self.drop(self.features(x)))


class TinyDynamicNet(TinyNet):
    """TinyNet whose second convolution is a DY-CNN dynamic convolution (so the trainer must anneal it).

    Shape:
        - Input: (B, in_chans, H, W)
        - Output: (B, num_classes)
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 1) -> None:
        super().__init__(num_classes, in_chans)
        from visionattn.layers.dynamic_conv import DynamicConv2d

        self.features[4] = DynamicConv2d(8, 16, kernel_size=3)


TINY_MODELS = {
    "test_tiny": {},
    "test_tiny_bn": {"norm": True, "dropout": 0.25},
    "test_tiny_slow": {"norm": True, "dropout": 0.25, "sleep_ms": 60.0},
}


def register_tiny_models() -> None:
    from visionattn.registry import MODELS, register_model

    for name, defaults in TINY_MODELS.items():
        if name not in MODELS:
            register_model(name, family="test", paper="test fixture", description="tiny test network",
                           defaults=defaults)(TinyNet)
    if "test_tiny_dynamic" not in MODELS:
        register_model("test_tiny_dynamic", family="test", paper="test fixture",
                       description="tiny test network with a dynamic convolution")(TinyDynamicNet)


def make_fashion_mnist(folder: Path, n_train: int = 256, n_test: int = 64, seed: int = 0) -> Path:
    """Write four IDX .gz files shaped like Fashion-MNIST's, with images a tiny net can learn quickly.

    Class ``k`` is noise plus a square of brightness ``60 + 19 k`` somewhere in the image, so global pooling
    (as in TinyNet) can tell the classes apart.
    """
    from visionattn.data import write_idx

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = rng.integers(0, 40, size=(n, 28, 28), dtype=np.uint8)
        corners = rng.integers(2, 14, size=(n, 2))
        for i, (label, (y, x)) in enumerate(zip(labels, corners)):
            images[i, y:y + 12, x:x + 12] = 60 + 19 * int(label)
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return folder


def make_digit_folder(root: Path, classes: tuple[int, ...] = (0, 1, 2), per_class: int = 6, split: bool = True,
                      rgb: bool = False) -> Path:
    """scikit-learn's 8x8 digits as PNG files in the folder layout (train/val or one root)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for label in classes:
        members = np.flatnonzero(digits.target == label)[:per_class]
        for i, index in enumerate(members):
            part = ("train" if i < per_class - 2 else "val") if split else ""
            folder = root / part / f"digit{label}"
            folder.mkdir(parents=True, exist_ok=True)
            pixels = (digits.images[index] * 255 / 16).astype(np.uint8)
            img = Image.fromarray(pixels)  # 2-D uint8: mode "L"
            (img.convert("RGB") if rgb else img).save(folder / f"{i}.png")
    return root


def child_env(threads: int = 1) -> dict[str, str]:
    """Environment for a training subprocess: the source tree importable, few threads, no progress bars' TTY."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = str(threads)
    return env


def _main(argv: list[str]) -> int:
    register_tiny_models()
    dump = None
    if "--dump-dir" in argv:
        i = argv.index("--dump-dir")
        dump, argv = Path(argv[i + 1]), argv[:i] + argv[i + 2:]
    from visionattn.cli import build_parser, main

    if dump is None:
        return main(argv)
    from safetensors.torch import save_file

    from visionattn.recipe import config_from_args
    from visionattn.train import train

    result = train(config_from_args(build_parser().parse_args(argv)))
    rank = int(os.environ.get("RANK", "0"))
    dump.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in result.model.state_dict().items()}, str(dump / f"rank{rank}.safetensors"))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
