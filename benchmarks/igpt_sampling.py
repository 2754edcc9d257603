"""How much the key-value cache saves when sampling from Image GPT: ``igpt_sample.sample`` with and without it.

Draws ``--batch`` images of 28x28 grey at 16 levels (784 tokens) from ``igpt_fashion`` (untrained weights with a
random output matrix: the time does not depend on what the weights say) for each ``--attention`` kind, with the
cache (one position per step against the cached keys and values) and without it (at step t the whole sequence so
far, t + 1 positions, runs through the model again; the official ``run.py:sample`` reruns all 784 each step, so
this baseline is the faster of the two uncached ones). Median wall time of ``--reps`` draws each, interleaved; the
two draw the same images for the same seed, which the script checks. The issue's target: the cache at least 10x
faster.

    python benchmarks/igpt_sampling.py [--batch 16] [--reps 3] [--attention dense strided] [--threads 2]
        [--markdown benchmarks/igpt_sampling.md]

A tiny check that it runs: ``--batch 1 --reps 1 --depth 1 --image-size 6 --markdown /tmp/s.md`` (36 tokens).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

import visionattn
from visionattn.cli import positive_int
from visionattn.models.igpt_sample import sample


def _build(attention: str, depth: int | None, image_size: int | None) -> torch.nn.Module:
    kwargs = {"attention": attention}
    if depth is not None:
        kwargs["depth"] = depth
    if image_size is not None:
        kwargs.update(seq_len=image_size * image_size, image_size=image_size)
    torch.manual_seed(0)
    model = visionattn.create_model("igpt_fashion", **kwargs).eval()
    with torch.no_grad():  # the official zero output matrix gives uniform logits; sample something less trivial
        torch.nn.init.normal_(model.head.weight, std=0.02)
    return model


def measure(model: torch.nn.Module, batch: int, reps: int) -> tuple[float, float, bool]:
    """Median seconds of a cached and an uncached draw of ``batch`` images, and whether they drew the same."""
    warm = torch.zeros(1, model.seq_len - 4, dtype=torch.long)  # warm-up: the last 4 positions of one image
    for cache in (True, False):
        sample(model, 1, warm, generator=torch.Generator().manual_seed(0), cache=cache)
    times: dict[bool, list[float]] = {True: [], False: []}
    same = True
    for rep in range(reps):
        drawn = {}
        for cache in (True, False) if rep % 2 == 0 else (False, True):
            start = time.perf_counter()
            drawn[cache] = sample(model, batch, generator=torch.Generator().manual_seed(rep), cache=cache)
            times[cache].append(time.perf_counter() - start)
        same &= torch.equal(drawn[True], drawn[False])
    return statistics.median(times[True]), statistics.median(times[False]), same


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=positive_int, default=16, help="images per draw (default 16)")
    parser.add_argument("--reps", type=positive_int, default=3, help="draws of each kind (default 3)")
    parser.add_argument("--attention", nargs="+", default=["dense", "strided"], choices=["dense", "strided", "fixed"],
                        help="attention kinds (default dense strided)")
    parser.add_argument("--depth", type=positive_int, default=None, help="blocks (default igpt_fashion's)")
    parser.add_argument("--image-size", type=positive_int, default=None, help="side of the square image (default 28)")
    parser.add_argument("--threads", type=positive_int, default=2, help="intra-op threads (default 2)")
    parser.add_argument("--markdown", type=Path, default=Path(__file__).with_suffix(".md"),
                        help="write the table here (default benchmarks/igpt_sampling.md)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for attention in args.attention:
        model = _build(attention, args.depth, args.image_size)
        cached, uncached, same = measure(model, args.batch, args.reps)
        rows.append(f"| {attention} | {model.seq_len} | {args.batch} | {cached:.2f} | {uncached:.2f} | "
                    f"{uncached / cached:.1f}x | {'yes' if same else 'NO'} |")
        print(rows[-1], flush=True)
    params = sum(p.numel() for p in model.parameters())
    lines = [f"igpt_fashion ({model.depth} blocks of width {model.dim}, {params:,} parameters), torch "
             f"{torch.__version__} on {platform.machine()}, {torch.get_num_threads()} threads, fp32; median of "
             f"{args.reps} draws each, interleaved",
             "", "| attention | tokens | batch | cached s | uncached s | speed-up | same images |",
             "|---|---:|---:|---:|---:|---:|---|", *rows]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    args.markdown.write_text(text)
    return 0 if all("| yes |" in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
