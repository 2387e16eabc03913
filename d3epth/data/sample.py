"""The sample-dict contract: what every dataset returns, what the collate batches and every task reads.

A sample is a plain ``dict`` (:data:`Sample`) so that the default collate keeps it a dict of batched tensors and a
dataset may carry extra rasters (e.g. ``depth_filled``). The keys every labelled dataset returns:

=============== ====================================== ==========================================================
key             dtype, shape                           meaning
=============== ====================================== ==========================================================
``image``       float32 ``[3,H,W]`` in [-1,1]          RGB
``depth``       float32 ``[1,H,W]``, metres            ground-truth planar depth; 0 where invalid
``valid_mask``  bool ``[1,H,W]``                       ``min_depth < depth < max_depth`` and the dataset's own rule
``depth_norm``  float32 ``[1,H,W]`` in [-1,1]          per-image 2 %/98 % quantile normalisation, clipped
``dataset``     str                                    provenance, for logs and error messages
``path``        str                                    the sample's path relative to its dataset root
=============== ====================================== ==========================================================

Optional keys: ``intrinsics`` float32 ``[3,3]`` where known; ``teacher_latent`` float32 ``[4,H/8,W/8]`` (rounded up)
when a teacher cache is used, with ``teacher_latent_flipped`` (the target of the mirrored image) until the flip
augmentation has chosen one of the two (:data:`FLIP_PAIRS`), likewise ``teacher_depth`` (the teacher's one-step
decoded depth, stage 2's pseudo-label) from a cache built with depth; ``has_depth`` (every
:class:`~d3epth.data.base.BaseDepthDataset` sets it; False for unlabeled sources, whose ``depth`` and ``depth_norm``
are zeros and ``valid_mask`` all False); ``skipped_samples`` (int) on training samples when the
datamodule's ``skip_bad_samples`` is on (:mod:`d3epth.data.faults`).

The normalisation is Marigold's (Ke et al., "Repurposing Diffusion-Based Image Generators for Monocular Depth
Estimation", CVPR 2024, Eq. 3; Marigold ``src/util/depth_transform.py``, ``ScaleShiftDepthNormalizer``), and the
valid-range rule is strict on both ends as in Marigold ``src/dataset/base_depth_dataset.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import default_collate

__all__ = [
    "FLIP_PAIRS",
    "OPTIONAL_KEYS",
    "REQUIRED_KEYS",
    "KeySpec",
    "Sample",
    "collate_samples",
    "target_mask",
]

#: A sample dict (see the module docstring for its keys).
Sample = dict[str, Any]


@dataclass(frozen=True)
class KeySpec:
    """One key of the sample dict.

    Attributes:
        dtype: Tensor dtype, or ``None`` for a non-tensor value (``str``; ``int`` for ``skipped_samples``).
        shape: Shape in the notation of the docstrings (``"[1,H,W]"``), or ``""`` for a non-tensor value.
        meaning: One line for people.
    """

    dtype: torch.dtype | None
    shape: str
    meaning: str


#: The keys every labelled dataset returns.
REQUIRED_KEYS: dict[str, KeySpec] = {
    "image": KeySpec(torch.float32, "[3,H,W]", "RGB in [-1,1]"),
    "depth": KeySpec(torch.float32, "[1,H,W]", "ground-truth planar depth in metres; 0 where invalid"),
    "valid_mask": KeySpec(torch.bool, "[1,H,W]", "min_depth < depth < max_depth and the dataset's own invalid rule"),
    "depth_norm": KeySpec(torch.float32, "[1,H,W]", "per-image 2%/98% quantile normalisation, clipped to [-1,1]"),
    "dataset": KeySpec(None, "", "name of the dataset the sample comes from"),
    "path": KeySpec(None, "", "the sample's path relative to its dataset root"),
}

#: Keys present only where they are known or configured.
OPTIONAL_KEYS: dict[str, KeySpec] = {
    "intrinsics": KeySpec(torch.float32, "[3,3]", "pinhole intrinsics, OpenCV convention (pixel centres at integers)"),
    "teacher_latent": KeySpec(torch.float32, "[4,H/8,W/8]", "cached stage-1 target (sizes rounded up)"),
    "teacher_latent_flipped": KeySpec(torch.float32, "[4,H/8,W/8]", "cached stage-1 target of the mirrored image"),
    "teacher_depth": KeySpec(torch.float32, "[1,H,W]", "cached one-step teacher depth in [-1,1] (pseudo-label)"),
    "teacher_depth_flipped": KeySpec(torch.float32, "[1,H,W]", "cached one-step teacher depth of the mirrored image"),
    "has_depth": KeySpec(None, "", "bool: False for a source without ground truth (depth zeros, valid_mask False)"),
    "skipped_samples": KeySpec(None, "", "int (with skip_bad_samples): bad training files skipped for this sample"),
}

#: Sample keys with a precomputed counterpart for the mirrored image (``key -> partner``).
#: :class:`~d3epth.data.transforms.HorizontalFlip` swaps the two instead of mirroring them; the datamodule drops the
#: partner after augmentation.
FLIP_PAIRS: dict[str, str] = {"teacher_latent": "teacher_latent_flipped", "teacher_depth": "teacher_depth_flipped"}


def target_mask(valid_mask: torch.Tensor, has_depth: torch.Tensor | None) -> torch.Tensor:
    """Pixels a teacher target covers: ``valid_mask`` [B,...] plus every pixel of the images without ground truth.

    Those images (``has_depth`` [B] False) carry no invalid pixels to leave out: the teacher's target is defined
    everywhere. ``has_depth`` None returns ``valid_mask``.
    """
    if has_depth is None:
        return valid_mask
    return valid_mask | ~has_depth.view(-1, *([1] * (valid_mask.ndim - 1)))


def collate_samples(samples: list[Sample]) -> dict[str, Any]:
    """Stack sample dicts into a batch dict (strings become lists), with a clear error for mismatched sizes."""
    first = samples[0]
    for sample in samples[1:]:
        if sample.keys() != first.keys():
            raise ValueError(
                f"cannot batch samples with different keys: {sorted(first)} ({first.get('path')}) vs "
                f"{sorted(sample)} ({sample.get('path')})"
            )
        for key, value in first.items():
            other = sample[key]
            if isinstance(value, torch.Tensor) and value.shape != other.shape:
                raise ValueError(
                    f"cannot batch '{key}' of shape {tuple(value.shape)} ({first.get('path')}) with "
                    f"{tuple(other.shape)} ({sample.get('path')}); give the dataset a fixed 'resize' (or kb_crop)"
                )
    return default_collate(samples)
