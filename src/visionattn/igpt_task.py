"""The next-pixel task: training an Image GPT by the trainer that trains classifiers (:mod:`visionattn.tasks`).

Chen et al. 2020, "Generative Pretraining from Pixels", section 2.1: an image is a sequence of palette tokens in
raster order and the model maximises p(x) = prod_i p(x_i | x_<i) (eq. 1), i.e. minimises the mean cross-entropy
of every token given the ones before it. The palette (:class:`~visionattn.models.palette.Palette`: 16 grey levels
by exact 1-D k-means, or k-means colours) is fitted on the run's training images when the run starts, by rank 0,
and broadcast; it is saved in every checkpoint (a resumed run encodes with exactly the same levels), in
``config.json`` and in the weights' metadata (``visionattn igpt sample`` reads it from ``model.safetensors``).

The metric is the test set's bits per dimension: the mean cross-entropy in nats per token / ln 2, **bits per pixel
of the L-level image** (a uniform model scores log2(L), 4.00 for 16 levels; not the 8-bit bits/dim of the
likelihood literature). The rows of ``metrics.jsonl`` hold it as ``train_bpd`` / ``test_bpd`` beside the
cross-entropy in nats (``train_loss`` / ``test_loss``) and the share of pixels whose most likely level is the
right one (``train_acc`` / ``test_acc``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from visionattn import distributed, train_checks
from visionattn.errors import CheckpointError, UsageError
from visionattn.runs import check_run_dir
from visionattn.tasks import Task, count_sums

if TYPE_CHECKING:
    from visionattn.igpt_recipe import NextPixelConfig
    from visionattn.models.palette import Palette

__all__ = ["NextPixelTask", "IGPTRun", "load_run", "encode_images", "token_sums", "evaluate_tokens", "unit",
           "palette_record", "palette_from_record", "LN2"]

LN2 = math.log(2)
RESERVED = ("vocab_size", "seq_len", "image_size")  # model keywords the trainer sets from --levels and the data
_ENCODE_CHUNK = 2048


def unit(levels: int) -> str:
    """The unit of the bits/dim figures: ``bits per pixel of the 16-level image``."""
    return f"bits per pixel of the {levels}-level image"


def palette_record(palette: Palette) -> dict[str, Any]:
    """The palette as plain values (exact: float32 centroids survive the trip through Python floats and JSON)."""
    return {"centroids": palette.centroids.tolist()}


def palette_from_record(record: dict[str, Any]) -> Palette:
    from visionattn.models.palette import Palette

    return Palette.from_state_dict({"centroids": torch.tensor(record["centroids"], dtype=torch.float32)})


def encode_images(palette: Palette, images: torch.Tensor) -> torch.Tensor:
    """The tokens of 8-bit ``images`` (N, C, H, W), in chunks; uint8 (int16 for palettes of over 256 levels)."""
    dtype = torch.uint8 if palette.levels <= 256 else torch.int16
    parts = [palette.encode(part.float() / 255).to(dtype) for part in images.split(_ENCODE_CHUNK)]
    return torch.cat(parts) if parts else torch.zeros(0, images.shape[2] * images.shape[3], dtype=dtype)


def token_sums(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """(cross-entropy sum in nats, correctly predicted tokens, tokens) of ``logits`` (B, L, V) for ``tokens``."""
    loss = F.cross_entropy(logits.flatten(0, 1).float(), tokens.flatten(), reduction="sum")
    return count_sums(loss, (logits.argmax(-1) == tokens).sum(), tokens.numel())


@torch.no_grad()
def evaluate_tokens(model: nn.Module, tokens: torch.Tensor, batch_size: int = 200) -> dict[str, float]:
    """Test figures of ``model`` on ``tokens`` (N, L), in one process: ``bpd`` (bits per dimension), ``nats``
    (mean cross-entropy per token), ``acc`` (share of tokens predicted right), ``tokens``."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total = torch.zeros(3, dtype=torch.float64, device=device)
    for part in tokens.split(batch_size):
        part = part.to(device).long()
        total += token_sums(model(part).float(), part)
    model.train(was_training)
    loss, correct, count = total.tolist()
    return {"bpd": loss / count / LN2, "nats": loss / count, "acc": correct / count, "tokens": int(count)}


class NextPixelTask(Task):
    """Next-pixel prediction (see the module docstring): palette tokens in, the same tokens as targets (the model
    shifts its input right behind a learned start token), cross-entropy, bits per dimension."""

    name = "next-pixel"
    command = "visionattn igpt train"

    # ------------------------------------------------------------------------------------------ the model
    @classmethod
    def model_choices(cls) -> list[str]:
        from visionattn.registry import list_models

        return list_models("igpt")

    @classmethod
    def check_model(cls, cfg: NextPixelConfig) -> None:
        from visionattn.registry import get_model_entry

        family = get_model_entry(cfg.model).family
        if family != "igpt":
            raise UsageError(f"--model: {cfg.model!r} is a {family} model, not an Image GPT; needed one of "
                             f"{', '.join(cls.model_choices())} (family igpt)")

    @classmethod
    def check_keywords(cls, cfg: NextPixelConfig) -> None:
        train_checks._check_keywords(cfg, RESERVED, why="the palette's levels and the image size",
                                     instead="--levels and the data")

    @classmethod
    def build_model(cls, cfg: NextPixelConfig, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
        """``cfg.model`` over ``cfg.levels`` tokens for (C, H, W) images: vocab_size, seq_len = H * W and
        image_size = (H, W) (so the strided pattern's stride is the row length) come from the data."""
        from visionattn.registry import create_model

        channels, height, width = input_shape
        if channels == 1 and cfg.levels > 256:
            raise UsageError(f"--levels: got {cfg.levels} for grey images, which have at most 256 values; needed "
                             "2 to 256 (16 for 4-bit grey images)")
        cls.check_keywords(cfg)
        kwargs = {**cfg.model_args, "vocab_size": cfg.levels, "seq_len": height * width, "image_size": (height, width)}
        if cfg.attention is not None:
            kwargs["attention"] = cfg.attention
        try:
            return create_model(cfg.model, **kwargs)
        except (TypeError, ValueError) as err:  # the factory's own checks (UsageError is a ValueError)
            given = f" with {', '.join(f'{k}={v!r}' for k, v in cfg.model_args.items())}" if cfg.model_args else ""
            argument = "--model-arg" if cfg.model_args else "--model"
            raise UsageError(f"{argument}: model {cfg.model!r}{given} cannot be built for {height}x{width} images "
                             f"at {cfg.levels} levels: {err}") from None

    @classmethod
    def headline(cls, result: dict[str, Any]) -> str:
        return f"test {result['test_bpd']:.4f} {unit(result['levels'])}"

    # -------------------------------------------------------------------------------------------- the run
    def prepare(self, state: dict[str, Any] | None) -> None:
        """The palette: the checkpoint's when resuming, else k-means on the training images; then the tokens."""
        from visionattn.models.palette import Palette

        tr, cfg = self.trainer, self.trainer.cfg
        saved = state.get("palette") if state is not None else None
        resumed = saved is not None
        if saved is None:
            record = None
            if tr.info.is_main:
                record = palette_record(Palette.fit(tr.data.train.images.float() / 255, cfg.levels, seed=cfg.seed))
            saved = distributed.broadcast_object(record)  # one palette for every process
        self.palette = palette_from_record(saved)
        kind = "grey levels by exact 1-D k-means" if self.palette.channels == 1 else "colours by k-means on RGB"
        levels = [round(v, 4) for v in self.palette.centroids[:, 0].tolist()] if self.palette.channels == 1 else ""
        tr.log.info(f"palette: {self.palette.levels} {kind} of the {len(tr.data.train)} training images {levels}"
                    + (" (saved in the checkpoint resumed from)" if resumed else ""))
        self.train_tokens = encode_images(self.palette, tr.data.train.images).to(tr.info.device)
        self.test_tokens = encode_images(self.palette, tr.data.test.images).to(tr.info.device)

    def record(self) -> dict[str, Any]:
        return {"palette": palette_record(self.palette)}

    def metadata(self) -> dict[str, str]:
        return {"task": self.name, "palette": json.dumps(palette_record(self.palette))}

    def batch_loss(self, index: torch.Tensor, params: Any) -> tuple[torch.Tensor, torch.Tensor]:
        tr = self.trainer
        tokens = self.train_tokens[index.to(tr.info.device)].long()
        logits = tr._forward(tr.net, tokens)
        loss = F.cross_entropy(logits.flatten(0, 1), tokens.flatten())
        n = tokens.numel()
        return loss, count_sums(loss.detach().double() * n, (logits.argmax(-1) == tokens).sum(), n)

    def eval_sums(self, index: torch.Tensor) -> torch.Tensor:
        tr = self.trainer
        tokens = self.test_tokens[index.to(tr.info.device)].long()
        return token_sums(tr._forward(tr.model, tokens), tokens)

    def metrics(self, train_loss: float, train_acc: float, test_loss: float, test_acc: float) -> dict[str, float]:
        return {"train_loss": train_loss, "train_acc": train_acc, "train_bpd": train_loss / LN2,
                "test_loss": test_loss, "test_acc": test_acc, "test_bpd": test_loss / LN2}

    def describe(self, row: dict[str, Any]) -> str:
        return (f"train {row['train_bpd']:.4f}, test {row['test_bpd']:.4f} {unit(self.trainer.cfg.levels)} "
                f"(test pixels predicted right {100 * row['test_acc']:.2f}%)")

    def postfix(self, row: dict[str, Any]) -> dict[str, str]:
        return {"test_bpd": f"{row['test_bpd']:.4f}"}

    def summary(self, history: list[dict[str, Any]]) -> dict[str, Any]:
        bpd = [row["test_bpd"] for row in history]
        return {"test_bpd": bpd[-1] if bpd else float("nan"), "best_test_bpd": min(bpd, default=float("nan")),
                "test_acc": history[-1]["test_acc"] if history else float("nan"),
                "levels": self.trainer.cfg.levels, "unit": unit(self.trainer.cfg.levels)}


# -------------------------------------------------------------------------------------- a finished run, reloaded
@dataclass
class IGPTRun:
    """A finished ``visionattn igpt train`` run: its config, final model (eval mode, CPU), palette and images'
    (C, H, W)."""

    folder: Path
    cfg: NextPixelConfig
    model: nn.Module
    palette: Palette
    image_shape: tuple[int, int, int]


def load_run(run_dir: str | Path, argument: str = "--checkpoint") -> IGPTRun:
    """Reload a finished next-pixel run from its directory: ``config.json`` and ``model.safetensors`` (weights
    and palette; nothing pickled is read). A missing directory, another task's run or an unfinished run (no
    final weights yet) is a :class:`UsageError` naming ``argument``."""
    from visionattn.checkpoint import load_weights
    from visionattn.igpt_recipe import NextPixelConfig

    folder = Path(run_dir)
    check_run_dir(folder, argument, NextPixelTask.name)
    config = json.loads((folder / "config.json").read_text())  # saved_task read it
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise UsageError(f"{argument}: {folder} has no final weights ({weights.name}): the run is unfinished; "
                         f"finish it with `visionattn igpt train --resume {folder}`")
    try:
        names = {f.name for f in fields(NextPixelConfig)}
        cfg = NextPixelConfig(**{k: v for k, v in config["config"].items() if k in names})
        data = config["data"]
        shape = (int(data["in_chans"]), *map(int, data["image_size"]))
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        raise CheckpointError(f"{folder / 'config.json'}: unreadable run configuration ({err})") from None
    model = NextPixelTask.build_model(cfg, shape, int(data.get("num_classes", 0)))
    meta = load_weights(weights, model, cfg.model)
    try:
        palette = palette_from_record(json.loads(meta["palette"]))
    except (KeyError, ValueError, TypeError) as err:
        raise CheckpointError(f"{weights}: no readable palette in its metadata ({err}); needed the final weights "
                              "of `visionattn igpt train`") from None
    return IGPTRun(folder, cfg, model.eval(), palette, shape)
