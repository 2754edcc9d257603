"""Networks assembled from the layers; importing this package registers them all."""

from visionattn.models import vit_zoo  # noqa: F401  (registers the vision transformers)
from visionattn.models.axial_resnet import AxialResNet  # noqa: F401  (registers axial26s, axial50s/m/l, axial29)
from visionattn.models.blocks import BasicBlock, Bottleneck, make_stem
from visionattn.models.botnet import BoTNet
from visionattn.models.halonet import HaloNet  # noqa: F401  (registers halonet26t, halonet50ts, halonet29)
from visionattn.models.hybrid import HybridVisionTransformer
from visionattn.models.igpt import ImageGPT  # noqa: F401  (registers igpt_s, igpt_m, igpt_l, igpt_fashion)
from visionattn.models.nonlocal_resnet import NONLOCAL_MODELS
from visionattn.models.palette import Palette  # noqa: F401
from visionattn.models.plug import AttnPlug
from visionattn.models.resnet import ResNet
from visionattn.models.sasa_resnet import SasaResNet
from visionattn.models.swin import SwinTransformer  # noqa: F401
from visionattn.models.swin_zoo import SWIN_TIMM_NAMES  # noqa: F401  (registers swin_*_patch4_window7_224, ..._28)
from visionattn.models.vit import VisionTransformer
from visionattn.models.zoo import PUBLISHED, TIMM_NAMES, Published

__all__ = ["ResNet", "SasaResNet", "BasicBlock", "Bottleneck", "make_stem", "AttnPlug", "PUBLISHED", "Published",
           "TIMM_NAMES", "NONLOCAL_MODELS",
           "HybridVisionTransformer", "BoTNet", "VisionTransformer"]
