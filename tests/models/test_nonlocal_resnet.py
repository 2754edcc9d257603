"""The non-local ResNets: the paper's placement, the parameter count by hand, identity at initialisation."""

from __future__ import annotations

import torch

import visionattn
from visionattn import testing
from visionattn.layers.non_local import NonLocal2d
from visionattn.models.nonlocal_resnet import NONLOCAL_RESNET50_PARAMS
from visionattn.registry import get_model_entry

RESNET50_PARAMS = 25_557_032  # torchvision's count


def _nl_params(c: int) -> int:
    """theta, phi, g: C -> C/2 with bias; W_z: C/2 -> C with bias; BatchNorm: scale and shift."""
    half = c // 2
    return 3 * (c * half + half) + (half * c + c) + 2 * c


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_resnet50_has_the_papers_five_blocks_where_the_official_code_puts_them():
    model = visionattn.create_model("nonlocal_resnet50")
    blocks = {name: m for name, m in model.named_modules() if isinstance(m, NonLocal2d)}
    # res3 = layer2 (4 blocks), res4 = layer3 (6 blocks): after blocks idx % 2 == 1
    assert list(blocks) == ["layer2.1.attn", "layer2.3.attn", "layer3.1.attn", "layer3.3.attn", "layer3.5.attn"]
    assert [(b.channels, b.inner_channels, b.sub_sample) for b in blocks.values()] == (
        [(512, 256, True)] * 2 + [(1024, 512, True)] * 3)
    expected = RESNET50_PARAMS + 2 * _nl_params(512) + 3 * _nl_params(1024)
    assert expected == NONLOCAL_RESNET50_PARAMS == 32_915_496
    assert _count(model) == expected
    assert get_model_entry("nonlocal_resnet50").defaults["attn_stages"] == (2, 3)


def test_resnet20_count_and_placement():
    model = visionattn.create_model("nonlocal_resnet20")
    blocks = [name for name, m in model.named_modules() if isinstance(m, NonLocal2d)]
    assert blocks == ["layer2.1.attn", "layer3.1.attn"]
    assert _count(model) == _count(visionattn.create_model("resnet20")) + _nl_params(32) + _nl_params(64)
    assert model.input_size == (1, 28, 28) and model.num_classes == 10


def test_starts_as_the_plain_resnet_and_loads_its_weights():
    torch.manual_seed(0)
    plain = visionattn.create_model("resnet20")
    model = visionattn.create_model("nonlocal_resnet20")
    missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(".attn." in k for k in missing)
    x = torch.randn(3, 1, 28, 28)
    for training in (False, True):
        torch.testing.assert_close(model.train(training)(x), plain.train(training)(x))


def test_the_blocks_convolutions_follow_the_networks_he_rule():
    torch.manual_seed(0)
    model = visionattn.create_model("nonlocal_resnet20")
    testing.check_he_init(model)
    assert not model.layer2[1].attn.bn.weight.any()  # and the block still starts as the identity


def test_every_parameter_learns_once_the_blocks_open():
    """At initialisation the zero BatchNorm scale blocks the branch's gradient; one SGD step opens it."""
    torch.manual_seed(0)
    model = visionattn.create_model("nonlocal_resnet20", num_classes=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 0])
    for _ in range(2):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    theta = model.layer3[1].attn.theta.weight
    assert theta.grad is not None and theta.grad.abs().sum() > 0
