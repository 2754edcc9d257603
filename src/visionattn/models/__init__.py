"""Networks assembled from the layers; importing this package registers them all."""

from visionattn.models.blocks import BasicBlock, Bottleneck, make_stem
from visionattn.models.plug import AttnPlug
from visionattn.models.resnet import ResNet
from visionattn.models.sasa_resnet import SasaResNet
from visionattn.models.zoo import PUBLISHED, TIMM_NAMES, Published

__all__ = ["ResNet", "SasaResNet", "BasicBlock", "Bottleneck", "make_stem", "AttnPlug", "PUBLISHED", "Published",
           "TIMM_NAMES"]
