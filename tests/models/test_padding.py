"""d3epth.models.padding: the one bottom/right pad every model input goes through."""

from __future__ import annotations

import torch

from d3epth.models.padding import pad_to_multiple


def test_pad_to_multiple_pads_bottom_right() -> None:
    x = torch.arange(6.0).view(1, 1, 2, 3)
    padded = pad_to_multiple(x, 4)
    assert padded.shape == (1, 1, 4, 4)
    assert torch.equal(padded[..., :2, :3], x)
    assert torch.equal(padded[..., 3, :3], x[..., 1, :])  # replicated last row
    mask = pad_to_multiple(torch.ones(1, 1, 2, 3, dtype=torch.bool), 4, value=False)
    assert mask.dtype == torch.bool and mask.sum() == 6
