"""Record what ``tests/models/test_swin.py`` needs from timm's Swin Transformer, so that the tests run without timm.

Writes ``tests/data/timm_swin.json.gz`` (gzip with mtime 0, keys sorted: the same timm gives the same bytes):

- ``layouts``: ``{timm_name: [[key, shape], ...]}`` in state-dict order for Swin-T/S/B (built on the meta device),
- ``params``: timm's parameter counts of the same models,
- ``outputs``: for a few small configurations, timm's eval logits with every tensor of its state dict drawn from
  a seeded generator (``record_timm_layout.randomise``: in state-dict order, LayerNorm scales around 1, the rest
  std 0.05) on seeded images (``torch.randn``). The test draws the same tensors in our state dict's order (the
  same keys in the same order) and compares. The configurations have sides that are multiples of every stage's
  window, where our padding rule and timm's meet; together they shift in two stages, cut the window to the map,
  drop the shift along one side only, pad an odd side in the patch merging, and use a non-square window.

``--check`` also builds Swin-T/S/B beside timm's at 224x224: timm's random weights load into ours with
``strict=True`` and ours into timm's, and it prints the largest difference of the eval logits on two random images
(float32); and it shows timm's region mask at a padded size (the roll-then-pad order, see
:mod:`visionattn.layers.window_attention`).

Run it in the timm virtual environment with the torchvision stub (``../shared/tools/timm_side_by_side/README.md``)::

    PYTHONPATH=../shared/tools/timm_side_by_side/torchvision_stub ~/timm-venv/bin/python \\
        benchmarks/record_timm_swin.py [--check]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from record_timm_layout import randomise, write_record

from visionattn.models.swin_zoo import SWIN_TIMM_NAMES

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "timm_swin.json.gz"
# name: (timm's SwinTransformer keywords, input (C, H, W)); ours takes dim / depths / heads for embed_dim /
# depths / num_heads (tests/models/test_swin.py maps them)
CASES: dict[str, tuple[dict, tuple[int, int, int]]] = {
    # maps 16 (4x4 windows of 4, shifted by 2), 8 (2x2 windows, shifted), 4 (one window: no shift)
    "shifted_two_stages": ({"img_size": 32, "patch_size": 2, "in_chans": 3, "num_classes": 5, "embed_dim": 16,
                            "depths": (2, 2, 2), "num_heads": (1, 2, 4), "window_size": 4}, (3, 32, 32)),
    # the registered small model: 14 (2x2 windows of 7, shifted), 7 (one window), 7 -> 4 (merging pads, window 4)
    "swin_patch2_window7_28": ({"img_size": 28, "patch_size": 2, "in_chans": 1, "num_classes": 10, "embed_dim": 32,
                                "depths": (2, 2, 2), "num_heads": (2, 4, 8), "window_size": 7, "mlp_ratio": 2.0},
                               (1, 28, 28)),
    # maps 8x32 (shift 2, 2), 4x16 (window 4x4, shift only along the width), 2x8 (window cut to 2x4, shift 0, 2)
    "non_square": ({"img_size": (16, 64), "patch_size": 2, "in_chans": 3, "num_classes": 4, "embed_dim": 8,
                    "depths": (2, 2, 2), "num_heads": (1, 2, 2), "window_size": 4}, (3, 16, 64)),
}
PARAM_SEED, INPUT_SEED, BATCH = 1, 0, 2


def layout(timm_name: str) -> tuple[list[list], int]:
    import timm

    with torch.device("meta"):
        model = timm.create_model(timm_name, pretrained=False)
    return ([[k, list(t.shape)] for k, t in model.state_dict().items()],
            sum(p.numel() for p in model.parameters()))


def seeded_logits(kwargs: dict, input_size: tuple[int, int, int]) -> list[list[float]]:
    from timm.models.swin_transformer import SwinTransformer

    model = SwinTransformer(**kwargs).eval()
    randomise(model, PARAM_SEED)
    x = torch.randn(BATCH, *input_size, generator=torch.Generator().manual_seed(INPUT_SEED))
    with torch.no_grad():
        return model(x).tolist()


def check_full(name: str) -> str:
    """Strict loads both ways and the largest logit difference at 224, as one line."""
    import timm

    import visionattn

    theirs = timm.create_model(name, pretrained=False).eval()
    ours = visionattn.create_model(name).eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    diffs = []
    for src, dst, seed in ((theirs, ours, 1), (ours, theirs, 2)):
        randomise(src, seed)
        dst.load_state_dict(src.state_dict(), strict=True)
        with torch.no_grad():
            diffs.append((ours(x) - theirs(x)).abs().max().item())
    scale = theirs(x).abs().max().item()
    return (f"{name}: strict both ways; max |logits ours - timm| {diffs[0]:.2e} (timm -> ours), {diffs[1]:.2e} "
            f"(ours -> timm); max |logit| {scale:.3g}")


def timm_padded_regions() -> str:
    """Whether timm's region mask keeps the image's top and bottom rows apart at a padded size: an 11x11 map,
    window 7, shift 3, built as timm's ``_attn`` does (roll the 11 rows, pad to 14, the mask of the padded map)."""
    from timm.models.swin_transformer import SwinTransformerBlock, window_partition

    block = SwinTransformerBlock(dim=4, input_resolution=(11, 11), num_heads=1, window_size=7, shift_size=3,
                                 dynamic_mask=True)
    rows = (torch.arange(11.0) + 1).view(1, 11, 1, 1).expand(1, 11, 11, 1)  # image row + 1; 0 marks padding
    shifted = F.pad(torch.roll(rows, (-3, -3), (1, 2)), (0, 0, 0, 3, 0, 3))
    allowed = block.get_attn_mask(shifted) == 0  # (windows, 49, 49)
    token_rows = window_partition(shifted, (7, 7)).reshape(allowed.shape[0], 49) - 1
    pairs = {(int(token_rows[w, i]), int(token_rows[w, j])) for w, i, j in allowed.nonzero().tolist()}
    return (f"timm, 11x11 map, window 7, shift 3 (padded to 14): image rows 0 and 10 share a region: "
            f"{(0, 10) in pairs}; a real row and a padded one: {any(a >= 0 > b for a, b in pairs)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"output file (default {OUT})")
    parser.add_argument("--check", action="store_true", help="also compare Swin-T/S/B with timm's (see above)")
    args = parser.parse_args(argv)
    try:
        import timm
    except ImportError as err:
        print(f"timm is not importable ({err}); run this script in a virtual environment with timm and the "
              "torchvision stub on PYTHONPATH (../shared/tools/timm_side_by_side/README.md)", file=sys.stderr)
        return 2
    names = sorted(set(SWIN_TIMM_NAMES.values()))
    layouts = {name: layout(name) for name in names}
    record = {
        "layouts": {name: layouts[name][0] for name in names},
        "params": {name: layouts[name][1] for name in names},
        "outputs": {case: {"config": kwargs, "input_size": list(size), "param_seed": PARAM_SEED,
                           "input_seed": INPUT_SEED, "logits": seeded_logits(kwargs, size)}
                    for case, (kwargs, size) in CASES.items()},
    }
    write_record(record, args.out)
    print(f"timm {timm.__version__}, torch {torch.__version__}: {len(names)} layouts, {len(CASES)} output cases "
          f"-> {args.out}")
    for name in names:
        print(f"  {name}: {record['params'][name]:,} parameters")
    if args.check:
        for name in names:
            print(check_full(name), flush=True)
        print(timm_padded_regions())
    return 0


if __name__ == "__main__":
    sys.exit(main())
