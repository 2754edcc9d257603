"""The trainer behind ``visionattn train`` and ``visionattn igpt train``: data-parallel, checkpointed and exactly
resumable, for any task (:mod:`visionattn.tasks`: classification; next-pixel prediction, :mod:`visionattn.igpt_task`).

One process or many under ``torchrun`` run the same code. Each epoch the training set is ordered by PyTorch's
``DistributedSampler`` (seeded by seed + epoch) and every process takes its share of each global batch; the
augmentation of every image is fixed by (seed, epoch, image), see :mod:`visionattn.data.augment`. A checkpoint
holds the weights, the optimizer and schedule, the global RNG states and the position in the epoch, so a run
killed at any moment and resumed computes exactly what the uninterrupted run computes (on CPU with the same
thread count; GPU kernels may not be bitwise deterministic). What the run learns is its config's task: the
model, the inputs and targets, the loss and the metrics; the loop, the checkpoints and the run directory are one.
A run may end before its last epoch after ``max_steps`` steps (the schedule spans them).

A run may start from a local weights file (``--pretrained``), loaded once the model is built with the seed
(:func:`visionattn.models.pretrained.load_pretrained`; its report goes to the log); the images are then
normalised as those weights were trained (:func:`~visionattn.train_checks.pretrained_normalization`), not with
the data's statistics. The normalisation is saved in every checkpoint and in the weights files' metadata
(``mean``, ``std``): a resumed run normalises exactly as before, a run fine-tuned from this one as this one did.

Before any work, :func:`preflight` checks the recipe, the device, the model, the pretrained file, the data
source and the run directory; the directory itself is created only once the data are loaded and the model is
built, so a run that cannot start leaves nothing behind. A loss that stops being finite ends the run with
:class:`TrainingDiverged` (its last good checkpoint kept); Ctrl-C ends it with :class:`TrainingInterrupted`,
whose message is the resume command.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from visionattn import distributed, train_checks
from visionattn.checkpoint import (
    CONVERTED,
    CheckpointDir,
    capture_rng,
    fit_optimizer_state,
    load_weights,
    restore_rng,
    save_weights,
)
from visionattn.data import DataSplits, load_dataset
from visionattn.errors import UsageError
from visionattn.formats import autocast, to_channels_last
from visionattn.recipe import TrainConfig, build_optimizer, build_scheduler, config_from_args, total_steps
from visionattn.runlog import RunLog, default_run_dir, read_metrics
from visionattn.tasks import task_for
from visionattn.train_checks import check_run_task, clear_run_dir, finished_result, preflight, saved_config
from visionattn.train_guards import (
    CHECK_EVERY,
    DivergenceWatch,
    TrainingDiverged,
    TrainingInterrupted,
    diverged,
    interrupted,
)
from visionattn.weight_decay import STATE_KEY, no_weight_decay_names, resumed_no_decay

__all__ = ["train", "run_cli", "preflight", "TrainResult", "Trainer", "TrainingDiverged", "TrainingInterrupted"]


@dataclass
class TrainResult:
    """What a finished run hands back: the trained model, its per-epoch history and where it was written.

    ``test_acc`` is the last epoch's test accuracy (next-pixel runs: the share of pixels predicted right);
    ``extra`` is ``result.json`` (next-pixel runs: ``test_bpd``, bits per dimension, and its unit)."""

    model: nn.Module
    history: list[dict[str, Any]]
    test_acc: float
    run_dir: Path
    wall_s: float
    extra: dict[str, Any] = field(default_factory=dict)


def _temperature_schedule(model: nn.Module, cfg: TrainConfig, steps_per_epoch: int) -> Any | None:
    """The DY-CNN temperature schedule, stepped every iteration, when ``model`` has dynamic convolutions."""
    try:
        from visionattn.layers.dynamic_conv import DynamicConv2d, TemperatureSchedule
    except ImportError:
        return None
    if not any(isinstance(m, DynamicConv2d) for m in model.modules()):
        return None
    steps = max(1, round(min(cfg.temperature_epochs, cfg.epochs) * steps_per_epoch))
    return TemperatureSchedule(model, num_steps=steps)


class Trainer:
    """One training run (use :func:`train`); the attributes under "position" are what a checkpoint restores."""

    def __init__(self, cfg: TrainConfig, info: distributed.DistInfo, log: RunLog, resume: bool = False,
                 overwrite: bool = False) -> None:
        self.cfg, self.info, self.log = cfg, info, log
        self.task = task_for(cfg)(self)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.ckpt = CheckpointDir(log.folder / "checkpoints", keep=cfg.keep_checkpoints)
        from_checkpoint = resume and self.ckpt.exists()
        self.data = self._load_data()
        self._build_model(read_pretrained=not from_checkpoint)  # a resumed run's weights are its checkpoint's
        if overwrite and info.is_main and not resume:  # only now that the new run is sure to start
            clear_run_dir(log.folder)
        log.open()
        self.watch = DivergenceWatch(info.device)
        # position
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.history: list[dict[str, Any]] = []
        self.elapsed = 0.0
        self.synced = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, seen: this epoch, up to last sync
        self.local = torch.zeros(3, dtype=torch.float64, device=info.device)  # since the last sync
        state = self.ckpt.load(self.model, cfg.model) if from_checkpoint else None
        if state is not None and CONVERTED in state:
            self.log.info(state[CONVERTED])
        self.task.prepare(state)
        if state is not None:
            self._restore(state)
        elif resume:
            self.log.info(f"no checkpoint in {self.ckpt.folder} yet: starting from the beginning")
        self._write_config()

    # ----------------------------------------------------------------------------------------------- set-up
    def _load_data(self) -> DataSplits:
        cfg = self.cfg
        data = load_dataset(cfg.data, data_dir=cfg.data_dir, download=cfg.download, image_size=cfg.image_size,
                            channels=cfg.channels, val_fraction=cfg.val_fraction, seed=cfg.seed)
        for line in data.skipped:
            self.log.warning(f"skipped unreadable file {line}")
        for line in data.notes():
            self.log.info(line)
        if cfg.train_subset:
            data.train = data.train.balanced_subset(cfg.train_subset, argument="--train-subset")
        summary = data.describe()
        self.log.info(f"data {summary['name']} from {summary['source']}: {summary['train_size']} train / "
                      f"{summary['test_size']} test images, {summary['num_classes']} classes, "
                      f"{summary['in_chans']}x{summary['image_size'][0]}x{summary['image_size'][1]}, "
                      f"{len(data.skipped)} files skipped")
        self.train_images = data.train.images.to(self.info.device)
        self.test_images = data.test.images.to(self.info.device)
        return data

    @property
    def mean(self) -> list[float]:
        """The classification task's normalisation mean (per channel)."""
        return self.task.mean

    @property
    def std(self) -> list[float]:
        """The classification task's normalisation standard deviation (per channel)."""
        return self.task.std

    def _build_model(self, read_pretrained: bool = True) -> None:
        cfg, info = self.cfg, self.info
        per_rank, remainder = divmod(cfg.batch_size, info.world_size)
        if remainder:
            raise UsageError(f"--batch-size: got {cfg.batch_size}, needed a multiple of the {info.world_size} "
                             "processes")
        self.batch = per_rank
        self.sampler = DistributedSampler(self.data.train, num_replicas=info.world_size, rank=info.rank,
                                          shuffle=True, seed=cfg.seed, drop_last=False)
        self.steps_per_epoch = len(self.sampler) // per_rank
        if self.steps_per_epoch == 0:
            raise UsageError(f"--batch-size: got {cfg.batch_size}, needed at most the {len(self.data.train)} "
                             "training images" + (f" (of {info.world_size} processes)" if info.enabled else ""))
        self.total_steps = total_steps(cfg, self.steps_per_epoch)
        self.num_epochs = -(-self.total_steps // self.steps_per_epoch)  # the last one partial after max_steps
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)  # identical initial weights in every process
        # built for the data's image size too: some designs (GE-theta's global gather) fix it
        model = self.task.build_model(cfg, self.data.train.image_shape, self.data.num_classes)
        self.pretrained_report = None
        if cfg.pretrained and read_pretrained:
            self.pretrained_report = train_checks.load_pretrained_file(model, cfg.pretrained)
            for line in self.pretrained_report.notes():
                self.log.info(line)
        elif cfg.pretrained:
            self.log.info(f"pretrained weights {cfg.pretrained}: not read on resume, the checkpoint's continue")
        self.model = model.to(info.device)
        if cfg.channels_last:
            self.model = to_channels_last(self.model)
        self.no_decay = no_weight_decay_names(self.model)  # recorded in every checkpoint (resumed_no_decay)
        self.optimizer = build_optimizer(self.model, cfg, self.no_decay)
        self.scheduler = build_scheduler(self.optimizer, cfg, self.steps_per_epoch)
        self.temperature = _temperature_schedule(self.model, cfg, self.steps_per_epoch)
        self.net = self.model
        if info.enabled:
            ids = [info.device.index] if info.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)

    def _write_config(self) -> None:
        params = sum(p.numel() for p in self.model.parameters())
        steps = (f"; {self.total_steps} steps in all (--max-steps)" if self.total_steps < self.cfg.epochs *
                 self.steps_per_epoch else "")
        self.log.info(f"model {self.cfg.model}: {params / 1e6:.3f} M parameters; {self.info.world_size} "
                      f"process(es) on {self.info.device}; {self.steps_per_epoch} steps per epoch{steps}")
        self.log.write_json("config.json", {
            "config": self.cfg.to_dict(), "task": self.task.name, "data": self.data.describe(), **self.task.record(),
            "model": {"name": self.cfg.model, "parameters": params, "class": type(self.model).__name__},
            "world_size": self.info.world_size, "device": str(self.info.device),
            "steps_per_epoch": self.steps_per_epoch, "torch": torch.__version__})

    # ------------------------------------------------------------------------------------------ checkpoints
    def _metadata(self) -> dict[str, str]:
        """The weights files' metadata: the model, and what the task needs to use them (the normalisation a run
        fine-tuned from them needs; a palette)."""
        return {"model": self.cfg.model, **self.task.metadata()}

    def _state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                STATE_KEY: list(self.no_decay),
                "temperature": self.temperature.state_dict() if self.temperature else None,
                "rng": capture_rng(), "accum": self.synced.clone(), "history": self.history,
                "elapsed_s": self.elapsed, "config": self.cfg.to_dict(), **self.task.record()}

    def _restore(self, state: dict[str, Any]) -> None:
        self.epoch, self.step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])
        self.global_step = int(state["global_step"])
        no_decay, note = resumed_no_decay(self.model, state, self.ckpt.folder)
        if note is not None:  # its moments belong to the checkpoint's groups: rebuild them before loading
            self.log.info(note)
            self.no_decay = no_decay
            self.optimizer = build_optimizer(self.model, self.cfg, no_decay)
            self.scheduler = build_scheduler(self.optimizer, self.cfg, self.steps_per_epoch)
        self.optimizer.load_state_dict(state["optimizer"])
        fit_optimizer_state(self.optimizer)  # SK fuse/select moments saved before the ecosystem names: (d, C) -> 1x1
        self.scheduler.load_state_dict(state["scheduler"])
        if self.temperature is not None and state.get("temperature"):
            self.temperature.load_state_dict(state["temperature"])
        restore_rng(state["rng"])
        # the synced sums are global: count them once, on rank 0
        self.synced = state["accum"].clone() if self.info.is_main else torch.zeros(3, dtype=torch.float64)
        self.history, self.elapsed = list(state["history"]), float(state["elapsed_s"])
        if self.info.is_main and self.history:  # the kill may have come between the checkpoint and this file
            self.log.write_metrics(self.history)
        self.log.info(f"resumed from step {self.global_step} (epoch {self.epoch + 1}, step {self.step_in_epoch} "
                      f"of {self.steps_per_epoch})")

    def _sync_accum(self) -> None:
        """Fold every process's running sums into rank 0's (a collective: all processes call it together)."""
        summed = torch.tensor(distributed.all_reduce_sum(self.local.tolist(), self.info.device),
                              dtype=torch.float64)
        if self.info.is_main:
            self.synced += summed
        self.local.zero_()

    def _check_finite(self, weights: bool = False) -> None:
        """Stop with :class:`TrainingDiverged` once a loss (or, with ``weights``, a weight) is not finite."""
        found = self.watch.check(self.model if weights else None)
        if found is not None:
            error = diverged(self.cfg, found, self.steps_per_epoch, self.ckpt.latest_step(), self.ckpt.folder)
            self.log.warning(str(error))
            raise error

    def _checkpoint(self) -> None:
        self._sync_accum()
        distributed.broadcast_buffers(self.model)  # what rank 0 saves is then what every process holds
        self._check_finite(weights=True)
        if self.info.is_main:
            self.ckpt.save(self.global_step, self.model, self._state(), self._metadata())

    # --------------------------------------------------------------------------------------------- the loop
    def _forward(self, net: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        """``net(inputs)`` in the run's precision (and memory format, for images), as float32."""
        if self.cfg.channels_last and inputs.dim() == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with autocast(self.info.device.type, self.cfg.precision):
            return net(inputs).float()

    def _train_step(self, index: torch.Tensor, params: Any) -> torch.Tensor:
        loss, sums = self.task.batch_loss(index, params)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        if self.temperature is not None:
            self.temperature.step()
        self.local += sums
        return loss.detach()

    def _steps_in_epoch(self) -> int:
        """Steps of epoch ``self.epoch``: all of them, but in the last epoch of a run cut by ``max_steps``."""
        return min(self.steps_per_epoch, self.total_steps - self.epoch * self.steps_per_epoch)

    def _train_epoch(self, bar: Any) -> None:
        """Run the rest of epoch ``self.epoch`` from ``self.step_in_epoch``, checkpointing every few steps."""
        self.sampler.set_epoch(self.epoch)
        order = torch.tensor(list(self.sampler), dtype=torch.long)
        params = self.task.epoch_params(self.epoch)
        steps = self._steps_in_epoch()
        self.net.train()
        while self.step_in_epoch < steps:
            start = self.step_in_epoch * self.batch
            loss = self._train_step(order[start:start + self.batch], params)
            self.step_in_epoch += 1
            self.global_step += 1
            self.watch.record(loss, self.global_step)
            if self.global_step % CHECK_EVERY == 0:
                self._check_finite()
            bar.update(1)
            if bar.n % 20 == 0 and not bar.disable:
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{self.scheduler.get_last_lr()[0]:.4f}")
            if self.global_step % self.cfg.ckpt_every == 0 and self.step_in_epoch < steps:
                self._checkpoint()

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """(loss, accuracy) on the test split; each process takes every world_size-th image, then they sum."""
        self.model.eval()  # the bare module: DDP's forward is a collective and the shards may differ in length
        index = torch.arange(self.info.rank, len(self.data.test), self.info.world_size)
        total = torch.zeros(3, dtype=torch.float64, device=self.info.device)
        for chunk in index.split(self.cfg.eval_batch_size):
            total += self.task.eval_sums(chunk)
        loss_sum, correct, count = distributed.all_reduce_sum(total.tolist(), self.info.device)
        return loss_sum / max(count, 1), correct / max(count, 1)

    def _end_epoch(self, seconds: float) -> dict[str, Any]:
        self._sync_accum()
        distributed.broadcast_buffers(self.model)
        self._check_finite(weights=True)
        loss_sum, correct, seen = distributed.all_reduce_sum(self.synced.tolist(), self.info.device)
        test_loss, test_acc = self.evaluate()
        row = {"epoch": self.epoch + 1, "step": self.global_step,
               **self.task.metrics(loss_sum / seen, correct / seen, test_loss, test_acc),
               "lr": self.scheduler.get_last_lr()[0], "time_s": round(seconds, 3)}
        if self.temperature is not None:
            row["temperature"] = self.temperature.temperature
        self.history.append(row)
        self.epoch, self.step_in_epoch = self.epoch + 1, 0
        self.synced.zero_()
        if self.info.is_main:
            self.ckpt.save(self.global_step, self.model, self._state(), self._metadata())
            self.log.write_metrics(self.history)
        self.log.info(f"epoch {row['epoch']}/{self.num_epochs}: {self.task.describe(row)} | {seconds:.1f}s")
        return row

    def run(self) -> TrainResult:
        """Train from the current position to the last epoch, then write the final weights and result."""
        from tqdm import tqdm

        show = self.info.is_main and self.cfg.progress
        bars = [tqdm(total=self.num_epochs, initial=self.epoch, desc="epochs", unit="ep", disable=not show)]
        try:
            while self.epoch < self.num_epochs:
                bars.append(tqdm(total=self._steps_in_epoch(), initial=self.step_in_epoch,
                                 desc=f"epoch {self.epoch + 1}", unit="step", leave=False, disable=not show,
                                 mininterval=1.0))
                start = time.perf_counter()
                self._train_epoch(bars[-1])
                bars.pop().close()
                row = self._end_epoch(time.perf_counter() - start)
                self.elapsed += row["time_s"]
                bars[0].update(1)
                bars[0].set_postfix(**self.task.postfix(row))
            bars.pop().close()
            distributed.check_replicas_in_sync(self.model, self.info.device)
            return self._finish()
        except KeyboardInterrupt:
            raise interrupted(self.global_step, self.steps_per_epoch, self.ckpt.latest_step(),
                              self.log.folder, command=self.task.command) from None
        finally:  # closed before any message is printed, so no bar is left half drawn
            for bar in reversed(bars):
                bar.close()

    def _finish(self) -> TrainResult:
        result = {"model": self.cfg.model, "data": self.data.name, "epochs": len(self.history),
                  **self.task.summary(self.history), "train_time_s": round(self.elapsed, 1),
                  "world_size": self.info.world_size, "device": str(self.info.device)}
        if self.info.is_main:
            save_weights(self.log.folder / "model.safetensors", self.model, self._metadata())
            self.log.write_json("result.json", result)
            self.log.info(f"done: {self.task.headline(result)} after {result['epochs']} epochs, "
                          f"{result['train_time_s']:.0f}s of training; run directory {self.log.folder}")
        return TrainResult(self.model, self.history, result["test_acc"], self.log.folder, self.elapsed, result)


def train(cfg: TrainConfig, resume: bool = False, overwrite: bool = False) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.data`` with ``cfg``'s recipe; in one process, or in each under torchrun.

    With ``resume``, ``cfg.run_dir`` must be an earlier run's directory; training continues from its last
    checkpoint (or from the start when it has none); a finished run is not trained again, its saved result is
    returned. An existing run in ``cfg.run_dir`` is refused unless ``resume`` or ``overwrite``.

    Raises:
        UsageError: what :func:`preflight` finds, before any work; :class:`TrainingDiverged` when the loss stops
            being finite.
        TrainingInterrupted: on Ctrl-C (a ``KeyboardInterrupt`` whose message says how to resume).
    """
    preflight(cfg, resume=resume, overwrite=overwrite)
    info = distributed.setup(cfg.device)
    log = None
    try:
        distributed.barrier()  # every process has checked the run directory before rank 0 creates it
        run_dir = Path(cfg.run_dir) if cfg.run_dir else distributed.broadcast_object(default_run_dir(cfg.model))
        cfg.run_dir = str(run_dir)
        log = RunLog(run_dir, enabled=info.is_main)
        saved = finished_result(run_dir) if resume else None
        if saved is not None:
            return _finished(cfg, saved, log)
        return Trainer(cfg, info, log, resume=resume, overwrite=overwrite).run()
    finally:
        if log is not None:
            log.close()
        distributed.teardown()


def _finished(cfg: TrainConfig, result: dict[str, Any], log: RunLog) -> TrainResult:
    """A finished run's saved result and final weights; nothing is trained or rewritten."""
    run_dir = Path(cfg.run_dir or ".")
    data = json.loads((run_dir / "config.json").read_text())["data"]  # preflight found it readable
    task = task_for(cfg)
    model = task.build_model(cfg, (data["in_chans"], *data["image_size"]), data["num_classes"])
    meta = load_weights(run_dir / "model.safetensors", model, cfg.model)
    if CONVERTED in meta:
        log.info(meta[CONVERTED])
    log.info(f"{run_dir} already finished: {task.headline(result)} after {result['epochs']} "
             f"epochs; nothing to resume (the result is {run_dir / 'result.json'})")
    return TrainResult(model, read_metrics(run_dir), result["test_acc"], run_dir, float(result["train_time_s"]),
                       result)


def run_cli(args: argparse.Namespace, kind: type[TrainConfig] = TrainConfig) -> int:
    """``visionattn train`` (and, with ``kind`` its config class, another task's train command): build the
    config from the parsed options (or the resumed run's), train, report.

    Errors are raised for :func:`visionattn.cli.main` to report (``UsageError``: exit status 2;
    ``TrainingInterrupted``: its one line, exit status 130).
    """
    if args.resume:
        saved = saved_config(args.resume)
        check_run_task(args.resume, kind)
        saved["run_dir"] = args.resume
        cfg = config_from_args(args, saved, kind=kind)
    else:
        cfg = config_from_args(args, kind=kind)
    train(cfg, resume=bool(args.resume), overwrite=bool(getattr(args, "overwrite", False)))
    return 0  # the run log's last line gives the result and the directory
