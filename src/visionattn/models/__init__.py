"""Networks assembled from the layers; importing this package registers them all."""

from visionattn.models.blocks import BasicBlock, Bottleneck, Stem
from visionattn.models.plug import AttnPlug
from visionattn.models.resnet import ResNet
from visionattn.models.sasa_resnet import SasaResNet
from visionattn.models.zoo import PUBLISHED, Published

__all__ = ["ResNet", "SasaResNet", "BasicBlock", "Bottleneck", "Stem", "AttnPlug", "PUBLISHED", "Published"]
