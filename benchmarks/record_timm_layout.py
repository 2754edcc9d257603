"""Record timm's state-dict layout (keys and shapes, in order) for every architecture we share with timm.

Writes ``tests/data/timm_state_dict_keys.json.gz``: ``{timm_name: [[key, shape], ...]}`` in state-dict order,
for every timm name in :data:`visionattn.models.zoo.TIMM_NAMES` (the ResNet family), and in the same format
``tests/data/timm_vit_state_dict_keys.json.gz`` for :data:`visionattn.models.vit_zoo.VIT_TIMM_NAMES` (the ViTs).
``tests/models/test_timm_layout.py`` and ``tests/models/test_vit.py`` check our models against them without timm.
``tests/data/timm_halonet_layout.json.gz`` holds ``halonet26t`` and ``halonet50ts`` in the same format and, under
``"halo_attn"``, a few small cases of timm's ``HaloAttn`` layer (its keyword arguments, its float64 state dict,
an input and timm's output), which ``tests/layers/test_halo_attention.py`` recomputes with our layer.
The files are gzip with mtime 0 and sorted model names, so re-recording with the same timm gives the same bytes.
Re-record after adding a pair to ``TIMM_NAMES`` or ``VIT_TIMM_NAMES``.

``--check-vit`` also builds our ViTs beside timm's (ViT-Ti/S/B at 224, and ViT-Ti with average pooling, without
a class token, with ``fc_norm=False``): timm's random weights (every tensor, LayerNorms included) load into ours
with ``strict=True`` and ours into timm's, and it prints the largest difference of the eval logits on two
random 224x224 images (float32).

timm needs torchvision, which has no CPU build here; run it in the timm virtual environment with the stub on the
path (see ``../shared/tools/timm_side_by_side/README.md`` for the one-time setup)::

    PYTHONPATH=../shared/tools/timm_side_by_side/torchvision_stub ~/timm-venv/bin/python \\
        benchmarks/record_timm_layout.py [--check-vit]

The models are recorded on the ``meta`` device: no weights are allocated, so the whole record takes seconds.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import sys
from pathlib import Path

import torch

from visionattn.models.vit_zoo import VIT_TIMM_NAMES
from visionattn.models.zoo import TIMM_NAMES

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
OUT = DATA / "timm_state_dict_keys.json.gz"
VIT_OUT = DATA / "timm_vit_state_dict_keys.json.gz"
HALONET_OUT = DATA / "timm_halonet_layout.json.gz"
HALONET_NAMES = ("halonet26t", "halonet50ts")
# timm HaloAttn(8 channels, **kwargs) on a (1, 8, size, size) input: the layer cases of the HaloNet record
HALO_ATTN_CASES = [({"num_heads": 2, "block_size": 4, "halo_size": 1}, 8),
                   ({"num_heads": 2, "block_size": 4, "halo_size": 1, "stride": 2}, 8),
                   ({"num_heads": 2, "block_size": 4, "halo_size": 2, "stride": 2, "avg_down": True}, 8),
                   ({"num_heads": 4, "block_size": 3, "halo_size": 2, "qk_ratio": 0.5, "scale_pos_embed": True}, 6)]
# (our name, timm name, keyword arguments for both): the configurations --check-vit compares
VIT_CHECKS = [("vit_tiny_patch16_224", "vit_tiny_patch16_224", {}),
              ("vit_small_patch16_224", "vit_small_patch16_224", {}),
              ("vit_base_patch16_224", "vit_base_patch16_224", {}),
              ("vit_tiny_patch16_224", "vit_tiny_patch16_224", {"global_pool": "avg"}),
              ("vit_tiny_patch16_224", "vit_tiny_patch16_224", {"global_pool": "avg", "class_token": False}),
              ("vit_tiny_patch16_224", "vit_tiny_patch16_224", {"global_pool": "avg", "fc_norm": False})]


def timm_layout(timm_name: str) -> list[list]:
    """``[[key, shape], ...]`` of timm's model ``timm_name`` (1000 classes), in state-dict order."""
    import timm

    with torch.device("meta"):
        model = timm.create_model(timm_name, pretrained=False)
    return [[key, list(tensor.shape)] for key, tensor in model.state_dict().items()]


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Every tensor random (weights of std 0.05, LayerNorm scales around 1), so that equal outputs mean that every
    loaded tensor is used where it belongs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            noise = torch.randn(tensor.shape, generator=gen)
            is_scale = name.endswith(".weight") and tensor.dim() == 1
            tensor.copy_(1 + 0.1 * noise if is_scale else 0.05 * noise)


def check_vit(ours_name: str, timm_name: str, kwargs: dict) -> str:
    """Strict loads both ways and the largest logit difference, as one line."""
    import timm

    import visionattn

    theirs = timm.create_model(timm_name, pretrained=False, **kwargs).eval()
    ours = visionattn.create_model(ours_name, **kwargs).eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    diffs = []
    for src, dst, seed in ((theirs, ours, 1), (ours, theirs, 2)):  # timm -> ours, then ours -> timm
        randomise(src, seed)
        dst.load_state_dict(src.state_dict(), strict=True)
        with torch.no_grad():
            diffs.append((ours(x) - theirs(x)).abs().max().item())
    return (f"{ours_name} {kwargs or ''}: strict both ways; max |logits ours - timm| {diffs[0]:.2e} (timm -> ours), "
            f"{diffs[1]:.2e} (ours -> timm)")


def halo_attn_case(kwargs: dict, size: int, seed: int) -> dict:
    """timm's ``HaloAttn(8, **kwargs)`` in float64 with random weights: kwargs, state dict, input and output."""
    from timm.layers.halo_attn import HaloAttn

    torch.manual_seed(seed)
    layer = HaloAttn(8, **kwargs).double().eval()
    x = torch.randn(1, 8, size, size, dtype=torch.float64)
    with torch.no_grad():
        out = layer(x)
    return {"kwargs": kwargs, "state_dict": {k: v.tolist() for k, v in layer.state_dict().items()},
            "input": x.tolist(), "output": out.tolist()}


def halonet_record() -> dict:
    """The HaloNet record: the two models' layouts and the ``HaloAttn`` layer cases."""
    import timm

    record: dict = {name: timm_layout(name) for name in HALONET_NAMES}
    record["timm_version"] = timm.__version__
    record["halo_attn"] = [halo_attn_case(kwargs, size, seed) for seed, (kwargs, size) in enumerate(HALO_ATTN_CASES)]
    return record


def write_record(record: dict[str, list[list]], path: Path) -> None:
    """Gzip-compressed JSON with mtime 0 (reproducible bytes), one model per line."""
    lines = ",\n".join(f"{json.dumps(name)}: {json.dumps(record[name])}" for name in sorted(record))
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as gz:
        gz.write(("{\n" + lines + "\n}\n").encode())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"output file (default {OUT})")
    parser.add_argument("--vit-out", type=Path, default=VIT_OUT, help=f"the ViTs' output file (default {VIT_OUT})")
    parser.add_argument("--halonet-out", type=Path, default=HALONET_OUT,
                        help=f"the HaloNets' output file (default {HALONET_OUT})")
    parser.add_argument("--check-vit", action="store_true", help="also compare our ViTs with timm's (see above)")
    args = parser.parse_args(argv)
    try:
        import timm
    except ImportError as err:
        print(f"timm is not importable ({err}); run this script in a virtual environment with timm and the "
              "torchvision stub on PYTHONPATH, as ../shared/tools/timm_side_by_side/README.md describes:\n"
              "    PYTHONPATH=../shared/tools/timm_side_by_side/torchvision_stub ~/timm-venv/bin/python "
              "benchmarks/record_timm_layout.py", file=sys.stderr)
        return 2
    for names, out in ((TIMM_NAMES, args.out), (VIT_TIMM_NAMES, args.vit_out)):
        record = {timm_name: timm_layout(timm_name) for timm_name in sorted(set(names.values()))}
        write_record(record, out)
        tensors = sum(len(v) for v in record.values())
        print(f"timm {timm.__version__}: {len(record)} models, {tensors} state-dict entries -> {out}")
    write_record(halonet_record(), args.halonet_out)
    print(f"timm {timm.__version__}: {', '.join(HALONET_NAMES)} and {len(HALO_ATTN_CASES)} HaloAttn cases -> "
          f"{args.halonet_out}")
    if args.check_vit:
        torch.manual_seed(0)
        for ours_name, timm_name, kwargs in VIT_CHECKS:
            print(check_vit(ours_name, timm_name, kwargs), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
