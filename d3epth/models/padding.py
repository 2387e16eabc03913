"""Bottom/right padding to a size multiple, and the crop that undoes it.

Networks with a down-sampling factor ``f`` (the VAE: 8, timm backbones: 32) need inputs whose sides are multiples of
``f``. d3epth pads at the bottom and right only, so that latent cell (i, j) covers pixels [f·i, f·i + f) × [f·j,
f·j + f) of the original image and an output is brought back to the input size by keeping its top-left corner.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["crop_to", "pad_to_multiple"]


def pad_to_multiple(x: Tensor, multiple: int, value: float | bool | None = None) -> Tensor:
    """Pad [B,C,H,W] at the bottom and right to multiples of ``multiple``.

    Args:
        x: [B,C,H,W] tensor (any dtype; bool is padded through uint8).
        multiple: the size multiple (e.g. 8 for the SD VAE).
        value: ``None`` replicates the border (images); a number or bool pads with that constant (masks).

    Returns:
        [B,C,⌈H/m⌉·m,⌈W/m⌉·m]; ``x`` itself when no padding is needed.
    """
    height, width = x.shape[-2:]
    pad = (0, -width % multiple, 0, -height % multiple)
    if pad == (0, 0, 0, 0):
        return x
    if value is None:
        return F.pad(x, pad, mode="replicate")
    if x.dtype == torch.bool:
        return F.pad(x.to(torch.uint8), pad, value=int(value)).bool()
    return F.pad(x, pad, value=float(value))


def crop_to(x: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    """The top-left ``size = (H, W)`` corner of ``[..., H', W']`` (undoes :func:`pad_to_multiple`)."""
    return x[..., : size[0], : size[1]]
