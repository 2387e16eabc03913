"""On-disk cache of the teacher's stage-1 targets, so stage 1 need not run the diffusion teacher every step.

``tools/cache_teacher.py`` computes, for every sample of every training set, the frozen teacher's one-step depth
latent (exactly :meth:`~d3epth.tasks.stage1.LatentDistillationTask.teacher_targets`: the image padded bottom/right to
a multiple of the VAE factor, encoded, one UNet step at t = 999) for the image *and for its horizontal mirror*, and
writes them here. ``DepthDataModule(teacher_cache=DIR)`` then serves them as the sample key ``teacher_latent``.

By concern: :mod:`~d3epth.data.teacher_cache.build` (the writer and :func:`fill_cache`, the tool's loop),
:mod:`~d3epth.data.teacher_cache.read` (:class:`TeacherCache`, :class:`TeacherCacheLookup`) and
:mod:`~d3epth.data.teacher_cache.fingerprint` (:func:`teacher_fingerprint`, :func:`dataset_signature`,
:func:`check_cacheable`).

Layout of a cache directory::

    DIR/index.json                        # what was cached, by whom, and where each sample's latents are
    DIR/<set name>/shard_00000.safetensors  # up to --shard-size samples; for sample path P the tensors
                                          #   "P#latent" and "P#latent_flipped", each [C,ceil(H/f),ceil(W/f)]

``index.json``::

    {"format": "d3epth-teacher-cache", "version": 1, "d3epth_version": "0.1.0",
     "teacher": {"source": <model.init_args.teacher>, "fingerprint": "sha256:...", "vae_scale_factor": 8,
                 "latent_channels": 4},
     "dtype": "float16", "target": "...",
     "sets": {"hypersim": {"dataset": {<what decides the image: class, resize, interpolation, crop, transforms>},
                           "entries": {"<sample path>": ["hypersim/shard_00000.safetensors", H, W], ...}}}}

Entries are keyed by (training-set name in the datamodule, the sample's ``path``), so the cache does not depend on the
order of the split list. Shards and the index are written atomically (temporary file, then rename), the index after
every shard, so an interrupted run loses at most one shard of work and a rerun skips every sample already listed.

Storage is float16 by default: rounding to the nearest fp16 value changes each latent element by at most
2**-11 (0.049 %) of its magnitude (unit round-off; SD-VAE depth latents lie within about ±5, so by < 2.5e-3 absolute),
far below the student's regression error; ``--dtype float32`` stores the targets exactly.

Flip: the teacher is not flip-equivariant, so the target of a mirrored training image is the teacher's output for
the mirrored image, not the mirror of its output. The cache therefore supplies both (``teacher_latent`` and
``teacher_latent_flipped``, see :data:`~d3epth.data.sample.FLIP_PAIRS`), :class:`~d3epth.data.transforms
.HorizontalFlip` swaps them when it mirrors the sample, and :class:`~d3epth.data.datamodule.AugmentedDataset` drops
the unused one afterwards.
"""

from d3epth.data.teacher_cache.build import CacheImageSource, TeacherCacheWriter, fill_cache, teacher_latents
from d3epth.data.teacher_cache.fingerprint import check_cacheable, dataset_signature, teacher_fingerprint
from d3epth.data.teacher_cache.read import (
    CACHE_FORMAT,
    CACHE_VERSION,
    DTYPES,
    FLIPPED_LATENT_KEY,
    INDEX_FILE,
    LATENT_KEY,
    TARGET_DESCRIPTION,
    TeacherCache,
    TeacherCacheLookup,
)
from d3epth.errors import TeacherCacheError

__all__ = [
    "CACHE_FORMAT",
    "CACHE_VERSION",
    "DTYPES",
    "FLIPPED_LATENT_KEY",
    "INDEX_FILE",
    "LATENT_KEY",
    "TARGET_DESCRIPTION",
    "CacheImageSource",
    "TeacherCache",
    "TeacherCacheError",
    "TeacherCacheLookup",
    "TeacherCacheWriter",
    "check_cacheable",
    "dataset_signature",
    "fill_cache",
    "teacher_fingerprint",
    "teacher_latents",
]
