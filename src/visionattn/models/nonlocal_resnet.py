"""Non-local ResNets: Wang et al. 2018, "Non-local Neural Networks", the ResNet-50 with 5 non-local blocks.

The paper's ResNet-50 placement (sec. 4.1, the 5-block ResNet-50 of table 2c; the official code
facebookresearch/video-nonlocal-net, ``lib/models/resnet_helper.py``: ``idx % 2 == 1`` with
``NONLOCAL.LAYER_MOD = 2`` in ``res3`` and ``res4``):
an embedded-Gaussian block (:class:`~visionattn.layers.non_local.NonLocal2d`, registered ``"non_local"``) after
every other residual block of res3 and res4, i.e. after blocks 2 and 4 of ``layer2`` (512 channels, 28x28 at
224) and blocks 2, 4 and 6 of ``layer3`` (1024 channels, 14x14), each on the block's output after its addition
and ReLU. In the plug's terms: ``ResNet(attn="non_local", attn_stages=(2, 3), attn_every=2)`` (placement
``"after"``, the layer is the block's ``attn``: ``layer2.1.attn``, ``layer2.3.attn``, ``layer3.1.attn``, ...).
The paper's networks are video C2D ResNets; this is their 2-D (image) form, the spatial block of the paper's
COCO and image experiments.

Parameters (224x224, 1000 classes): ResNet-50's 25,557,032 plus 2 C^2 + 4.5 C per block (theta, phi, g and W_z
with biases, W_z's BatchNorm): 2 x 526,592 at C = 512 and 3 x 2,101,760 at C = 1024, 7,358,464 in all:
**32,915,496**. Every block starts as the identity (its BatchNorm scale at 0), so a non-local ResNet-50 starts
as a ResNet-50 and a ResNet-50 checkpoint loads into it (``strict=False`` for the new blocks).

``nonlocal_resnet20`` is the small-image version (ResNet-20 on 1x28x28, 10 classes): one block after block 2
of stage 2 (32 channels, 14x14) and one after block 2 of stage 3 (64 channels, 7x7), the same rule.
"""

from __future__ import annotations

from typing import Any

from visionattn.models.resnet import ResNet
from visionattn.models.zoo import BACKBONES, register_resnet

__all__ = ["NONLOCAL", "NONLOCAL_MODELS", "NONLOCAL_RESNET50_PARAMS", "NonLocalResNet"]

_PAPER = "Wang et al. 2018, Non-local Neural Networks"
NONLOCAL: dict[str, Any] = {"attn": "non_local", "attn_stages": (2, 3), "attn_every": 2}
NONLOCAL_RESNET50_PARAMS = 32_915_496

class NonLocalResNet(ResNet):
    """A :class:`~visionattn.models.resnet.ResNet` with non-local blocks (its ``attn="non_local"`` placement); the
    class only records the smallest input at which every parameter learns (read by the model contract tests).

    Shape:
        - Input: (B, in_chans, H, W)
        - Output: (B, num_classes)
    """

    # res4's map is 2x2 at 32x32 and its 2x2-pooled keys a single pixel: a softmax over one key is constant, so
    # theta and phi get no gradient (exactly 0 on the explicit path); at 64x64 it attends 4 keys
    min_input_size = (3, 64, 64)


# name: (backbone, description)
NONLOCAL_MODELS: dict[str, tuple[str, str]] = {
    "nonlocal_resnet50": ("resnet50", "ResNet-50 with 5 non-local blocks (embedded Gaussian): after every other "
                                      "block of res3 (2) and res4 (3)"),
    "nonlocal_resnet20": ("resnet20", "ResNet-20 (small images) with a non-local block after block 2 of stages 2 "
                                      "and 3"),
}


for _name, (_backbone, _description) in NONLOCAL_MODELS.items():
    register_resnet(_name, {**BACKBONES[_backbone][0], **NONLOCAL}, _PAPER, _description, NonLocalResNet)
