"""Losses: SSI, gradient (MiDaS matching, edge-aware Huber), hybrid depth loss, task weightings, distillation.

Each objective is a function holding the math plus a thin ``nn.Module`` holding its hyper-parameters. Depth tensors
are ``[B,1,H,W]`` with a ``torch.bool`` valid mask of the same shape.
"""

from d3epth.losses.distill import (
    FeatureDistillationLoss,
    LatentDistillationLoss,
    feature_distillation_loss,
    latent_distillation_loss,
    latent_mask_from_pixels,
)
from d3epth.losses.gradient import (
    GradientHuberLoss,
    GradientMatchingLoss,
    edge_weights,
    gradient_huber_loss,
    gradient_matching_loss,
)
from d3epth.losses.hybrid import HybridDepthLoss
from d3epth.losses.ssi import SSILoss, align_prediction, aligned_data_loss, compute_scale_and_shift, ssi_loss
from d3epth.losses.weighting import (
    WEIGHTINGS,
    DynamicWeightAverage,
    FixedWeighting,
    GradNormWeighting,
    TaskWeighting,
    UncertaintyWeighting,
    build_weighting,
    resolve_shared_parameters,
)

__all__ = [
    "WEIGHTINGS",
    "DynamicWeightAverage",
    "FeatureDistillationLoss",
    "FixedWeighting",
    "GradNormWeighting",
    "GradientHuberLoss",
    "GradientMatchingLoss",
    "HybridDepthLoss",
    "LatentDistillationLoss",
    "SSILoss",
    "TaskWeighting",
    "UncertaintyWeighting",
    "align_prediction",
    "aligned_data_loss",
    "build_weighting",
    "compute_scale_and_shift",
    "edge_weights",
    "feature_distillation_loss",
    "gradient_huber_loss",
    "gradient_matching_loss",
    "latent_distillation_loss",
    "latent_mask_from_pixels",
    "resolve_shared_parameters",
    "ssi_loss",
]
