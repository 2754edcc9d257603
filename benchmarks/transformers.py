"""ViT speed on the CPU: images/s and achieved GFLOP/s beside torch.mm's, and ViT-S/16 beside timm's.

For ViT-Ti/16 and ViT-S/16 at 224 x 224 (batch 8) and the small-image ViT (``vit_patch4_28``, 1 x 28 x 28,
batch 128), in the four modes inference / training x fp32 / bf16 (``torch.autocast("cpu", torch.bfloat16)``, the
backward outside it, as the trainer does):

- images/s: the batch over the median time of ``--iters`` calls after one warm-up call; an inference call is an
  eval forward without gradients, a training call a step (forward, cross-entropy, backward, SGD step);
- achieved GFLOP/s: 2 x the multiply-adds of the pass (``visionattn.complexity``: the forward, or forward and
  backward for training, attention's QK^T and AV counted on the fused path) over its time;
- beside it, torch.mm's GFLOP/s in the same precision on the model's largest product (its MLP's fc1: (B N, D) x
  (D, 4D)), timed in the same run right after the model, and the model's rate as a share of it.

With timm importable (run in the timm virtual environment, ``../shared/tools/timm_side_by_side/README.md``),
ViT-S/16 is also timed beside timm's ``vit_small_patch16_224`` in one process, with timm's weights loaded
strictly into ours: the approach (and the functions) of ``benchmarks/timm_parity.py``: the two models' calls
alternate (who goes first alternates too), ``--repeats`` runs of ``--iters`` calls per mode, and the table gives
the median over runs of timm time / our time (above 1.00 ours is faster) and its range. Without timm that table
is left out, and says so. Nothing in the package imports timm::

    PYTHONPATH=../shared/tools/timm_side_by_side/torchvision_stub ~/timm-venv/bin/python \\
        benchmarks/transformers.py [--models ...] [--timm vit_small_patch16_224] [--iters 5] [--repeats 3] \\
        [--timm-iters 3] [--threads 2] [--markdown out.md]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import timm_parity  # noqa: E402  (the side-by-side instrument's functions: make_step, measure, check_parity)

from visionattn import create_model  # noqa: E402
from visionattn.bench import median_ms  # noqa: E402
from visionattn.cli import positive_int  # noqa: E402
from visionattn.complexity import count_training_macs, mac_counts  # noqa: E402

# name: (batch, input (C, H, W))
CONFIGS: dict[str, tuple[int, tuple[int, int, int]]] = {
    "vit_tiny_patch16_224": (8, (3, 224, 224)),
    "vit_small_patch16_224": (8, (3, 224, 224)),
    "vit_patch4_28": (128, (1, 28, 28)),
}
MODES = timm_parity.MODES  # infer_fp32, infer_bf16, train_fp32, train_bf16
CPU = torch.device("cpu")


def pass_macs(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """Multiply-adds of one inference pass and of one training pass (forward + backward) on the batch ``x``."""
    infer = mac_counts(model, x)
    return {"infer": infer.total, "attn": infer.attention, "train": count_training_macs(model, x)}


def mm_gflops(rows: int, inner: int, cols: int, bf16: bool, iters: int) -> float:
    """torch.mm's GFLOP/s on a (rows, inner) x (inner, cols) product, in fp32 or bf16."""
    dtype = torch.bfloat16 if bf16 else torch.float32
    a, b = torch.randn(rows, inner, dtype=dtype), torch.randn(inner, cols, dtype=dtype)
    ms = median_ms(lambda: torch.mm(a, b), CPU, warmup=2, reps=max(5, iters))
    return 2 * rows * inner * cols / ms / 1e6


def model_rows(name: str, args: argparse.Namespace) -> list[dict[str, object]]:
    """One row per mode for model ``name``: ms per batch, images/s, GFLOP/s, torch.mm's GFLOP/s."""
    batch, shape = CONFIGS[name]
    torch.manual_seed(0)
    model = create_model(name)
    x = torch.randn(batch, *shape)
    y = torch.randint(0, model.num_classes, (batch,))
    macs = pass_macs(model, x)
    fc1 = model.blocks[0].mlp.fc1
    tokens = model.grid[0] * model.grid[1] + model.num_prefix_tokens
    rows = []
    for mode in MODES:
        model.train(mode.startswith("train"))
        ms = median_ms(timm_parity.make_step(model, mode, x, y), CPU, warmup=1, reps=args.iters)
        flops = 2 * macs["train" if mode.startswith("train") else "infer"]
        mm = mm_gflops(batch * tokens, fc1.in_features, fc1.out_features, mode.endswith("bf16"), args.iters)
        rows.append({"model": name, "mode": mode, "batch": batch, "ms": ms, "img_s": batch / ms * 1e3,
                     "gmacs": flops / 2e9, "gflop_s": flops / ms / 1e6, "mm_gflop_s": mm,
                     "attn_share": macs["attn"] / macs["infer"]})
    return rows


def timm_rows(timm, name: str, args: argparse.Namespace) -> dict[str, object]:
    """Ours and timm's ``name`` side by side: strict loads, output difference, and the timed ratios."""
    torch.manual_seed(0)
    ours, theirs = create_model(name), timm.create_model(name, pretrained=False)
    row: dict[str, object] = {"model": name, **timm_parity.check_parity(ours, theirs)}
    one = argparse.Namespace(batch=CONFIGS[name][0], img_size=CONFIGS[name][1][1], repeats=1, iters=args.timm_iters)
    runs: dict[str, list[tuple[float, float]]] = {mode: [] for mode in MODES}
    for i in range(args.repeats):  # one run at a time, so that a long run shows its progress
        for mode, (run,) in timm_parity.measure(ours, theirs, one).items():
            runs[mode].append(run)
        print(f"{name} beside timm, run {i + 1}: " + "  ".join(f"{m} {t / o:.3f}" for m, ((o, t), *_) in
                                                             ((m, runs[m][-1:]) for m in MODES)),
              file=sys.stderr, flush=True)
    for mode in MODES:
        row[mode] = timm_parity.summarise(runs[mode])
        row[f"{mode}_runs"] = [t / o for o, t in runs[mode]]
    return row


def markdown_models(rows: list[dict[str, object]]) -> str:
    lines = ["| model | batch | mode | ms / batch | images/s | GMACs / batch | GFLOP/s | torch.mm GFLOP/s "
             "| share of mm |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| `{r['model']}` | {r['batch']} | {r['mode'].replace('_', ' ')} | {r['ms']:.0f} | "
                     f"{r['img_s']:.1f} | {r['gmacs']:.1f} | {r['gflop_s']:.0f} | {r['mm_gflop_s']:.0f} | "
                     f"{r['gflop_s'] / r['mm_gflop_s']:.0%} |")
    return "\n".join(lines)


def markdown_timm(rows: list[dict[str, object]], args: argparse.Namespace) -> str:
    lines = ["| model | strict load (both ways), max abs diff | " + " | ".join(m.replace("_", " ") for m in MODES)
             + " |", "|---|---|" + "---|" * len(MODES)]
    for r in rows:
        loads = "yes" if not r["timm_to_ours"] and not r["ours_to_timm"] else f"no: {r['timm_to_ours']}"
        diff = max(r["diff_timm_to_ours"], r["diff_ours_to_timm"])
        cells = [f"{r[m]['ours_ms']:.0f} / {r[m]['timm_ms']:.0f} ms: **{r[m]['ratio']:.2f}** "
                 f"({r[m]['ratio_min']:.2f}-{r[m]['ratio_max']:.2f})" for m in MODES]
        lines.append(f"| `{r['model']}` | {loads}, {diff:.1e} | " + " | ".join(cells) + " |")
    note = (f"cells: our / timm median ms per batch, **median over {args.repeats} runs of timm time / our time** "
            f"(range); each run the median of {args.timm_iters} interleaved calls; above 1.00 ours is faster")
    return note + "\n\n" + "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=list(CONFIGS), choices=list(CONFIGS),
                        help="models of the speed table (default: all three)")
    parser.add_argument("--timm", nargs="*", default=["vit_small_patch16_224"], choices=list(CONFIGS)[:2],
                        help="models timed beside timm's (default: ViT-S/16; none: skip)")
    parser.add_argument("--iters", type=positive_int, default=5, help="timed calls per model and mode (default 5)")
    parser.add_argument("--repeats", type=positive_int, default=3, help="side-by-side runs against timm (default 3)")
    parser.add_argument("--timm-iters", type=positive_int, default=3, help="timed calls per model and mode in each "
                        "side-by-side run (default 3)")
    parser.add_argument("--threads", type=positive_int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--markdown", type=Path, help="also write the tables here")
    args = parser.parse_args(argv)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    head = (f"torch {torch.__version__}, {args.threads} threads; speed: median of {args.iters} calls after one "
            "warm-up; GFLOP/s = 2 x multiply-adds of the pass / its time (training: forward + backward); torch.mm "
            "on the model's fc1 product (B N, D) x (D, 4D) in the same precision")
    rows = []
    for name in args.models:
        rows += model_rows(name, args)
        print(f"{name}: done ({time.perf_counter() - start:.0f} s)\n{markdown_models(rows[-len(MODES):])}",
              file=sys.stderr, flush=True)
    shares = ", ".join(f"`{n}` {next(r['attn_share'] for r in rows if r['model'] == n):.1%}" for n in args.models)
    parts = [head, markdown_models(rows), f"attention's share of the inference multiply-adds: {shares}"]
    if args.timm:
        try:
            import timm
        except ImportError as err:
            parts.append(f"timm is not importable here ({err}): no side-by-side table (run in the timm virtual "
                         "environment, see the module docstring)")
        else:
            side = [timm_rows(timm, name, args) for name in args.timm]
            parts.append(f"beside timm {timm.__version__} (`TIMM_FUSED_ATTN` default: fused attention), same "
                         "weights:\n\n" + markdown_timm(side, args))
            for r in side:
                runs = "; ".join(f"{m} " + " ".join(f"{v:.3f}" for v in r[f"{m}_runs"]) for m in MODES)
                parts.append(f"`{r['model']}` ratio of every run: {runs}")
    text = "\n\n".join(parts) + f"\n\n({time.perf_counter() - start:.0f} s in all)\n"
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
