"""Does starting from a checkpoint pay? ``visionattn train --pretrained`` against training from scratch.

No public weights can be fetched here, so the script makes its own "pretrained" checkpoint, then fine-tunes it on
a different, small task, every run through the command line:

1. Source task: ResNet-20 (small-image) trained on Fashion-MNIST (a class-balanced subset, a few epochs) with
   ``visionattn train``; its final ``model.safetensors`` is in the ecosystem's layout (``conv1``, ``layer1``..,
   ``fc``) and records the run's normalisation in its metadata.
2. Target task: scikit-learn's bundled handwritten digits (8x8 grey, 1797 images, nothing to download) written as
   an image folder (``train/<digit>/`` with a few images per class, ``val/<digit>/`` with 100 others per class,
   the same validation images for every training size) and read at 28x28 (``--image-size 28``). For every target
   size and seed the same recipe trains the model twice, once from the checkpoint (``--pretrained``; the
   classifier is replaced for the 10 digits, the images normalised as the source run did) and once from scratch
   (the data's own statistics). The SE variant (``se_resnet20``) starts
   from the same plain ResNet-20 file: its backbone comes from the file and only its new SE layers from their
   initialisation, the case of a researcher who adds attention to a pretrained network.

Printed (and with ``--report`` written as Markdown): the validation top-1 of each start, mean and spread over the
seeds, and the training time per run. Timings depend on what else runs on the machine; the accuracies are what the
comparison is about. A finished run is read back, so the same command again only prints the table.

Usage::

    python benchmarks/finetune.py                       # about 10-15 minutes on 2 shared CPU cores
    python benchmarks/finetune.py --per-class 10 --seeds 0 --models resnet20 --source-subset 3000  # a quick look
    python benchmarks/finetune.py --report benchmarks/finetune.md

With real weights, the real comparison (ImageNet ResNet-50 from timm, fine-tuned on your own image folder) is two
commands; fetch the file once where there is internet, e.g. from the Hugging Face Hub
(``huggingface-cli download timm/resnet50.a1_in1k model.safetensors --local-dir weights``, or the browser:
https://huggingface.co/timm/resnet50.a1_in1k/resolve/main/model.safetensors)::

    python -m visionattn train --model resnet50 --pretrained weights/model.safetensors --data path/to/folder \\
        --image-size 224 --channels rgb --epochs 10 --lr 0.01 --batch-size 64 --run-dir runs/resnet50-finetuned
    python -m visionattn train --model resnet50 --data path/to/folder \\
        --image-size 224 --channels rgb --epochs 10 --lr 0.01 --batch-size 64 --run-dir runs/resnet50-scratch

(``--model cbam_resnet50`` with the same file starts CBAM's backbone from the ImageNet weights; ``visionattn
compare --models resnet50,cbam_resnet50 --pretrained weights/model.safetensors ...`` trains both, with seeds.)
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REAL_WEIGHTS = "https://huggingface.co/timm/resnet50.a1_in1k/resolve/main/model.safetensors"


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "finetune",
                   help="working folder (default runs/finetune)")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST files (default: the trainer's)")
    p.add_argument("--source-subset", type=int, default=10000, help="Fashion-MNIST training images (default 10000)")
    p.add_argument("--source-epochs", type=int, default=3, help="epochs of the source run (default 3)")
    p.add_argument("--per-class", type=_ints, default=[10, 50],
                   help="target training images per digit, comma-separated (default 10,50)")
    p.add_argument("--val-per-class", type=int, default=100,
                   help="validation images per digit, the same for every training size (default 100)")
    p.add_argument("--models", type=_names, default=["resnet20", "se_resnet20"],
                   help="target models, each started from the source's resnet20 file (default resnet20,se_resnet20)")
    p.add_argument("--seeds", type=_ints, default=[0, 1, 2], help="seeds of the target runs (default 0,1,2)")
    p.add_argument("--epochs", type=int, default=15, help="target epochs (default 15)")
    p.add_argument("--batch-size", type=int, default=32, help="target batch size (default 32)")
    p.add_argument("--lr", type=float, default=0.05, help="target peak learning rate, SGD (default 0.05)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads per run (default 1: on shared cores more threads wait on each other)")
    p.add_argument("--precision", default="fp32", help="fp32 or bf16 (default fp32)")
    p.add_argument("--report", type=Path, default=None, help="also write the table and commands as Markdown here")
    p.add_argument("--note", default="", help="a sentence for the report, e.g. on what else ran on the machine")
    return p.parse_args(argv)


def _run(argv: list[str], log: Path) -> bool:
    """``python -m visionattn train ARGV``; resumed (or read back, when finished) where its run directory holds an
    earlier start: the trainer refuses the resume if ARGV's recipe differs from that run's. True when it trained."""
    run_dir = Path(argv[argv.index("--run-dir") + 1])
    finished = (run_dir / "result.json").is_file()
    if (run_dir / "config.json").is_file():
        argv = ["--resume", str(run_dir), *argv]
    cmd = [sys.executable, "-m", "visionattn", "train", *argv]
    with log.open("a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}; see {log}")
    return not finished


def _result(run_dir: Path) -> dict:
    return json.loads((run_dir / "result.json").read_text())


def write_digits(root: Path, per_class: int, val_per_class: int, seed: int = 0) -> Path:
    """scikit-learn's digits as PNGs: per digit a seeded order, the first ``per_class`` images for training, the
    last ``val_per_class`` for validation (the same ones whatever ``per_class``)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    if (root / "done").is_file():
        return root
    digits = load_digits()
    fewest = int(np.bincount(digits.target).min())
    if per_class + val_per_class > fewest:
        sys.exit(f"--per-class {per_class} with --val-per-class {val_per_class}: needed at most {fewest} together "
                 "(the rarest digit's count)")
    rng = np.random.default_rng(seed)
    for label in range(10):
        members = rng.permutation(np.flatnonzero(digits.target == label))
        chosen = [("train", i) for i in members[:per_class]] + [("val", i) for i in members[-val_per_class:]]
        for part, index in chosen:
            folder = root / part / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            pixels = np.round(digits.images[index] * 255 / 16).astype(np.uint8)  # 0..16 ink -> bright on dark
            Image.fromarray(pixels).save(folder / f"{index:04d}.png")
    (root / "done").write_text("")
    return root


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    log = out / "runs.log"
    common = ["--no-progress", "--precision", args.precision, "--threads", str(args.threads)]
    source = out / "source-resnet20"
    src_cmd = ["--model", "resnet20", "--data", "fashion-mnist", "--train-subset", str(args.source_subset),
               "--epochs", str(args.source_epochs), "--seed", "0", "--run-dir", str(source), *common]
    if args.data_dir:
        src_cmd += ["--data-dir", args.data_dir]
    start = time.perf_counter()
    print(f"source: resnet20 on Fashion-MNIST ({args.source_subset} images, {args.source_epochs} epochs)", flush=True)
    trained = [_run(src_cmd, log)]
    src = _result(source)
    weights = source / "model.safetensors"
    rows, commands = [], {}
    for per_class in args.per_class:
        data = write_digits(out / f"digits-{per_class}-val{args.val_per_class}", per_class, args.val_per_class)
        for model in args.models:
            for start_from in ("pretrained", "scratch"):
                accs, times = [], []
                for seed in args.seeds:
                    run_dir = out / "target" / f"{model}-{data.name}-{start_from}-seed{seed}"
                    cmd = ["--model", model, "--data", str(data), "--image-size", "28", "--epochs", str(args.epochs),
                           "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--seed", str(seed),
                           "--run-dir", str(run_dir), *common]
                    if start_from == "pretrained":
                        cmd += ["--pretrained", str(weights)]
                    print(f"target: {model}, {10 * per_class} images, {start_from}, seed {seed}", flush=True)
                    trained.append(_run(cmd, log))
                    commands.setdefault((model, start_from), cmd)
                    result = _result(run_dir)
                    accs.append(100 * result["test_acc"])
                    times.append(result["train_time_s"])
                rows.append({"images": 10 * per_class, "model": model, "start": start_from, "accs": accs,
                             "time_s": statistics.fmean(times)})
    table = _table(rows)
    wall = time.perf_counter() - start
    intro = (f"Source: resnet20 on {args.source_subset} Fashion-MNIST images, {args.source_epochs} epochs: test top-1 "
             f"{100 * src['test_acc']:.2f}% in {src['train_time_s']:.0f} s. Target: scikit-learn digits at 28x28, "
             f"{args.epochs} epochs, batch {args.batch_size}, SGD lr {args.lr}, seeds "
             f"{','.join(map(str, args.seeds))}; top-1 on {10 * args.val_per_class} validation images (the same for "
             f"every start and size); each run on {args.threads} CPU thread(s).")
    timing = f"{wall:.0f} s wall time" + (f", {len(trained) - sum(trained)} of {len(trained)} runs read back from an "
                                          "earlier invocation" if not all(trained) else "")
    print("\n" + intro + "\n\n" + table + f"\n\n{timing}; runs and logs in {out}")
    print(f"\nWith real weights ({REAL_WEIGHTS}, fetched once):\n  " + _real_commands().replace("\n", "\n  "))
    if args.report:
        args.report.write_text(_report(args, intro, table, timing, src_cmd, commands))
        print(f"wrote {args.report}")
    return 0


def _table(rows: list[dict]) -> str:
    lines = ["| target train images | model | start | val top-1 % (mean ± sd) | per seed | train s per run |",
             "|---:|---|---|---:|---|---:|"]
    for r in rows:
        sd = statistics.stdev(r["accs"]) if len(r["accs"]) > 1 else 0.0
        lines.append(f"| {r['images']} | {r['model']} | {r['start']} | {statistics.fmean(r['accs']):.2f} ± {sd:.2f} "
                     f"| {', '.join(f'{a:.1f}' for a in r['accs'])} | {r['time_s']:.1f} |")
    return "\n".join(lines)


def _real_commands() -> str:
    flags = "--data path/to/folder --image-size 224 --channels rgb --epochs 10 --lr 0.01 --batch-size 64"
    return (f"python -m visionattn train --model resnet50 --pretrained weights/model.safetensors {flags} "
            f"--run-dir runs/resnet50-finetuned\npython -m visionattn train --model resnet50 {flags} "
            "--run-dir runs/resnet50-scratch")


def _shown(argv: list[str]) -> str:
    """The command as a user in the repository root types it (paths under it relative)."""
    words = [str(Path(w).relative_to(ROOT)) if w.startswith(str(ROOT) + "/") else w for w in argv]
    return " ".join(["python -m visionattn train", *words])


def _wrap(text: str) -> str:
    return textwrap.fill(text.strip(), 116, break_on_hyphens=False)


def _report(args: argparse.Namespace, intro: str, table: str, timing: str, src_cmd: list[str],
            commands: dict) -> str:
    given = sys.argv[1:]
    if "--note" in given:  # the note is printed below, not repeated in the command
        given = given[:given.index("--note")] + given[given.index("--note") + 2:]
    made = (f"Made by `{shlex.join(['python', 'benchmarks/finetune.py', *given])}` on "
            f"{time.strftime('%Y-%m-%d')}, {timing}. {intro} Training seconds are per run as the trainer measures "
            "them (evaluation excluded); they depend on what else runs on the machine, the accuracies are what "
            "the comparison is about. " + args.note)
    real = ("With real weights, the same comparison for an ImageNet ResNet-50 on your own images: fetch timm's "
            f"`resnet50.a1_in1k` once ({REAL_WEIGHTS}, or `huggingface-cli download timm/resnet50.a1_in1k "
            "model.safetensors --local-dir weights`), then run")
    return "\n".join([
        "# Fine-tuning from a checkpoint against training from scratch", "", _wrap(made), "",
        "The commands (the source run, then the first seed of each target run):", "",
        *[f"    {_shown(c)}" for c in [src_cmd, *commands.values()]], "", table, "", _wrap(real), "",
        *[f"    {c}" for c in _real_commands().splitlines()], ""])


if __name__ == "__main__":
    sys.exit(main())
