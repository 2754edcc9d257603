"""The main job's report: one self-contained HTML page from a finished ``visionattn compare`` run.

``visionattn report --out runs/demo`` (the last step of ``make demo``) writes ``runs/demo/report.html``: the recipe,
the comparison table (mean and spread over seeds, and what the spread allows one to say), its plots, a few pictures
drawn from the models the comparison just trained (:mod:`visionattn.show.registry`, each from its seed's run
directory), and the speed of each compared attention layer alone (:mod:`visionattn.show.speed`). Every image is a
base64 ``data:`` URI and the style sheet is inline: the page has no external reference and needs no JavaScript, so
it can be mailed or archived as one file. Every text taken from files or names is HTML-escaped.
"""

from __future__ import annotations

import base64
import datetime
import html
import math
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from visionattn.compare import read_comparison, verdict
from visionattn.complexity import human_number
from visionattn.errors import UsageError, check_choice, check_positive, check_writable_dir
from visionattn.show.figures import png_bytes
from visionattn.show.registry import Picture, Subject
from visionattn.show.speed import REFERENCE, SpeedTable

if TYPE_CHECKING:
    pass

__all__ = ["Shot", "write_report", "make_report", "choose_pictures", "demo_shots", "find_browser", "run_browser",
           "screenshot", "PLOTS", "REPORT_NAME"]

REPORT_NAME = "report.html"

# compare's plots, each with the sentence that says what it shows
PLOTS = (
    ("accuracy_vs_macs.png", "Mean test top-1 of each model (bars: one standard deviation over seeds) against its "
     "multiply-adds per image: higher and further left is better, and models whose bars overlap are not told apart "
     "by this run."),
    ("accuracy_vs_latency.png", "The same accuracies against the measured inference latency of one image on this "
     "machine: a layer's few extra multiply-adds can still cost real time on small feature maps."),
    ("training_curves.png", "Test top-1 after each epoch, mean over seeds: a curve still rising at the end means "
     "that model was stopped before it converged, so its rank may change with longer training."),
)

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #1a1a1a;
       background: #fff; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; } th { background: #f0f0f0; white-space: normal; }
table.recipe td { text-align: left; white-space: normal; }
.plots { display: grid; grid-template-columns: repeat(auto-fit, minmax(480px, 1fr)); gap: 0 1.5em; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption, p.what { color: #333; } .untrained { color: #a00; font-weight: bold; }
.verdict { background: #f6f6f0; border-left: 4px solid #b90; padding: 0.5em 0.8em; }
"""


@dataclass
class Shot:
    """One picture on the page: the registered :class:`Picture` and the :class:`Subject` it is drawn from."""

    picture: Picture
    subject: Subject


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _figure_html(png: bytes, alt: str, caption: str) -> str:
    return (f'<figure><img src="{_data_uri(png)}" alt="{_esc(alt)}">'
            f"<figcaption>{caption}</figcaption></figure>")


def _table_html(header: Sequence[str] | None, rows: Sequence[Sequence[object]], css: str = "") -> str:
    """A table of escaped cells; without ``header``, each row's first cell is its heading."""
    first = "td" if header else "th"
    body = "".join(f"<tr><{first}>{_esc(row[0])}</{first}>" + "".join(f"<td>{_esc(c)}</td>" for c in row[1:])
                   + "</tr>" for row in rows)
    head = "<thead><tr>" + "".join(f"<th>{_esc(h)}</th>" for h in header) + "</tr></thead>" if header else ""
    attribute = f' class="{css}"' if css else ""
    return f"<table{attribute}>{head}<tbody>{body}</tbody></table>"


def _section(anchor: str, title: str, what: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{_esc(title)}</h2><p class="what">{_esc(what)}</p>{body}</section>'


# ------------------------------------------------------------------------------------------------ the sections
def _recipe_html(plan: dict[str, Any], rows: list[dict[str, Any]], machine: str) -> str:
    recipe, seeds = plan["recipe"], plan["seeds"]
    images = f"{recipe['train_subset']} class-balanced" if recipe.get("train_subset") else "all"
    device = rows[0]["runs"][0].get("device", "?") if rows and rows[0]["runs"] else "?"
    items = [("models", ", ".join(plan["models"])), ("seeds", ", ".join(map(str, seeds))),
             ("data", f"{recipe['data']}: {images} training images; accuracy on its test set"),
             ("training", f"{recipe['epochs']} epoch(s), {recipe['optimizer']} lr {recipe['lr']}, batch "
                          f"{recipe['batch_size']}, {recipe['precision']}, on {device}"),
             ("machine", machine)]
    body = _table_html(None, items, "recipe")
    return _section("recipe", "The recipe", "Every model was trained with this one recipe and these seeds; only the "
                    "attention mechanism differs.", body)


def _spread_sentence(rows: list[dict[str, Any]], base: dict[str, Any]) -> str:
    seeds = min(r["seeds"] for r in rows)
    if seeds < 2:
        return ("One seed per model: there is no spread over seeds to judge the differences by, so this table does "
                "not say which mechanism helps; run with two or more seeds.")
    calls = {r["model"]: verdict(r, base) for r in rows if r is not base}
    beyond = [f"{m} ({v})" for m, v in calls.items() if v in ("helped", "hurt")]
    chance = 2 / math.comb(2 * seeds, seeds)  # all seeds of one model above all of the other, when nothing differs
    if not beyond:
        return (f"With {seeds} seeds, every model's change against {base['model']} is within the seed-to-seed spread: "
                "this run does not show that any mechanism helps or hurts at this budget; telling them apart needs "
                "longer training or more seeds.")
    return (f"Beyond the spread in every one of the {seeds} seeds: {', '.join(beyond)}; all the other changes are "
            f"within it. Even when two models do not differ, one lies above the other in every seed "
            f"{chance:.0%} of the time with {seeds} seeds, so read this as a hint, not a result.")


def _comparison_html(rows: list[dict[str, Any]], baseline: str) -> str:
    base = next(r for r in rows if r["model"] == baseline)
    header = ["model", "test top-1 % (mean ± sd)", "each seed", f"change vs {baseline}", "verdict", "params",
              "multiply-adds", "train img/s", "latency ms", "peak train MB"]
    table = []
    for r in rows:
        seeds = ", ".join(f"{100 * run['test_acc']:.2f}" for run in r["runs"])
        change = "" if r is base else f"{r['top1_mean'] - base['top1_mean']:+.2f}"
        table.append([r["model"], f"{r['top1_mean']:.2f} ± {r['top1_std']:.2f}", seeds, change,
                      "" if r is base else verdict(r, base), human_number(r["params"]), human_number(r["macs"]),
                      f"{r['train_img_s']:.0f}", f"{r['latency_ms']:.2f}", f"{r['peak_train_mb']:.0f}"])
    what = (f"Test top-1 of each model, mean and standard deviation over its seeds (each seed's own beside it), and "
            f"what the model costs; a verdict says helped or hurt only where the change against {baseline} exceeds "
            "the spread and every seed lies beyond every seed of the baseline.")
    verdict_html = f'<p class="verdict">{_esc(_spread_sentence(rows, base))}</p>'
    return _section("comparison", "The comparison", what, _table_html(header, table) + verdict_html)


def _plots_html(out: Path) -> str:
    figures = [_figure_html((out / name).read_bytes(), name, _esc(what)) for name, what in PLOTS]
    body = f'<div class="plots">{"".join(figures)}</div>'
    return _section("plots", "Its plots", "Three views of the same runs.", body)


def _shot_html(shot: Shot) -> str:
    subject = shot.subject
    caption = f"{_esc(shot.picture.description)}: {_esc(subject.model_name)}"
    if subject.source:
        caption += f", from {_esc(subject.source)}"
    if not subject.trained:
        caption += (' <span class="untrained">untrained: random weights, so this shows how the mechanism is wired, '
                    "not what it learned</span>")
    try:
        png = png_bytes(shot.picture.draw(subject), 100, bbox_inches="tight")
    except Exception as err:  # noqa: BLE001  (one picture's failure is shown on the page, not the end of the report)
        return f'<p class="untrained">{caption}: could not be drawn ({_esc(type(err).__name__)}: {_esc(err)})</p>'
    return _figure_html(png, f"{shot.picture.name}: {subject.model_name}", caption)


def _pictures_html(shots: Sequence[Shot]) -> str:
    what = ("What the attention layers of the models just trained computed on real images (each from its first "
            "seed's run): the weights and maps each mechanism multiplies its features by.")
    body = "".join(_shot_html(s) for s in shots) or "<p>No compared model has a layer that a picture shows.</p>"
    return _section("pictures", "What the trained models attend to", what, body)


def _speed_html(speed: SpeedTable) -> str:
    c, h, w = speed.shape
    rows = [[r["layer"], r["model"] or "every block (two)", human_number(r["params"]), f"{r['forward_ms']:.2f}",
             f"{r['train_ms']:.2f}"] for r in speed.rows]
    what = (f"Each compared attention layer alone on a batch of {speed.batch} feature maps of {c}x{h}x{w}, medians "
            f"of {speed.reps} runs on {speed.machine} with {speed.threads} threads: the time a layer adds to each "
            f"block it sits in, against the {REFERENCE.split()[0]} convolution that every basic block runs twice "
            "(SK replaces one of them).")
    table = _table_html(["layer", "in model", "params", "forward ms", "forward+backward ms"], rows)
    return _section("speed", "Speed of the attention layers", what, table)


# ------------------------------------------------------------------------------------------------ the page
def write_report(out_dir: str | Path, *, plan: dict[str, Any] | None = None, rows: list[dict[str, Any]] | None = None,
                 shots: Sequence[Shot] = (), speed: SpeedTable | None = None, baseline: str | None = None,
                 machine: str | None = None) -> Path:
    """Write ``out_dir/report.html`` for the comparison in ``out_dir`` and return its path.

    ``plan`` and ``rows`` default to the comparison's own files (:func:`visionattn.compare.read_comparison`); the
    plots are read from ``out_dir`` (``visionattn compare`` writes them); ``shots`` are the pictures and ``speed``
    the speed table (left out when None); ``baseline`` defaults to the first model.
    """
    out = Path(out_dir)
    if plan is None or rows is None:
        plan, rows = read_comparison(out)
    check_writable_dir(out, "out")
    baseline = check_choice("baseline", baseline, [r["model"] for r in rows]) if baseline else rows[0]["model"]
    machine = machine or (speed.machine if speed else "not recorded")
    data = _esc(plan["recipe"]["data"])
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [f"<h1>Which attention helps on {data}, and at what cost</h1>",
             f"<p>{len(rows)} models x {len(plan['seeds'])} seeds, written {_esc(stamp)} by visionattn.</p>",
             _recipe_html(plan, rows, machine), _comparison_html(rows, baseline), _plots_html(out),
             _pictures_html(shots)]
    if speed is not None:
        parts.append(_speed_html(speed))
    page = ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>visionattn report: {data}</title><style>{_STYLE}</style></head>\n<body>\n"
            + "\n".join(parts) + "\n</body></html>\n")
    from visionattn.checkpoint import atomic_write

    return atomic_write(out / REPORT_NAME, page.encode("utf-8"))


# ------------------------------------------------------------------------------------------------ from a run
def choose_pictures(models: Sequence[str], limit: int = 4) -> list[tuple[str, Picture]]:
    """``(model, picture)`` pairs, at most one per model and ``limit`` in all: a registered picture whose ``accepts``
    takes the (untrained) model, the one named like the model (``se`` for ``se_resnet20``) first."""
    import torch

    import visionattn.show.catalog  # noqa: F401  (registers every picture)
    from visionattn.registry import create_model
    from visionattn.show.registry import PICTURES

    check_positive("limit", limit)
    candidates = [p for p in PICTURES.values() if p.accepts is not None and p.default_model]
    chosen: list[tuple[str, Picture]] = []
    for model_name in models:
        if len(chosen) == limit or not candidates:
            break
        with torch.device("meta"):  # only its modules are looked at: no memory, no initialisation
            model = create_model(model_name)
        fitting = sorted((p for p in candidates if p.accepts(model)), key=lambda p: not model_name.startswith(p.name))
        if fitting:
            chosen.append((model_name, fitting[0]))
    return chosen


def demo_shots(plan: dict[str, Any], rows: list[dict[str, Any]], limit: int = 4) -> list[Shot]:
    """The pictures of :func:`choose_pictures`, each drawn from its model's first seed's run directory."""
    from visionattn.show.inputs import build_subject

    run_dirs = {r["model"]: r["runs"][0]["run_dir"] for r in rows}
    data_dir = plan["recipe"].get("data_dir")
    return [Shot(picture, build_subject(picture, checkpoint=run_dirs[model], data_dir=data_dir))
            for model, picture in choose_pictures(list(run_dirs), limit)]


def make_report(out_dir: str | Path, *, pictures: int = 4, log: Callable[[str], None] = print,
                argument: str = "out") -> Path:
    """Everything of the report from the finished comparison in ``out_dir``: read it, draw up to ``pictures``
    pictures from its runs, time its attention layers (:func:`visionattn.show.speed.measure_layer_speed`, under a
    minute on 2 cores), write ``report.html``. A folder without a finished comparison is refused first, as
    ``argument`` (how the caller names ``out_dir``)."""
    from visionattn.show.speed import measure_layer_speed

    plan, rows = read_comparison(out_dir, argument)
    check_writable_dir(Path(out_dir), argument)
    log(f"report: drawing pictures from the runs in {out_dir}")
    shots = demo_shots(plan, rows, pictures) if pictures else []
    log("report: timing the attention layers")
    speed = measure_layer_speed(plan["models"])
    return write_report(out_dir, plan=plan, rows=rows, shots=shots, speed=speed)


# ------------------------------------------------------------------------------------------------ a browser
def find_browser() -> str | None:
    """The path of Chromium (Debian's ``chromium``, elsewhere often ``chromium-browser``), or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def run_browser(*args: str, timeout: float = 120) -> str:
    """Run headless Chromium with ``args`` (e.g. ``--dump-dom URL``) and return what it printed."""
    browser = find_browser()
    if browser is None:
        raise UsageError("no chromium on PATH; needed to render the page (Debian: apt-get install chromium)")
    sandbox = ["--no-sandbox"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []  # Chromium refuses root
    done = subprocess.run([browser, "--headless", "--disable-gpu", "--hide-scrollbars", *sandbox, *args],
                          capture_output=True, text=True, timeout=timeout, check=True)
    return done.stdout


def screenshot(page: str | Path, png: str | Path, size: tuple[int, int] = (1200, 2400)) -> Path:
    """A PNG of the top ``size`` (width, height) pixels of the HTML file ``page``, as headless Chromium draws it."""
    png = Path(png).resolve()
    run_browser(f"--screenshot={png}", f"--window-size={size[0]},{size[1]}", Path(page).resolve().as_uri())
    return png
