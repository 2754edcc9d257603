"""The comparison bench: ``visionattn compare``.

Trains every model with the same recipe and seeds, measures what each costs, and writes one table, as the
papers' tables do: test top-1 (mean and spread over seeds), parameters, multiply-adds (and attention's share of
them, QK^T and AV: :mod:`visionattn.complexity`), training images/s,
inference latency per image and peak training memory. Markdown and CSV, plus PNG plots (accuracy against
multiply-adds, accuracy against latency, test-accuracy curves).

A comparison lives in one output folder: ``runs/<model>-seed<N>/`` holds each training run (the trainer's own
run directory, with its checkpoints) and ``costs/<model>.json`` each model's measured cost. Running the same
command again resumes: finished runs and measured costs are read back, an interrupted run continues from its
last checkpoint.
"""

from __future__ import annotations

import csv
import json
import statistics
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from visionattn.bench import bench_module, median_ms
from visionattn.checkpoint import atomic_write
from visionattn.complexity import format_table, mac_counts
from visionattn.errors import UsageError, check_choice, check_positive, check_writable_dir, unknown_name
from visionattn.formats import autocast
from visionattn.info import build_for_input
from visionattn.recipe import TrainConfig
from visionattn.registry import MODELS
from visionattn.runlog import read_metrics
from visionattn.train import train

__all__ = ["run_comparison", "check_comparison", "check_output_dir", "measure_cost", "summarise", "write_outputs",
           "read_comparison", "verdict", "plot_styles", "COLUMNS"]

COLUMNS = ["model", "top1_mean", "top1_std", "seeds", "params", "macs", "attn_macs", "train_img_s", "latency_ms",
           "peak_train_mb"]


def _run_dir(out: Path, model: str, seed: int) -> Path:
    return out / "runs" / f"{model}-seed{seed}"


def _read_result(out: Path, model: str, seed: int) -> dict[str, Any]:
    run_dir = _run_dir(out, model, seed)
    return {**json.loads((run_dir / "result.json").read_text()), "run_dir": str(run_dir)}


def _train_one(cfg: TrainConfig, out: Path, log: Any) -> dict[str, Any]:
    run_dir = _run_dir(out, cfg.model, cfg.seed)
    result_path = run_dir / "result.json"
    if result_path.is_file():
        log(f"{cfg.model} seed {cfg.seed}: finished earlier, reading {result_path}")
    else:
        resume = (run_dir / "config.json").is_file()
        log(f"{cfg.model} seed {cfg.seed}: {'resuming' if resume else 'training'} in {run_dir}")
        train(replace(cfg, run_dir=str(run_dir)), resume=resume)
    return _read_result(out, cfg.model, cfg.seed)


def measure_cost(model_name: str, input_shape: tuple[int, int, int], num_classes: int, batch: int,
                 reps: int = 3, precision: str = "fp32", channels_last: bool = False) -> dict[str, Any]:
    """Parameters, MACs per image (in total and in attention), training images/s and peak memory at ``batch``,
    latency of one image.

    Speed and memory are measured in the recipe's ``precision`` and memory format, as the models were trained.
    """
    model, _ = build_for_input(model_name, input_shape, num_classes=num_classes)
    x = torch.randn(batch, *input_shape)
    attn_macs = mac_counts(model, x[:1]).attention
    res = bench_module(model_name, model, x, warmup=1, reps=reps, precision=precision, channels_last=channels_last)
    one = x[:1].contiguous(memory_format=torch.channels_last) if channels_last else x[:1]
    model.eval()
    mixed = autocast("cpu", precision)

    @torch.no_grad()
    def infer() -> None:
        with mixed:
            model(one)

    latency = median_ms(infer, torch.device("cpu"), warmup=2, reps=max(5, reps))
    return {"params": res.params, "macs": res.macs, "attn_macs": attn_macs, "train_img_s": res.train_images_per_s,
            "latency_ms": latency, "peak_train_mb": res.train_peak_mb, "batch": batch,
            "threads": torch.get_num_threads(), "precision": precision, "channels_last": channels_last}


def _cost(out: Path, model: str, input_shape: tuple[int, int, int], num_classes: int, batch: int,
          base: TrainConfig, log: Any) -> dict[str, float]:
    path = out / "costs" / f"{model}.json"
    if path.is_file():
        cost = json.loads(path.read_text())
        if "attn_macs" in cost:
            return cost
        # measured before attention was counted apart: count it (no timing), keep the measured rest
        built, _ = build_for_input(model, input_shape, num_classes=num_classes)
        cost["attn_macs"] = mac_counts(built, torch.randn(1, *input_shape)).attention
    else:
        log(f"{model}: measuring cost (batch {batch})")
        cost = measure_cost(model, input_shape, num_classes, batch, precision=base.precision,
                            channels_last=base.channels_last)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(cost, indent=2).encode())
    return cost


def _data_shape(out: Path, model: str, seed: int) -> tuple[tuple[int, int, int], int]:
    data = json.loads((_run_dir(out, model, seed) / "config.json").read_text())["data"]
    return (data["in_chans"], *data["image_size"]), data["num_classes"]


def run_comparison(models: list[str], seeds: list[int], base: TrainConfig, out: str | Path,
                   cost_batch: int | None = None, log: Any = print, *, baseline: str | None = None,
                   flags: bool = False) -> list[dict[str, Any]]:
    """Train ``models`` x ``seeds`` with ``base``'s recipe into ``out``, measure costs, return the table rows.

    Everything is checked first (:func:`check_comparison`, which ``baseline`` and ``flags`` are for): a mistake
    is an error before the first model trains.
    """
    check_comparison(models, seeds, base, out, cost_batch, baseline, flags=flags)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "plan.json", json.dumps({"models": models, "seeds": seeds, "recipe": _recipe(base)},
                                               indent=2).encode())
    results: dict[str, list[dict[str, Any]]] = {}
    for model in models:
        results[model] = [_train_one(replace(base, model=model, seed=seed), out, log) for seed in seeds]
    rows = []
    for model in models:
        shape, num_classes = _data_shape(out, model, seeds[0])
        cost = _cost(out, model, shape, num_classes, cost_batch or base.batch_size, base, log)
        rows.append(summarise(model, results[model], cost))
    return rows


def read_comparison(out: str | Path, argument: str = "out") -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The plan (``models``, ``seeds``, ``recipe``) and the table rows of the finished comparison in ``out``, as
    :func:`run_comparison` returned them, read back from its files without training or measuring anything."""
    out = Path(out)
    try:
        plan = json.loads((out / "plan.json").read_text())
        rows = [summarise(model, [_read_result(out, model, seed) for seed in plan["seeds"]],
                          json.loads((out / "costs" / f"{model}.json").read_text())) for model in plan["models"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        why = f"{err.filename}: {err.strerror}" if isinstance(err, OSError) and err.strerror else repr(err)
        raise UsageError(f"{argument}: {str(out)!r} holds no finished comparison ({why}); needed the folder of a "
                         "visionattn compare run (its --out)") from None
    return plan, rows


def _flag(name: str, flags: bool) -> str:
    return "--" + name.replace("_", "-") if flags else name


def _check_distinct(argument: str, values: list[Any], kind: str, why: str) -> None:
    if not values:
        raise UsageError(f"{argument}: got an empty list, needed at least one {kind}")
    counts = Counter(values)
    twice = next((v for v, n in counts.items() if n > 1), None)
    if twice is not None:
        raise UsageError(f"{argument}: {kind} {twice!r} is given {counts[twice]} times, needed each {kind} once "
                         f"({why})")


def check_comparison(models: list[str], seeds: list[int], base: TrainConfig, out: str | Path,
                     cost_batch: int | None = None, baseline: str | None = None, *, flags: bool = False) -> None:
    """Every check of a comparison, before any work: the model names (registered, each once), the seeds (integers,
    each once), ``baseline`` (one of ``models``), ``cost_batch``, the output folder, an earlier plan in it, and
    the recipe of every run it will train (:func:`visionattn.train.preflight`).

    ``flags``: name the arguments as the command line spells them (``--models``) rather than as here (``models``).
    """
    from visionattn.train import preflight

    _check_distinct(_flag("models", flags), list(models), "model", "it would get two rows of the same runs")
    for name in models:
        if name not in MODELS:
            raise unknown_name(_flag("models", flags), "model", name, MODELS.names())
    _check_distinct(_flag("seeds", flags), list(seeds), "seed",
                    "one run counted twice would fake the mean and the spread")
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise UsageError(f"{_flag('seeds', flags)}: got {seed!r}, needed integers")
    if baseline is not None:
        check_choice(_flag("baseline", flags), baseline, models)
    if cost_batch is not None:
        check_positive(_flag("cost_batch", flags), cost_batch)
    out = check_output_dir(out, _flag("out", flags))
    _check_plan(out, base, _flag("out", flags))
    for model in models:
        for seed in seeds:
            run_dir = _run_dir(out, model, seed)
            if not (run_dir / "result.json").is_file():  # a finished run is read back, not trained
                preflight(replace(base, model=model, seed=seed, run_dir=str(run_dir)),
                          resume=(run_dir / "config.json").is_file())


def check_output_dir(out: str | Path, argument: str = "out") -> Path:
    """``out`` as a folder that exists or can be made, and can be written (checked before any work)."""
    if not str(out):
        raise UsageError(f"{argument}: got an empty path, needed a folder")
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{argument}: {str(out)!r} is a file, needed a folder (new or an earlier comparison's)")
    return check_writable_dir(path, argument)


_NOT_RECIPE = ("model", "seed", "run_dir", "progress", "device", "threads", "ckpt_every", "overwrite")


def _recipe(base: TrainConfig) -> dict[str, Any]:
    return {k: v for k, v in base.to_dict().items() if k not in _NOT_RECIPE}


def _check_plan(out: Path, base: TrainConfig, argument: str) -> None:
    """A folder holds one recipe: resuming with another would mix incomparable runs."""
    path = out / "plan.json"
    if not path.is_file():
        return
    try:
        earlier = json.loads(path.read_text())["recipe"]
    except (ValueError, KeyError, TypeError) as err:
        raise UsageError(f"{argument}: {path} is not a comparison plan ({err}); use another folder") from None
    recipe = _recipe(base)
    changed = sorted(k for k in set(recipe) | set(earlier) if recipe.get(k) != earlier.get(k))
    if changed:
        raise UsageError(f"{argument}: {out} holds a comparison with another recipe (differs in "
                         f"{', '.join(changed)}); use another folder or the same options")


def summarise(model: str, results: list[dict[str, Any]], cost: dict[str, float]) -> dict[str, Any]:
    accs = [100 * r["test_acc"] for r in results]
    return {"model": model, "top1_mean": statistics.fmean(accs),
            "top1_std": statistics.stdev(accs) if len(accs) > 1 else 0.0, "seeds": len(accs),
            "params": int(cost["params"]), "macs": int(cost["macs"]),
            "attn_macs": int(cost["attn_macs"]), "train_img_s": cost["train_img_s"],
            "latency_ms": cost["latency_ms"], "peak_train_mb": cost["peak_train_mb"],
            "epochs": results[0].get("epochs"), "runs": results}


def _display(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    shown = []
    for r in rows:
        shown.append({**r, "top1_mean": f"{r['top1_mean']:.2f}", "top1_std": f"{r['top1_std']:.2f}",
                      "train_img_s": f"{r['train_img_s']:.0f}", "latency_ms": f"{r['latency_ms']:.2f}",
                      "peak_train_mb": f"{r['peak_train_mb']:.0f}"})
    return shown


def write_outputs(rows: list[dict[str, Any]], out: str | Path, baseline: str | None = None) -> str:
    """Write ``compare.md``, ``compare.csv`` and the plots into ``out``; return the Markdown table."""
    out = Path(out)
    table = format_table(_display(rows), COLUMNS, human=("params", "macs", "attn_macs"))
    if baseline is not None:
        base = next((r for r in rows if r["model"] == baseline), None)
        if base is not None:
            table += "\n\n" + _deltas(rows, base)
    (out / "compare.md").write_text(table + "\n")
    with open(out / "compare.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    _plots(rows, out)
    return table


def _deltas(rows: list[dict[str, Any]], base: dict[str, Any]) -> str:
    lines = [f"Against {base['model']}: top-1 change (points; spread is the larger of the two standard deviations; "
             "helped or hurt only where the change exceeds the spread and every seed lies beyond every seed of "
             f"{base['model']})"]
    for r in rows:
        if r is base:
            continue
        delta, spread = r["top1_mean"] - base["top1_mean"], max(r["top1_std"], base["top1_std"])
        lines.append(f"- {r['model']}: {delta:+.2f} (spread {spread:.2f}): {verdict(r, base)}; "
                     f"{r['params'] / max(base['params'], 1):.2f}x parameters, "
                     f"{r['latency_ms'] / max(base['latency_ms'], 1e-9):.2f}x latency")
    return "\n".join(lines)


def verdict(row: dict[str, Any], base: dict[str, Any]) -> str:
    """``row`` against ``base`` (rows of :func:`summarise`): "helped" or "hurt" only where the means differ by more
    than the larger standard deviation and every seed of one model lies beyond every seed of the other, else
    "within the spread"; with one seed, "one seed, no spread to judge it by"."""
    if min(row["seeds"], base["seeds"]) < 2:
        return "one seed, no spread to judge it by"
    delta, spread = row["top1_mean"] - base["top1_mean"], max(row["top1_std"], base["top1_std"])
    accs, base_accs = ([run["test_acc"] for run in r["runs"]] for r in (row, base))
    if delta > spread and min(accs) > max(base_accs):
        return "helped"
    if delta < -spread and max(accs) < min(base_accs):
        return "hurt"
    return "within the spread"


# Every model its own colour and marker: tab20's strong colours first, then its light ones (tab20 pairs them,
# so taking them in order would give two blues, two oranges, ...), against a marker cycle of another length.
_COLOUR_ORDER = [*range(0, 20, 2), *range(1, 20, 2)]
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "p", "h", "8")


def plot_styles(models: list[str]) -> dict[str, tuple[tuple[float, ...], str]]:
    """``model -> (colour, marker)``: 20 distinct colours, 13 markers, so up to 260 distinct pairs."""
    from matplotlib import colormaps

    tab20 = colormaps["tab20"]
    return {m: (tuple(tab20(_COLOUR_ORDER[i % 20])), _MARKERS[i % len(_MARKERS)]) for i, m in enumerate(models)}


def _plots(rows: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    styles = plot_styles([r["model"] for r in rows])
    legend = {"fontsize": 7, "ncol": 2 if len(rows) > 8 else 1}
    for key, label, name in (("macs", "multiply-adds per image (M)", "accuracy_vs_macs.png"),
                             ("latency_ms", "inference latency per image (ms)", "accuracy_vs_latency.png")):
        fig, ax = plt.subplots(figsize=(7, 5))
        for r in rows:
            x = r[key] / 1e6 if key == "macs" else r[key]
            colour, marker = styles[r["model"]]
            ax.errorbar(x, r["top1_mean"], yerr=r["top1_std"], fmt=marker, color=colour, capsize=3,
                        label=r["model"])
            ax.annotate(r["model"], (x, r["top1_mean"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(label)
        ax.set_ylabel("test top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(**legend)
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 5))
    for r in rows:
        curves = [read_metrics(Path(run["run_dir"])) if "run_dir" in run else [] for run in r["runs"]]
        curves = [[100 * e["test_acc"] for e in c if "test_acc" in e] for c in curves]
        length = min((len(c) for c in curves), default=0)
        if length:
            mean = [statistics.fmean(c[i] for c in curves) for i in range(length)]
            colour, marker = styles[r["model"]]
            ax.plot(range(1, length + 1), mean, marker=marker, color=colour, label=r["model"])
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no 1.2, 1.4 ticks on a short run
    ax.set_ylabel("test top-1 (%), mean over seeds")
    ax.grid(alpha=0.3)
    if ax.get_lines():
        ax.legend(**legend)
    fig.tight_layout()
    fig.savefig(out / "training_curves.png", dpi=120)
    plt.close(fig)
