"""Our hybrid ViT, BoTNet and HaloNets against timm's, side by side: strict state-dict load and equal outputs.

Run in an environment with timm (it is never a dependency of the project), e.g.

    PYTHONPATH=../shared/tools/timm_side_by_side/torchvision_stub ~/timm-venv/bin/python benchmarks/timm_token_models.py

- ``vit_small_resnet50d_s16_224``: timm's hybrid (ResNet-50-D stages 1-3, then 8 blocks of width 768) is our
  :class:`~visionattn.models.hybrid.HybridVisionTransformer` with the same configuration; timm's state dict loads
  with ``strict=True`` and the logits are compared.
- ``botnet26t_256``: timm's state dict under our names
  (:func:`~visionattn.models.botnet.convert_timm_botnet_state_dict`)
  loads into ``create_model("botnet26t_256")`` with ``strict=True``; outputs compared at 256 x 256.
- ``halonet26t``, ``halonet50ts``: timm's state dicts under our names
  (:func:`~visionattn.models.halonet.convert_timm_halonet_state_dict`) load with ``strict=True``; outputs compared
  at 256 x 256 with ``mask_padding=False`` (timm's function: zero-padded border keys take part in the softmax),
  and, as a second row, with our default masked padding, which is meant to differ.

Both in eval mode, with random BatchNorm statistics and affine parameters (``timm_parity.randomise_norms``) so
that every normalisation takes part.
"""

from __future__ import annotations

import sys

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from timm_parity import randomise_norms  # noqa: E402

import visionattn  # noqa: E402
from visionattn.models.botnet import convert_timm_botnet_state_dict  # noqa: E402
from visionattn.models.halonet import convert_timm_halonet_state_dict  # noqa: E402
from visionattn.models.hybrid import HybridVisionTransformer  # noqa: E402


def compare(name: str, theirs: torch.nn.Module, ours: torch.nn.Module, state: dict, size: int) -> str:
    ours.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = theirs.eval()(x), ours.eval()(x)
    count = (sum(p.numel() for p in theirs.parameters()), sum(p.numel() for p in ours.parameters()))
    return (f"| {name} | {count[0]:,} | {count[1]:,} | strict | {(a - b).abs().max().item():.1e} | "
            f"{a.abs().max().item():.2f} |")


def main() -> int:
    try:
        import timm
    except ImportError as err:
        print(f"timm is not importable ({err}); run this in an environment with timm (see the docstring)")
        return 2
    torch.manual_seed(0)
    rows = ["| timm model | timm params | ours | load | max abs diff | max abs logit |",
            "|---|---:|---:|---|---:|---:|"]
    hybrid = timm.create_model("vit_small_resnet50d_s16_224")
    randomise_norms(hybrid, seed=1)
    ours = HybridVisionTransformer(stem_type="deep", stem_width=32, backbone_kwargs={"avg_down": True}, dim=768,
                                   depth=8, heads=8, mlp_ratio=3.0)
    rows.append(compare("vit_small_resnet50d_s16_224", hybrid, ours, hybrid.state_dict(), 224))
    bot = timm.create_model("botnet26t_256")
    randomise_norms(bot, seed=2)
    rows.append(compare("botnet26t_256", bot, visionattn.create_model("botnet26t_256"),
                        convert_timm_botnet_state_dict(bot.state_dict()), 256))
    for seed, name in enumerate(("halonet26t", "halonet50ts"), start=3):
        halo = timm.create_model(name)
        randomise_norms(halo, seed=seed)
        state = convert_timm_halonet_state_dict(halo.state_dict())
        rows.append(compare(f"{name} (mask_padding=False)", halo,
                            visionattn.create_model(name, mask_padding=False), state, 256))
        rows.append(compare(f"{name} (ours: padding masked)", halo, visionattn.create_model(name), state, 256))
    print(f"timm {timm.__version__}, torch {torch.__version__}, eval, 2 random images, random BN statistics\n")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
