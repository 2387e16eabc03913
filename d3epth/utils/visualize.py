"""Colourised depth panels for TensorBoard and for people: RGB | GT | prediction(s) | error.

Colours come from diffusers' Marigold image processor (the "Spectral" map Marigold uses), so d3epth pictures look
like Marigold's.
"""

from __future__ import annotations

import torch
from diffusers.pipelines.marigold.marigold_image_processing import MarigoldImageProcessor
from torch import Tensor

from d3epth.metrics.align import align


def colorize(values: Tensor, mask: Tensor | None = None, cmap: str = "Spectral") -> Tensor:
    """Map values [B,1,H,W] to colours [B,3,H,W] in [0,1], each image stretched to its own 2–98 % range.

    Args:
        values: any scalar field (depth in metres, normalised depth, errors).
        mask: bool [B,1,H,W]; the range is taken over these pixels, and pixels outside are drawn black.
        cmap: a colour map known to ``MarigoldImageProcessor.colormap`` ("Spectral", "binary", or matplotlib's).
    """
    values = values.detach().float().cpu()
    mask = torch.ones_like(values, dtype=torch.bool) if mask is None else mask.detach().cpu().bool()
    out = []
    for value, valid in zip(values, mask, strict=True):
        picked = value[valid] if valid.any() else value.flatten()
        lo, hi = torch.quantile(picked, torch.tensor([0.02, 0.98])).tolist()
        scaled = ((value - lo) / max(hi - lo, 1e-8)).clamp(0, 1)
        rgb = MarigoldImageProcessor.colormap(scaled[0], cmap=cmap, bytes=False)  # [H,W,3]
        rgb = rgb.permute(2, 0, 1) * valid
        out.append(rgb)
    return torch.stack(out)


def depth_error_panel(
    image: Tensor, depth: Tensor, valid_mask: Tensor, predictions: dict[str, Tensor], alignment: str = "depth"
) -> Tensor:
    """One image grid for TensorBoard: per row RGB | GT | each prediction | its error.

    Predictions are affine-invariant, so each is aligned to the GT per image (least squares, as the evaluator does)
    before it and its absolute relative error (clipped at 0.5; black = no GT) are drawn.

    Args:
        image: [B,3,H,W] in [−1,1].
        depth: GT [B,1,H,W] in metres (0 = invalid).
        valid_mask: bool [B,1,H,W].
        predictions: name → depth [B,1,h,w] (resized to H×W if needed).
        alignment: ``"depth"``, ``"disparity"`` or ``"none"``, as in :func:`d3epth.metrics.align.align`.

    Returns:
        float [3, B·H, C·W] in [0,1], C = 2 + 2·len(predictions).
    """
    size = image.shape[-2:]
    columns = [((image.detach().float().cpu() + 1) / 2).clamp(0, 1), colorize(depth, valid_mask)]
    for pred in predictions.values():
        pred = pred.detach().float()
        if pred.shape[-2:] != size:
            pred = torch.nn.functional.interpolate(pred, size=size, mode="bilinear", align_corners=False)
        aligned = align(pred.cpu(), depth.cpu(), valid_mask.cpu(), space=alignment).depth.float()
        columns.append(colorize(aligned, valid_mask))
        error = (aligned - depth.cpu()).abs() / depth.cpu().clamp_min(1e-6)
        columns.append(colorize(error.clamp(0, 0.5), valid_mask, cmap="binary") * valid_mask.cpu())
    rows = torch.cat(columns, dim=-1)  # [B,3,H,C·W]
    return torch.cat(list(rows), dim=-2)  # [3,B·H,C·W]
