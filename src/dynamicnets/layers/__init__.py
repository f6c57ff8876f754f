"""layers."""
# dynamic width: slimmable layers, switchable norms, mixture of experts
from .conv_experts import ConvExperts
from .conv_moe import ConvMoE, expert_mask, sample_decisions
from .experts import MLPExperts
from .moe import MoE, MoELayer, MoEOutput, combine_weights, dense_moe, dispatch
from ..gates.routers import ExpertChoiceRouter, NoisyTopKRouter, Routing, TopKRouter
from .slimmable import (
    SlimmableConv2d,
    SlimmableLinear,
    build_slice_cache,
    channels_at,
    clear_slice_cache,
    set_execution,
)
from .channel_gated_conv import ChannelGatedConvPair, channel_gated_convs, pair_cost
from ..gates.channel import ChannelDecision, FBSGate, GumbelChannelGate
from .switchable_norm import SlimmableBatchNorm2d, SwitchableBatchNorm2d, calibrate_batchnorm
# dynamic parameters and features: CondConv, DY-Conv, WeightNet, DY-ReLU, attention, deformable conv
from .attention import CBAM, ChannelAttention, SpatialAttention, SqueezeExcite
from .cond_conv import CondConv2d, RoutedCondConv2d, per_sample_conv2d
from .deform_conv import DeformConv2d, deform_conv2d
from .dy_relu import DyReLU, DyReLUHyperFunction, PiecewiseLinearCoefficients, dy_relu
from .dynamic_conv import DynamicConv2d
from ..gates.routing import RoutingFunction
from .weightnet import WeightNetConv2d
# region and resolution level: spatial transformer glimpses, resizing to a set of resolutions
from .spatial_transformer import LocalisationNet, SpatialTransformer
from .resize import check_resolutions, resize, resize_flops
from .patch_crop import PatchCrop, crop_patches, grid_corners
# temporal: recurrent layers that skip state updates, skim steps or jump over tokens
from .skip_rnn import SkipGRU, SkipLSTM, SkipRNN, SkipRNNResult
from .skim_rnn import SkimLSTM, SkimRNNResult
from .lstm_jump import LSTMJump, LSTMJumpResult
