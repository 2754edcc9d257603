"""Operator by operator: one of our models beside timm's, where the time goes and which operators differ.

Run in an environment with timm (never a dependency of the project):

    PYTHONPATH=../shared/tools/timm_side_by_side/torchvision_stub ~/timm-venv/bin/python \\
        benchmarks/timm_op_profile.py vit_small_patch16_224 --mode infer_bf16 [--rounds 6] [--top 20]

A speed ratio of 0.98 on two shared cores can be the host or the code. This answers which: the two models (the
same weights, timm's loaded strictly into ours) are profiled in alternating rounds (who goes first alternates),
each round a few calls of ``--mode`` (``benchmarks/timm_parity.py``'s step: inference or an SGD training step,
fp32 or bf16 autocast), and every operator's self time and call count is averaged per call. Where both run the
same operators the same number of times, a difference in total is the host's, not ours; the operators whose time
or count differs most are listed first.

Pairs: the ViTs of ``benchmarks/transformers.py`` (timm's names) and the models of
``benchmarks/timm_local_speed.py`` (halonet26t with timm's state dict converted, Swin-T).
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import timm_local_speed  # noqa: E402
import timm_parity  # noqa: E402

import visionattn  # noqa: E402
from visionattn.cli import positive_int  # noqa: E402

VITS = {"vit_tiny_patch16_224": 224, "vit_small_patch16_224": 224}
Totals = dict[str, collections.Counter]


def build(timm, name: str) -> tuple[torch.nn.Module, torch.nn.Module, int]:
    """(ours, timm's, input side) with timm's weights in ours, loaded strictly."""
    torch.manual_seed(0)
    if name in VITS:
        theirs, ours, side, state = timm.create_model(name), visionattn.create_model(name), VITS[name], None
    else:
        timm_name, side, kwargs, convert = timm_local_speed.PAIRS[name]
        theirs, ours = timm.create_model(timm_name), visionattn.create_model(name, **kwargs)
        state = convert(theirs.state_dict()) if convert else None
    ours.load_state_dict(theirs.state_dict() if state is None else state, strict=True)
    return ours, theirs, side


def profile_rounds(steps: dict[str, object], rounds: int, calls: int) -> tuple[Totals, Totals]:
    """Per-call self time (ms) and call count of every operator, for each model, over alternating rounds."""
    times = {k: collections.Counter() for k in steps}
    counts = {k: collections.Counter() for k in steps}
    names = list(steps)
    for r in range(rounds):
        for k in names if r % 2 == 0 else names[::-1]:
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(calls):
                    steps[k]()
            for event in prof.key_averages():
                times[k][event.key] += event.self_cpu_time_total / 1e3 / (calls * rounds)
                counts[k][event.key] += event.count / (calls * rounds)
    return times, counts


def report(times: Totals, counts: Totals, top: int) -> str:
    ours, theirs = times["ours"], times["timm"]
    ops = set(ours) | set(theirs)
    same = [op for op in ops if abs(counts["ours"][op] - counts["timm"][op]) < 1e-9]
    lines = [f"per call: ours {sum(ours.values()):.1f} ms, timm {sum(theirs.values()):.1f} ms of operator self time; "
             f"{len(same)} of {len(ops)} operators are called equally often",
             "", "| operator | ours ms (calls) | timm ms (calls) | ours - timm |", "|---|---:|---:|---:|"]
    for op in sorted(ops, key=lambda o: -abs(ours[o] - theirs[o]))[:top]:
        lines.append(f"| `{op}` | {ours[op]:.2f} ({counts['ours'][op]:g}) | {theirs[op]:.2f} ({counts['timm'][op]:g})"
                     f" | {ours[op] - theirs[op]:+.2f} |")
    differ = sorted(set(ops) - set(same))
    lines += ["", "called a different number of times: " + (", ".join(
        f"`{op}` {counts['ours'][op]:g} / {counts['timm'][op]:g}" for op in differ) if differ else "none")]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=[*VITS, *timm_local_speed.PAIRS])
    parser.add_argument("--mode", choices=timm_parity.MODES, default="infer_bf16")
    parser.add_argument("--batch", type=positive_int, default=8)
    parser.add_argument("--rounds", type=positive_int, default=6, help="alternating profiled rounds (default 6)")
    parser.add_argument("--calls", type=positive_int, default=2, help="calls per round (default 2)")
    parser.add_argument("--top", type=positive_int, default=20, help="operators listed (default 20)")
    parser.add_argument("--threads", type=positive_int, default=2)
    args = parser.parse_args()
    try:
        import timm
    except ImportError as err:
        print(timm_parity.SETUP.format(error=err), file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    ours, theirs, side = build(timm, args.model)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(args.batch, 3, side, side, generator=gen)
    y = torch.randint(0, 1000, (args.batch,), generator=gen)
    for model in (ours, theirs):
        model.train(args.mode.startswith("train"))
    steps = {name: timm_parity.make_step(model, args.mode, x, y) for name, model in (("ours", ours), ("timm", theirs))}
    for step in steps.values():  # warm-up
        step()
        step()
    print(f"{args.model}, {args.mode}, batch {args.batch}, {args.rounds} rounds of {args.calls} calls, timm "
          f"{timm.__version__}, torch {torch.__version__}, {args.threads} threads\n")
    print(report(*profile_rounds(steps, args.rounds, args.calls), args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
