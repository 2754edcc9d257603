"""The generic contract over every registered model, at a small input so that CI stays fast.

ImageNet-size models run on 3x32x32 images (built for that size, which only GE-theta's global gather cares
about); small-image models run on their own 28x28 input. Each model is built once and checked for the output
shape, gradients reaching every parameter, finite outputs, eval-mode batch independence and the timm model API
(``forward_features`` / ``forward_head``, ``features_only`` maps matching ``feature_info``, ``pretrained_cfg``).

ResNets deeper than 50 layers (101, 152) run with one block per stage: their blocks, stems and attention
placement are those of the 50-layer models, only repeated, and building and running them at full depth
would cost most of the suite's time budget. Their full-depth construction is covered by the
parameter-count test.
"""

from __future__ import annotations

import pytest
import torch

import visionattn
from visionattn import testing
from visionattn.info import build_for_input
from visionattn.registry import get_model_entry

SMALL_INPUT_MAX = 32  # a model whose default input is at most this is run at its own size
CONTRACT_INPUT = (3, 32, 32)
MAX_BLOCKS = 16  # ResNet-50's; deeper configurations run with one block per stage


def _build(name: str):
    entry = get_model_entry(name)
    defaults = entry.defaults
    default = defaults.get("img_size")
    # a model class may need more than 32x32 for every parameter to get a gradient (SASA: a 1x1 last stage)
    size = getattr(entry.factory, "min_input_size", CONTRACT_INPUT)
    if isinstance(default, int) and default <= SMALL_INPUT_MAX:
        size = None
    layers = defaults.get("layers", ())
    kwargs = {"layers": (1,) * len(layers)} if sum(layers) > MAX_BLOCKS else {}
    torch.manual_seed(0)
    return build_for_input(name, size, num_classes=7, **kwargs)


def _images(input_size, batch: int, seed: int) -> torch.Tensor:
    """Gaussian images with a per-image brightness and contrast, so that pooled features differ by image."""
    g = torch.Generator().manual_seed(seed)
    scale, shift = torch.rand(batch, 1, 1, 1, generator=g) + 0.5, torch.randn(batch, 1, 1, 1, generator=g)
    return torch.randn(batch, *input_size, generator=g) * scale + shift


@pytest.mark.parametrize("name", visionattn.list_models())
def test_model_contract(name):
    model, input_size = _build(name)
    x = _images(input_size, batch=4, seed=1)
    testing.check_output_shape(model.train(), x, (4, 7))
    testing.check_grads_reach_params(model, x)  # train mode; also moves BN statistics off their defaults
    testing.check_finite(model, x)
    testing.check_batch_independence(model, _images(input_size, batch=3, seed=2), atol=1e-4)
    testing.check_feature_api(model, _images(input_size, batch=2, seed=3), atol=1e-4)


@pytest.mark.parametrize("name", visionattn.list_models())
def test_every_convolution_is_he_initialised(name):
    """One rule for every 2-D convolution of every network, the attention layers' own included (SK's branches,
    SplAt, excite MLPs, SASA's projections, each CondConv / dynamic-conv expert): He, fan-out, ReLU gain.

    Exempt, as in torchvision, timm and the official codes: linear layers (classifier, routers), ECA's 1-D
    kernel, embeddings, and BatchNorm (zero_init_last zeroes a BN weight, not a conv). The
    rule does not depend on depth or width, so each network is built with one block per stage of 16 planes.
    """
    layers = get_model_entry(name).defaults.get("layers", ())
    torch.manual_seed(0)
    model, _ = build_for_input(name, CONTRACT_INPUT, num_classes=7, layers=(1,) * len(layers),
                               widths=(16,) * len(layers), zero_init_last=True)
    testing.check_he_init(model)


def test_every_model_is_documented():
    for name in visionattn.list_models():
        entry = get_model_entry(name)
        assert entry.paper and entry.description and entry.family, name
        assert "Shape:" in (entry.factory.__doc__ or ""), f"{name}: docstring needs a Shape: section"


def test_unknown_model_name_lists_the_registered_ones():
    with pytest.raises(ValueError, match="unknown model name 'resnet5'.*resnet50"):
        visionattn.create_model("resnet5")
