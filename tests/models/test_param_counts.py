"""Parameter counts at 224x224 with 1000 classes against the published / official-code counts (within 0.1%).

The models are built on the ``meta`` device: the shapes, hence the counts, are those of a real build, but no
memory is filled, so even ResNet-152 builds in a fraction of a second.
"""

from __future__ import annotations

import pytest
import torch

import visionattn
from visionattn.complexity import count_params
from visionattn.info import build_for_input, model_info
from visionattn.models import PUBLISHED

TOLERANCE = 1e-3  # 0.1%


def _params(name: str, **kwargs) -> int:
    with torch.device("meta"):
        return count_params(visionattn.create_model(name, **kwargs))


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count_matches_published(name):
    got, published = _params(name), PUBLISHED[name].params
    assert abs(got - published) <= TOLERANCE * published, (
        f"{name}: {got:,} parameters, published {published:,} ({PUBLISHED[name].source}); "
        f"off by {(got - published) / published:+.4%}")


def test_issue_table_is_covered():
    required = {"resnet50", "se_resnet50", "cbam_resnet50", "bam_resnet50", "ge_theta_resnet50",
                "ge_theta_plus_resnet50", "se_resnext50_32x4d", "sknet50", "resnest50", "eca_resnet50"}
    assert required <= set(PUBLISHED)


def test_eca_adds_well_under_100_parameters():
    extra = _params("eca_resnet50") - _params("resnet50")
    assert 0 < extra < 100  # one k-tap 1-D kernel per block (k = 3 or 5), no bias


def test_ge_theta_count_is_the_global_extent_at_224():
    # one map-sized depthwise conv + BN per block: C * H * W + 2C, H = W = 56, 28, 14, 7 by stage
    blocks = [(256, 56, 3), (512, 28, 4), (1024, 14, 6), (2048, 7, 3)]
    extra = sum(n * (c * s * s + 2 * c) for c, s, n in blocks)
    assert _params("ge_theta_resnet50") - _params("resnet50") == extra
    assert _params("ge_theta_resnet50", img_size=112) < _params("ge_theta_resnet50")


def test_resnet50_multiply_adds_at_224():
    with torch.device("meta"):
        model, size = build_for_input("resnet50")
    info = model_info(model, size)
    assert size == (3, 224, 224)
    assert info.params == 25_557_032
    assert abs(info.macs / 1e9 - 4.09) < 0.01  # torchvision's 4.09 GMACs; the paper prints 3.8
    assert sum(row["macs"] for row in info.rows) == info.macs


# Exact counts of independent implementations of the same architectures: torchvision (ResNet, ResNeXt-50),
# the official ResNeSt code, and the imgclsmob / pytorchcv collection (which ports the official SE, CBAM,
# BAM and SK models).
REFERENCE_COUNTS = {
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032, "resnet101": 44_549_160,
    "resnet152": 60_192_808, "resnext50_32x4d": 25_028_904, "resnext101_32x4d": 44_177_704,
    "resnet50d": 25_576_264, "se_resnet50": 28_088_024, "se_resnet101": 49_326_872,
    "se_resnet152": 66_821_848, "se_resnext50_32x4d": 27_559_896, "se_resnext101_32x4d": 48_955_416,
    "cbam_resnet50": 28_089_624, "cbam_resnet101": 49_330_172, "bam_resnet50": 25_915_099,
    "bam_resnet101": 44_907_227, "sknet50": 27_479_784, "sknet101": 48_736_040, "resnest50": 27_483_240,
}


@pytest.mark.parametrize("name", sorted(REFERENCE_COUNTS))
def test_count_equals_reference_implementation(name):
    assert _params(name) == REFERENCE_COUNTS[name]
