"""Networks assembled from the layers; importing this package registers them all."""

from visionattn.models import vit_zoo  # noqa: F401  (registers the vision transformers)
from visionattn.models.blocks import BasicBlock, Bottleneck, make_stem
from visionattn.models.botnet import BoTNet
from visionattn.models.hybrid import HybridVisionTransformer
from visionattn.models.nonlocal_resnet import NONLOCAL_MODELS
from visionattn.models.plug import AttnPlug
from visionattn.models.resnet import ResNet
from visionattn.models.sasa_resnet import SasaResNet
from visionattn.models.vit import VisionTransformer
from visionattn.models.zoo import PUBLISHED, TIMM_NAMES, Published

__all__ = ["ResNet", "SasaResNet", "BasicBlock", "Bottleneck", "make_stem", "AttnPlug", "PUBLISHED", "Published",
           "TIMM_NAMES", "NONLOCAL_MODELS",
           "HybridVisionTransformer", "BoTNet", "VisionTransformer"]
