"""Shared pieces of the Image GPT engine tests: a tiny next-pixel run on generated Fashion-MNIST files
(:func:`tests.engine_support.make_fashion_mnist`)."""

from __future__ import annotations

from pathlib import Path

from visionattn.igpt_recipe import NextPixelConfig

# igpt_fashion shrunk to a few thousand parameters, with strided attention (5x faster than dense at n = 784):
# an epoch of 64 images takes a fraction of a second
TINY = {"dim": 16, "depth": 2, "heads": 2}
ATTENTION = "strided"


def tiny_config(data: Path, run_dir: Path, **kw) -> NextPixelConfig:
    """A next-pixel run of the tiny igpt_fashion on ``data``: 2 epochs of 4 steps, checkpoints every 3 steps."""
    base = {"data_dir": str(data), "epochs": 2, "batch_size": 16, "eval_batch_size": 8, "threads": 1,
            "progress": False, "run_dir": str(run_dir), "ckpt_every": 3, "device": "cpu",
            "model_args": dict(TINY), "attention": ATTENTION}
    return NextPixelConfig(**{**base, **kw})


def tiny_argv(data: Path, run_dir: Path, *extra: str) -> list[str]:
    """``visionattn igpt train`` options of :func:`tiny_config`."""
    return ["igpt", "train", "--data-dir", str(data), "--epochs", "2", "--batch-size", "16", "--eval-batch-size", "8",
            "--threads", "1", "--no-progress", "--run-dir", str(run_dir), "--ckpt-every", "3", "--device", "cpu",
            "--attention", ATTENTION,
            *(f"--model-arg={k}={v}" for k, v in TINY.items()), *extra]
