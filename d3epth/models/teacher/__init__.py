"""The diffusion depth teacher (Marigold / E2E-FT on diffusers), split by concern.

* :mod:`~d3epth.models.teacher.model` — :class:`DiffusionDepthTeacher`: VAE codec, the UNet call, x0 from a model
  output, the one-step prediction (:meth:`DiffusionDepthTeacher.one_step`) and UNet feature capture;
* :mod:`~d3epth.models.teacher.sampling` — N-step DDIM, ensembles, ``predict_depth`` in [0, 1];
* :mod:`~d3epth.models.teacher.build` — random-weight teachers from a config, SD2 shapes, the VAE, ``conv_in``
  widening;
* :mod:`~d3epth.models.teacher.hub` — diffusers directories: loading, the empty-prompt embedding, export;
* :mod:`~d3epth.models.teacher.sources` — any teacher source (directory, config, checkpoint) → a teacher.
"""

from d3epth.models.teacher.build import SD2_SCHEDULER_CONFIG, build_autoencoder, widen_conv_in
from d3epth.models.teacher.hub import (
    EMPTY_TEXT_EMBEDDING_FILE,
    compute_empty_text_embedding,
    load_empty_text_embedding,
    save_empty_text_embedding,
)
from d3epth.models.teacher.model import DiffusionDepthTeacher, OneStepPrediction
from d3epth.models.teacher.sampling import DepthPrediction
from d3epth.models.teacher.sources import TEACHER_ARCH_KEY, load_autoencoder, load_teacher, teacher_architecture

__all__ = [
    "EMPTY_TEXT_EMBEDDING_FILE",
    "SD2_SCHEDULER_CONFIG",
    "TEACHER_ARCH_KEY",
    "DepthPrediction",
    "DiffusionDepthTeacher",
    "OneStepPrediction",
    "build_autoencoder",
    "compute_empty_text_embedding",
    "load_autoencoder",
    "load_empty_text_embedding",
    "load_teacher",
    "save_empty_text_embedding",
    "teacher_architecture",
    "widen_conv_in",
]
