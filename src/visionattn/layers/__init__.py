"""Attention layers, one file per mechanism; importing this package registers them all."""

from visionattn.layers.attention_core import Attention, AttentionRecorder, attention
from visionattn.layers.attention_stem import AttentionStem2d, PositionMixture
from visionattn.layers.axial_attention import AxialAttention, AxialAttention2d  # noqa: F401
from visionattn.layers.bam import BamChannelAttention, BamSpatialAttention, BottleneckAttention
from visionattn.layers.bot_attention import BoTSelfAttention2d
from visionattn.layers.cbam import CbamChannelAttention, CbamSpatialAttention, ConvBlockAttention
from visionattn.layers.cond_conv import CondConv2d, ExpertConv2d
from visionattn.layers.dynamic_conv import DynamicConv2d, TemperatureSchedule, set_temperature
from visionattn.layers.eca import EfficientChannelAttention, eca_kernel_size
from visionattn.layers.gather_excite import GatherExcite
from visionattn.layers.halo_attention import HaloAttention2d  # noqa: F401  (registers "halo")
from visionattn.layers.local_attention import LocalSelfAttention2d, RelativeEmbedding2d
from visionattn.layers.non_local import NonLocal2d
from visionattn.layers.relative_position import RelativePositionLogits2d
from visionattn.layers.selective_kernel import SelectiveKernel
from visionattn.layers.self_attention import MultiHeadSelfAttention, SelfAttention2d
from visionattn.layers.sparse_attention import SparseAttention, SparseSelfAttention2d
from visionattn.layers.sparse_patterns import sparse_masks
from visionattn.layers.split_attention import SplitAttention, SplitAttention0
from visionattn.layers.squeeze_excite import SEVar1, SEVar2, SEVar3, SqueezeExcite
from visionattn.layers.transformer import TransformerBlock
from visionattn.layers.window_attention import SwinBlock, WindowAttention, WindowAttention2d  # noqa: F401

__all__ = [
    "SqueezeExcite",
    "SEVar1",
    "SEVar2",
    "SEVar3",
    "EfficientChannelAttention",
    "eca_kernel_size",
    "CbamChannelAttention",
    "CbamSpatialAttention",
    "ConvBlockAttention",
    "BamChannelAttention",
    "BamSpatialAttention",
    "BottleneckAttention",
    "GatherExcite",
    "SelectiveKernel",
    "SplitAttention",
    "SplitAttention0",
    "ExpertConv2d",
    "CondConv2d",
    "DynamicConv2d",
    "TemperatureSchedule",
    "set_temperature",
    "LocalSelfAttention2d",
    "NonLocal2d",
    "RelativeEmbedding2d",
    "AttentionStem2d",
    "PositionMixture",
    "attention",
    "Attention",
    "AttentionRecorder",
    "MultiHeadSelfAttention",
    "SelfAttention2d",
    "TransformerBlock",
    "BoTSelfAttention2d",
    "RelativePositionLogits2d",
    "SparseAttention",
    "SparseSelfAttention2d",
    "sparse_masks",
]
