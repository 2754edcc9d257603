"""A run's directory: its resolved configuration, log, per-epoch metrics, training curves and result.

Layout of ``runs/<model>-<timestamp>/``::

    config.json      the resolved configuration, the data and model summaries, versions
    log.txt          the run log (data summary, skipped files, one line per epoch)
    metrics.jsonl    one JSON object per epoch
    curves.png       loss and accuracy per epoch (matplotlib)
    result.json      final and best test accuracy, epochs, wall time
    model.safetensors  the final weights
    checkpoints/     see :class:`visionattn.checkpoint.CheckpointDir`

Only the main process writes; a :class:`RunLog` built with ``enabled=False`` logs to the console only. The
directory is created by :meth:`RunLog.open` (or the first file written), not when the log is made: what is logged
before (the data summary, skipped files) is kept and written to ``log.txt`` then, so a run that fails while it
loads its data or builds its model leaves no directory behind. JSON files are strict JSON: a value that is not
finite (NaN, inf) is written as ``null``.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import math
import time
from pathlib import Path
from typing import Any

from visionattn.checkpoint import atomic_write

__all__ = ["RunLog", "RUN_FILES", "default_run_dir", "plot_curves", "read_metrics", "json_safe"]

# what a run writes into its directory (the run-directory checks and --overwrite go by these names)
RUN_FILES = ("config.json", "log.txt", "metrics.jsonl", "curves.png", "result.json", "model.safetensors",
             "checkpoints")


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, inf) replaced by ``None``, so ``json.dumps`` stays strict."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _dumps(payload: Any, **kw: Any) -> str:
    return json.dumps(json_safe(payload), allow_nan=False, **kw)


def default_run_dir(model: str, root: str = "runs") -> Path:
    """``runs/<model>-<YYYYmmdd-HHMMSS>``, with a numeric suffix if that already exists."""
    base = Path(root) / f"{model}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 1
    while path.exists():
        path, n = base.with_name(f"{base.name}-{n}"), n + 1
    return path


class _TqdmHandler(logging.StreamHandler):
    """Console handler that prints above live progress bars instead of through them."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        tqdm.write(self.format(record))


class RunLog:
    """Writes the files of one run directory (when ``enabled``) and logs to the console."""

    def __init__(self, folder: str | Path, enabled: bool = True) -> None:
        self.folder, self.enabled = Path(folder), enabled
        self.logger = logging.getLogger(f"visionattn.train.{id(self)}")
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False
        console = _TqdmHandler()
        console.setFormatter(logging.Formatter("%(message)s"))
        console.setLevel(logging.INFO if enabled else logging.WARNING)
        self.logger.addHandler(console)
        # until open(): records wait here for log.txt
        self._pending: logging.handlers.MemoryHandler | None = None
        if enabled:
            self._pending = logging.handlers.MemoryHandler(capacity=1 << 20, flushLevel=logging.CRITICAL + 1)
            self.logger.addHandler(self._pending)

    @property
    def opened(self) -> bool:
        return self.enabled and self._pending is None

    def open(self) -> None:
        """Create the directory and ``log.txt`` (with everything logged so far); a no-op when already open."""
        if self._pending is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self.folder / "log.txt")
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        self._pending.setTarget(handler)
        self._pending.flush()
        self.logger.removeHandler(self._pending)
        self._pending.close()
        self._pending = None
        self.logger.addHandler(handler)

    def info(self, message: str) -> None:
        self.logger.info(message)

    def warning(self, message: str) -> None:
        self.logger.warning(message)

    def write_json(self, name: str, payload: dict[str, Any]) -> None:
        if self.enabled:
            self.open()
            atomic_write(self.folder / name, (_dumps(payload, indent=2) + "\n").encode())

    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        """Rewrite ``metrics.jsonl`` from the full history (so a resumed run never repeats an epoch's line)."""
        if self.enabled:
            self.open()
            lines = "".join(_dumps(row) + "\n" for row in history)
            atomic_write(self.folder / "metrics.jsonl", lines.encode())
            plot_curves(history, self.folder / "curves.png")

    def close(self) -> None:
        """Close the handlers; records never written to ``log.txt`` (the run never opened) are dropped."""
        if self._pending is not None:
            self._pending.buffer.clear()
        for handler in list(self.logger.handlers):
            handler.close()
            self.logger.removeHandler(handler)


def read_metrics(folder: str | Path) -> list[dict[str, Any]]:
    """The per-epoch records of a run directory."""
    text = (Path(folder) / "metrics.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def plot_curves(history: list[dict[str, Any]], path: str | Path) -> None:
    """Loss (train, test) and accuracy (train, test) against epoch, side by side, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = [{k: (float("nan") if v is None else v) for k, v in row.items()} for row in history]  # null: a gap
    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5))
    for split, style in (("train", "-"), ("test", "--")):
        ax_loss.plot(epochs, [row[f"{split}_loss"] for row in history], style, marker="o", ms=3, label=split)
        ax_acc.plot(epochs, [100 * row[f"{split}_acc"] for row in history], style, marker="o", ms=3, label=split)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    tmp = Path(path).with_name(f".{Path(path).name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
