"""Our models beside timm's, one process: strict state-dict loads both ways, equal outputs, and speed.

For every pair of :data:`visionattn.models.zoo.TIMM_NAMES` (or the model names given, ours), it builds our model
and timm's (1000 classes) and

1. gives timm's model random BatchNorm statistics and affine parameters (timm zero-initialises the last BN of
   every block, which would make the residual branches vanish and equality trivial), loads its state dict into
   ours with ``strict=True`` and compares the eval outputs on a 2 x 3 x 224 x 224 input (max abs difference);
   then the other way: ours re-randomised, loaded into timm's with ``strict=True``, compared again;
2. times inference (eval, ``no_grad``) and one training step (train mode: forward, cross-entropy, backward,
   SGD step) in fp32 and in bf16 (``torch.autocast("cpu", torch.bfloat16)``, the backward outside it), with the
   same weights in both models. Ours and timm's alternate call by call (who goes first alternates too), so a
   slow second of a shared machine falls on both. One run is, per mode, one warm-up call each and then the
   median of ``--iters`` calls each; the whole measurement is repeated ``--repeats`` times and the table gives
   the median over runs of the ratio timm time / our time (above 1.0: ours is faster) with its range.

timm needs torchvision, which has no CPU build here: run it in the timm virtual environment with the stub on the
path (one-time setup in ``../shared/tools/timm_side_by_side/README.md``). Nothing in the package imports timm::

    PYTHONPATH=../shared/tools/timm_side_by_side/torchvision_stub ~/timm-venv/bin/python \\
        benchmarks/timm_parity.py [resnet50 sknet50 ...] [--batch 8 --img-size 224 --repeats 3 --iters 3 \\
        --threads 2 --csv out.csv --markdown out.md]

Defaults: batch 8 at 224 x 224 on 2 threads, the setting of the issue's measurements and the input size of the
ImageNet checkpoints these models load; batch 8 keeps the training-mode BatchNorms over pooled maps (one value
per sample) well-conditioned. A ResNet-50 pair took 23 s at 160 x 160 on 2 quiet cores, so the 19 pairs (about
25 ResNet-50s of work) should take some 20-25 minutes at 224 x 224; ``--img-size 160`` halves that. Run it on an
idle machine: a second busy process on the same cores makes 2-thread timings erratic (each parallel region waits
for a descheduled thread), where ``--threads 1`` is much steadier. The equality check always runs at 224 x 224.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from visionattn.cli import positive_int
from visionattn.errors import did_you_mean
from visionattn.models.zoo import TIMM_NAMES

MODES = ("infer_fp32", "infer_bf16", "train_fp32", "train_bf16")
SETUP = ("timm is not importable ({error}). This benchmark runs timm beside visionattn in one process; timm needs "
         "torchvision, which has no CPU build here, so use a virtual environment of its own with a torchvision "
         "stub (../shared/tools/timm_side_by_side/README.md):\n"
         "    python3 -m venv ~/timm-venv && ~/timm-venv/bin/pip install -q torch==2.13.0\n"
         "    ~/timm-venv/bin/pip install -q --no-deps timm==1.0.31 && ~/timm-venv/bin/pip install -q pyyaml "
         "safetensors huggingface_hub\n"
         "    ~/timm-venv/bin/pip install -q -e . --no-deps && ~/timm-venv/bin/pip install -q numpy einops\n"
         "    PYTHONPATH=../shared/tools/timm_side_by_side/torchvision_stub ~/timm-venv/bin/python "
         "benchmarks/timm_parity.py")


def randomise_norms(model: nn.Module, seed: int) -> None:
    """Random running statistics and affine parameters for every BatchNorm, so that equal outputs mean the loaded
    weights really are used (and no residual branch is silenced by a zero-initialised last BN)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                module.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(n, generator=gen))
                module.weight.copy_(0.5 + torch.rand(n, generator=gen))
                module.bias.copy_(0.1 * torch.randn(n, generator=gen))


def load_strict(dst: nn.Module, src: nn.Module) -> str:
    """Load ``src``'s state dict into ``dst`` with strict=True: "" on success, else the error's first line."""
    try:
        dst.load_state_dict(src.state_dict(), strict=True)
    except RuntimeError as err:
        return str(err).strip().splitlines()[0][:120]
    return ""


@torch.no_grad()
def max_abs_diff(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    a.eval(), b.eval()
    return (a(x) - b(x)).abs().max().item()


def check_parity(ours: nn.Module, theirs: nn.Module) -> dict[str, object]:
    """Strict loads both ways and the output differences after each (eval, 2 x 3 x 224 x 224)."""
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    result: dict[str, object] = {}
    randomise_norms(theirs, seed=2)
    result["timm_to_ours"] = load_strict(ours, theirs)
    result["diff_timm_to_ours"] = float("nan") if result["timm_to_ours"] else max_abs_diff(ours, theirs, x)
    randomise_norms(ours, seed=3)
    result["ours_to_timm"] = load_strict(theirs, ours)
    result["diff_ours_to_timm"] = float("nan") if result["ours_to_timm"] else max_abs_diff(ours, theirs, x)
    return result


def make_step(model: nn.Module, mode: str, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """One call of ``mode``: an inference forward or a training step, in fp32 or under bf16 autocast."""
    bf16 = mode.endswith("bf16")

    def cast():
        return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()

    if mode.startswith("infer"):
        def infer() -> None:
            with torch.no_grad(), cast():
                model(x)
        return infer
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)

    def train() -> None:
        opt.zero_grad(set_to_none=True)
        with cast():
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    return train


def time_pair(ours: Callable[[], None], theirs: Callable[[], None], iters: int) -> tuple[float, float]:
    """Median seconds of ``ours`` and ``theirs`` over ``iters`` calls each, interleaved, after one warm-up each."""
    ours(), theirs()
    times: dict[int, list[float]] = {0: [], 1: []}
    fns = (ours, theirs)
    for i in range(iters):
        for which in ((0, 1) if i % 2 == 0 else (1, 0)):
            start = time.perf_counter()
            fns[which]()
            times[which].append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def measure(ours: nn.Module, theirs: nn.Module, args: argparse.Namespace) -> dict[str, list[tuple[float, float]]]:
    """``{mode: [(our seconds, timm seconds) per run]}``."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(args.batch, 3, args.img_size, args.img_size, generator=gen)
    y = torch.randint(0, 1000, (args.batch,), generator=gen)
    runs: dict[str, list[tuple[float, float]]] = {mode: [] for mode in MODES}
    for _ in range(args.repeats):
        for mode in MODES:
            for model in (ours, theirs):
                model.train(mode.startswith("train"))
            runs[mode].append(time_pair(make_step(ours, mode, x, y), make_step(theirs, mode, x, y), args.iters))
    return runs


def summarise(runs: list[tuple[float, float]]) -> dict[str, float]:
    ratios = [t / o for o, t in runs]
    return {"ours_ms": 1e3 * statistics.median(o for o, _ in runs),
            "timm_ms": 1e3 * statistics.median(t for _, t in runs),
            "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)}


def run_pair(timm, ours_name: str, args: argparse.Namespace) -> dict[str, object]:
    import visionattn

    timm_name = TIMM_NAMES[ours_name]
    torch.manual_seed(0)
    ours = visionattn.create_model(ours_name)
    theirs = timm.create_model(timm_name, pretrained=False)
    row: dict[str, object] = {"ours": ours_name, "timm": timm_name,
                              "params_ours": sum(p.numel() for p in ours.parameters()),
                              "params_timm": sum(p.numel() for p in theirs.parameters())}
    row.update(check_parity(ours, theirs))
    if not args.no_timing:
        for mode, runs in measure(ours, theirs, args).items():
            for key, value in summarise(runs).items():
                row[f"{mode}_{key}"] = value
            row[f"{mode}_runs"] = " ".join(f"{t / o:.3f}" for o, t in runs)
    return row


def markdown(rows: list[dict[str, object]], args: argparse.Namespace) -> str:
    head = ["ours", "timm", "strict load (both ways)", "max abs diff"]
    timed = not args.no_timing
    if timed:
        head += [m.replace("_", " ") for m in MODES]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        loads = "yes" if not row["timm_to_ours"] and not row["ours_to_timm"] else (
            f"no: {row['timm_to_ours'] or row['ours_to_timm']}")
        diff = max(row["diff_timm_to_ours"], row["diff_ours_to_timm"])
        cells = [f"`{row['ours']}`", f"`{row['timm']}`", loads, f"{diff:.1e}" if diff == diff else "-"]
        if timed:
            cells += [f"{row[f'{m}_ours_ms']:.0f} / {row[f'{m}_timm_ms']:.0f} ms: **{row[f'{m}_ratio']:.2f}** "
                      f"({row[f'{m}_ratio_min']:.2f}-{row[f'{m}_ratio_max']:.2f})" for m in MODES]
        lines.append("| " + " | ".join(cells) + " |")
    if not timed:
        return ("strict loads both ways; max abs difference of the eval outputs (2 x 3 x 224 x 224, random BN "
                "statistics), the larger of the two directions\n\n" + "\n".join(lines) + "\n")
    note = (f"batch {args.batch}, {args.img_size}x{args.img_size}, {args.threads} threads, torch {torch.__version__}; "
            f"cells: our / timm median ms, **median over {args.repeats} runs of timm time / our time** (range), "
            f"each run the median of {args.iters} interleaved calls; above 1.00 ours is faster")
    return note + "\n\n" + "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", help=f"our model names (default: all {len(TIMM_NAMES)} of TIMM_NAMES)")
    parser.add_argument("--batch", type=int, default=8, help="batch size of the timings (default 8)")
    parser.add_argument("--img-size", type=positive_int, default=224, help="input side of the timings (default 224)")
    parser.add_argument("--repeats", type=positive_int, default=3, help="runs of the whole measurement (default 3)")
    parser.add_argument("--iters", type=positive_int, default=3, help="timed calls per model, mode and run (default 3)")
    parser.add_argument("--threads", type=positive_int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--no-timing", action="store_true", help="only the strict loads and output differences")
    parser.add_argument("--csv", type=Path, help="also write every number (and each run's ratio) as CSV here")
    parser.add_argument("--markdown", type=Path, help="also write the Markdown table here")
    args = parser.parse_args(argv)
    unknown = [name for name in args.models if name not in TIMM_NAMES]
    if unknown:
        parser.error(f"models: {unknown[0]!r} has no timm counterpart in TIMM_NAMES"
                     f"{did_you_mean(unknown[0], TIMM_NAMES)}; choose from {', '.join(TIMM_NAMES)}")
    if args.batch < 2:
        parser.error(f"--batch must be >= 2 (a training BatchNorm over pooled maps needs 2 samples), got {args.batch}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import timm
    except ImportError as err:
        print(SETUP.format(error=err), file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.models or list(TIMM_NAMES):
        start = time.perf_counter()
        row = run_pair(timm, name, args)
        rows.append(row)
        ratios = "  ".join(f"{m} {row[f'{m}_ratio']:.2f}" for m in MODES) if not args.no_timing else ""
        print(f"{name} = timm {row['timm']}: diff {row['diff_timm_to_ours']:.1e} / {row['diff_ours_to_timm']:.1e}  "
              f"{ratios}  ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
    table = markdown(rows, args)
    print(table)
    if args.markdown:
        args.markdown.write_text(table)
    if args.csv:
        with args.csv.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    failed = [r["ours"] for r in rows if r["timm_to_ours"] or r["ours_to_timm"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
