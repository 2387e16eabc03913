"""Small input tensors in the library's conventions: images [B,3,H,W] in [-1,1]; depth maps [B,1,H,W] + bool masks."""

from __future__ import annotations

import torch


def rand_image(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A seeded random image batch ``[B, 3, H, W]`` in [-1, 1]."""
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def depth_inputs(size: int, fill: float | None = None, batch: int = 2) -> dict[str, torch.Tensor]:
    """``pred`` and ``target`` ``[B, 1, size, size]`` (uniform in [0, 1), or all ``fill``) and an all-True ``mask``."""
    shape = (batch, 1, size, size)

    def values() -> torch.Tensor:
        return torch.rand(shape) if fill is None else torch.full(shape, float(fill))

    return {"pred": values(), "target": values(), "mask": torch.ones(shape, dtype=torch.bool)}
