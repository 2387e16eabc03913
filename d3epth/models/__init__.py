"""Networks (plain ``nn.Module``s, no Lightning): the diffusion depth teacher and the fast student."""

from d3epth.models.decoder import DepthHead, FeatureAdapters, FPNDecoder, LatentHead
from d3epth.models.student import DepthStudent
from d3epth.models.teacher import DepthPrediction, DiffusionDepthTeacher

__all__ = [
    "DepthHead",
    "DepthPrediction",
    "DepthStudent",
    "DiffusionDepthTeacher",
    "FPNDecoder",
    "FeatureAdapters",
    "LatentHead",
]
