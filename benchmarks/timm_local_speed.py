"""halonet26t and Swin-T beside timm's, in one process: strict loads, equal outputs, and speed.

Run in an environment with timm (never a dependency of the project):

    PYTHONPATH=../shared/tools/timm_side_by_side/torchvision_stub ~/timm-venv/bin/python \\
        benchmarks/timm_local_speed.py [--batch 8] [--repeats 3] [--iters 3] [--threads 2] [--markdown out.md]

- ``halonet26t`` at 256 x 256: timm's state dict under our names (``convert_timm_halonet_state_dict``), loaded with
  ``strict=True`` into ``create_model("halonet26t", mask_padding=False)`` (timm's zero-padded border keys; our
  default masks them, which changes the border outputs on purpose), so the outputs can be compared and the same
  computation is timed.
- ``swin_tiny_patch4_window7_224`` at 224 x 224: the same names as timm's, loaded strictly both ways.

Timing is ``benchmarks/timm_parity.py``'s: the two models' calls alternate (who goes first alternates too), four
modes (inference / training step x fp32 / bf16 autocast), ``--repeats`` runs of ``--iters`` calls; the table gives
the median over runs of timm time / our time (above 1.00 ours is faster) and its range.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import timm_parity  # noqa: E402

import visionattn  # noqa: E402
from visionattn.cli import positive_int  # noqa: E402
from visionattn.models.halonet import convert_timm_halonet_state_dict  # noqa: E402

# ours: (timm name, input side, our keywords, converter of timm's state dict or None)
PAIRS = {
    "halonet26t": ("halonet26t", 256, {"mask_padding": False}, convert_timm_halonet_state_dict),
    "swin_tiny_patch4_window7_224": ("swin_tiny_patch4_window7_224", 224, {}, None),
}


def row(timm, name: str, args: argparse.Namespace) -> dict[str, object]:
    timm_name, side, kwargs, convert = PAIRS[name]
    torch.manual_seed(0)
    theirs = timm.create_model(timm_name)
    ours = visionattn.create_model(name, **kwargs)
    timm_parity.randomise_norms(theirs, seed=1)
    state = theirs.state_dict()
    ours.load_state_dict(convert(state) if convert else state, strict=True)
    x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(2))
    diff = timm_parity.max_abs_diff(ours, theirs, x)
    result: dict[str, object] = {"name": name, "side": side, "diff": diff,
                                 "params": sum(p.numel() for p in ours.parameters())}
    timing = argparse.Namespace(batch=args.batch, img_size=side, repeats=args.repeats, iters=args.iters)
    for mode, runs in timm_parity.measure(ours, theirs, timing).items():
        result[mode] = timm_parity.summarise(runs)
        result[f"{mode}_runs"] = " ".join(f"{t / o:.3f}" for o, t in runs)
    return result


def markdown(rows: list[dict[str, object]], args: argparse.Namespace, version: str) -> str:
    lines = ["| model | input | params | strict load, max abs diff | " + " | ".join(
        m.replace("_", " ") for m in timm_parity.MODES) + " |", "|---|---|---:|---|" + "---|" * len(timm_parity.MODES)]
    for r in rows:
        cells = [f"{r[m]['ours_ms']:.0f} / {r[m]['timm_ms']:.0f} ms: **{r[m]['ratio']:.2f}** "
                 f"({r[m]['ratio_min']:.2f}-{r[m]['ratio_max']:.2f})" for m in timm_parity.MODES]
        lines.append(f"| `{r['name']}` | {r['side']} | {r['params']:,} | yes, {r['diff']:.1e} | " + " | ".join(cells)
                     + " |")
    runs = [f"`{r['name']}` {m}: {r[f'{m}_runs']}" for r in rows for m in timm_parity.MODES]
    return (f"timm {version}, torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}; cells: "
            f"our / timm median ms, **median over {args.repeats} runs of timm time / our time** (range), each run "
            f"the median of {args.iters} interleaved calls; above 1.00 ours is faster\n\n" + "\n".join(lines)
            + "\n\nratio of every run: " + "; ".join(runs) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(PAIRS), default=list(PAIRS))
    parser.add_argument("--batch", type=positive_int, default=8)
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--iters", type=positive_int, default=3)
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    args = parser.parse_args()
    try:
        import timm
    except ImportError as err:
        print(timm_parity.SETUP.format(error=err), file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rows = []
    for name in args.models:
        rows.append(row(timm, name, args))
        print(f"{name}: done ({time.perf_counter() - start:.0f} s)", flush=True)
    text = markdown(rows, args, timm.__version__)
    print("\n" + text)
    if args.markdown:
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
