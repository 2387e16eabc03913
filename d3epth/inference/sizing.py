"""How inference sizes images: the processing size of an input and the one resampling rule, in and out.

Shared by the predictors (:mod:`d3epth.inference.predictor`) and the image reader and writer
(:mod:`d3epth.inference.images`), which resize while decoding and writing so that a large photo is never held at full
size in float.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

__all__ = ["SizeRule", "max_edge_size", "processing_size", "resize_bilinear"]

#: ``rule(height, width) -> (h, w)``: the size a model processes an image of ``height × width`` pixels at.
SizeRule = Callable[[int, int], tuple[int, int]]


def processing_size(height: int, width: int, resolution: int, multiple: int = 1) -> tuple[int, int]:
    """Processing size for an ``height × width`` image: longer side ≈ ``resolution``, sides multiples of ``multiple``.

    The aspect ratio is kept up to the rounding of each side to the nearest multiple (at least one multiple), so the
    network needs no padding; the prediction is resized back to ``height × width`` afterwards.

    Example: 375×1242 at 768, multiple 32 → 224×768 (231.9 → 224).
    """
    if resolution <= 0:
        raise ValueError(f"processing resolution must be positive, got {resolution}")
    scale = resolution / max(height, width)
    return (
        max(multiple, round(height * scale / multiple) * multiple),
        max(multiple, round(width * scale / multiple) * multiple),
    )


def max_edge_size(height: int, width: int, resolution: int) -> tuple[int, int]:
    """Marigold's processing size: longer edge = ``resolution``, the other side scaled and truncated.

    As ``MarigoldImageProcessor.resize_to_max_edge`` computes it; the teacher pads to its multiple itself.
    """
    if resolution <= 0:
        raise ValueError(f"processing resolution must be positive, got {resolution}")
    longer = max(height, width)
    return max(1, height * resolution // longer), max(1, width * resolution // longer)


def resize_bilinear(image: Tensor, size: tuple[int, int], antialias: bool = True) -> Tensor:
    """Resize ``[B,C,h,w]`` to ``size`` = ``(H, W)``: bilinear, half-pixel centres, antialiased when a side shrinks.

    The one resampling rule of inference, for images going in and predictions coming out; the same size returns
    ``image`` itself. ``antialias=False`` never antialiases (Marigold's pipeline resizes its predictions back so,
    ``is_aa=False``).
    """
    size = (int(size[0]), int(size[1]))
    if tuple(image.shape[-2:]) == size:
        return image
    shrink = size[0] < image.shape[-2] or size[1] < image.shape[-1]
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=antialias and shrink)
