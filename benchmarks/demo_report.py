"""The README's pictures of the main job: a screenshot of its report and the pictures it draws from the trained models.

Run after ``make demo`` (which leaves ``runs/demo`` with its ``report.html``)::

    .venv/bin/python benchmarks/demo_report.py [--out runs/demo] [--docs docs/readme]

Writes ``<docs>/report.png`` (the top of the page as headless Chromium draws it, 1200 x 2400) and
``<docs>/demo_<picture>.png`` for each of ``--pictures`` that the report shows, drawn again from the same runs (each
model's first seed) by :func:`visionattn.show.report.demo_shots`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

from visionattn.compare import read_comparison
from visionattn.show.report import REPORT_NAME, demo_shots, screenshot

matplotlib.use("Agg")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/demo", help="the demo's folder (default runs/demo)")
    parser.add_argument("--docs", default="docs/readme", help="where the PNGs go (default docs/readme)")
    parser.add_argument("--pictures", default="se,cbam,sk",
                        help="which of the report's pictures to write (default se,cbam,sk: the README's)")
    args = parser.parse_args()
    wanted = set(args.pictures.split(","))
    out, docs = Path(args.out), Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    print(f"wrote {screenshot(out / REPORT_NAME, docs / 'report.png')}")
    plan, rows = read_comparison(out, "--out")
    for shot in demo_shots(plan, rows):
        if shot.picture.name not in wanted:
            continue
        path = docs / f"demo_{shot.picture.name}.png"
        fig = shot.picture.draw(shot.subject)
        fig.savefig(path, dpi=90, bbox_inches="tight")
        print(f"wrote {path} ({shot.picture.description}: {shot.subject.model_name}, {shot.subject.source})")


if __name__ == "__main__":
    main()
