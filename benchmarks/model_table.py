"""Print the README's models table: parameters and multiply-adds of every named model beside published figures.

Usage: ``python benchmarks/model_table.py`` (Markdown on stdout). The "timm" column names timm's model of the
same architecture, whose checkpoints load into ours by name (``visionattn.models.zoo.TIMM_NAMES``). Models are
built on the ``meta`` device, so the whole table takes seconds: parameter and multiply-add counts depend on
shapes only. ImageNet models are counted at 3x224x224 with 1000 classes, small-image models at their own
1x28x28 input with 10 classes.

"GMACs, paper's layout" rebuilds a model whose paper used ResNet v1 (the stride on the first 1x1 of a strided
bottleneck, ``stride_in_1x1=True``) that way; the models default to the v1.5 layout of torchvision and timm
(stride on the 3x3), which has the same parameters and about 6% more multiply-adds.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from visionattn.info import build_for_input, model_info
from visionattn.models import PUBLISHED
from visionattn.models.zoo import NAMES, TIMM_NAMES
from visionattn.registry import get_model_entry, list_models


def _info(name: str, **kwargs):
    with torch.device("meta"):
        model, size = build_for_input(name, **kwargs)
    return model_info(model, size), size


def _count(name: str, **kwargs) -> tuple[int, int]:
    info, _ = _info(name, **kwargs)
    return info.params, info.macs


def _imagenet_row(name: str) -> str:
    params, macs = _count(name)
    pub = PUBLISHED.get(name)
    timm = f"`{TIMM_NAMES[name]}`" if name in TIMM_NAMES else "-"
    cells = [f"`{name}`", timm, get_model_entry(name).description, f"{params / 1e6:.3f}M"]
    if pub is None:
        cells += ["-", "-", f"{macs / 1e9:.2f}", "-", "-"]
    else:
        # the paper's own layout: ResNet v1 puts the stride on the 1x1 (same parameters, fewer MACs)
        as_paper = _count(name, stride_in_1x1=True)[1] if pub.stride_in_1x1 else macs
        cells += [f"{pub.params / 1e6:.3f}M", f"{(params - pub.params) / pub.params:+.3%}", f"{macs / 1e9:.2f}",
                  f"{as_paper / 1e9:.3f}", "-" if pub.gmacs is None else f"{pub.gmacs:g}"]
    return "| " + " | ".join(cells) + " |"


def imagenet_table() -> str:
    """Rows with published figures first (in the order of ``PUBLISHED``), then the rest as registered."""
    names = [*PUBLISHED, *(n for n in NAMES if n not in PUBLISHED and n in list_models("resnet"))]
    lines = ["| model | timm | description | params | published | diff | GMACs | GMACs, paper's layout | paper GMACs |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    return "\n".join(lines + [_imagenet_row(n) for n in names])


def small_table() -> str:
    lines = ["| model | description | params | MMACs (1x28x28) |", "|---|---|---:|---:|"]
    for name in (n for n in NAMES if n in list_models("resnet-small")):
        params, macs = _count(name)
        lines.append(f"| `{name}` | {get_model_entry(name).description} | {params / 1e3:.1f}K | {macs / 1e6:.1f} |")
    return "\n".join(lines)


def attention_names() -> list[str]:
    """The token-attention models: ViTs, hybrids, BoTNets, non-local ResNets, Swins, HaloNets, axial ResNets."""
    return [*list_models("vit"), *list_models("vit-hybrid"),
            *(n for n in list_models() if n.startswith(("botnet", "nonlocal_"))), *list_models("swin"),
            *(n for n in list_models() if n.startswith(("halonet", "axial")))]


def attention_table() -> str:
    """Parameters (exact), multiply-adds and attention's share of them, each model at its own input."""
    lines = ["| model | input | params | GMACs | attention GMACs |", "|---|---|---:|---:|---:|"]
    for name in attention_names():
        info, size = _info(name)
        lines.append(f"| `{name}` | {'x'.join(map(str, size))} | {info.params:,} | {info.macs / 1e9:.3f} | "
                     f"{info.attn_macs / 1e9:.3f} |")
    return "\n".join(lines)


def sasa_table() -> str:
    """The SASA-ResNets' parameters by kind of module: what the paper's Table 1 counts may leave out."""
    kinds = {"conv": nn.Conv2d, "linear": nn.Linear, "batchnorm": nn.BatchNorm2d}
    lines = ["| model | params | conv | linear | BatchNorm | relative embeddings | without BN and embeddings |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name in list_models("sasa"):
        with torch.device("meta"):
            model, _ = build_for_input(name)
        counts = {kind: sum(p.numel() for m in model.modules() if isinstance(m, cls) for p in m.parameters())
                  for kind, cls in kinds.items()}
        total = sum(p.numel() for p in model.parameters())
        rel = total - sum(counts.values())  # every other parameter is a relative (or stem position) embedding
        lines.append(f"| `{name}` | {total:,} | {counts['conv']:,} | {counts['linear']:,} | {counts['batchnorm']:,} "
                     f"| {rel:,} | {(total - counts['batchnorm'] - rel) / 1e6:.3f}M |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--which", choices=("imagenet", "small", "sasa", "attention", "both"), default="both",
                        help="which table (default both: imagenet and small; sasa: parameters by module kind; "
                             "attention: the ViTs, hybrids, BoTNets, non-local ResNets, Swins, HaloNets and "
                             "axial ResNets)")
    args = parser.parse_args()
    if args.which == "attention":
        print("Token-attention models at their own input (1000 classes at 224/256, 10 at 28x28)\n")
        print(attention_table())
        return
    if args.which == "sasa":
        print("SASA-ResNets, 3x224x224 input, 1000 classes: parameters by kind of module\n")
        print(sasa_table())
        return
    if args.which in ("imagenet", "both"):
        print("ImageNet models, 3x224x224 input, 1000 classes\n")
        print(imagenet_table() + "\n")
    if args.which in ("small", "both"):
        print("Small-image models, 1x28x28 input, 10 classes\n")
        print(small_table())


if __name__ == "__main__":
    main()
