"""Colourised depth panels for TensorBoard and for people: RGB | GT | prediction(s) | error.

Colours come from diffusers' Marigold image processor (the "Spectral" map Marigold uses), so d3epth pictures look
like Marigold's.

So that panels can be read and compared across validations:

* the GT column is black where there is no GT, but the prediction is drawn everywhere (on sparse LiDAR GT such as
  KITTI's, masking it by the GT would leave a few dots); both share the colour range of the valid GT;
* the error column maps AbsRel |pred − gt| / gt on the *fixed* range [0, :data:`ERROR_RANGE`] (white = 0, black =
  ≥ 0.5; "binary" map), the same for every image and step, and pixels without GT are :data:`NO_GT_COLOUR` (magenta,
  which the grey ramp never produces). :data:`PANEL_TAG_SUFFIX` says so in the TensorBoard tag.
"""

from __future__ import annotations

import torch
from diffusers.pipelines.marigold.marigold_image_processing import MarigoldImageProcessor
from torch import Tensor

from d3epth.metrics.align import align

#: Upper end of the fixed AbsRel range of the error column (AbsRel ≥ this is drawn black).
ERROR_RANGE = 0.5
#: Colour (RGB in [0,1]) of error pixels without ground truth.
NO_GT_COLOUR: tuple[float, float, float] = (1.0, 0.0, 1.0)
#: Appended to the TensorBoard tag of each panel: the columns and the error column's fixed scale.
PANEL_TAG_SUFFIX = "rgb_gt_pred_error__abs_rel_0-0.5_white-black__magenta_no_gt"


def colorize(values: Tensor, mask: Tensor | None = None, cmap: str = "Spectral", blank_outside: bool = True) -> Tensor:
    """Map values [B,1,H,W] to colours [B,3,H,W] in [0,1], each image stretched to its own 2–98 % range.

    Args:
        values: any scalar field (depth in metres, normalised depth, errors).
        mask: bool [B,1,H,W]; the range is taken over these pixels.
        cmap: a colour map known to ``MarigoldImageProcessor.colormap`` ("Spectral", "binary", or matplotlib's).
        blank_outside: draw pixels outside ``mask`` black (else every pixel is drawn, clipped to the range).
    """
    values = values.detach().float().cpu()
    mask = torch.ones_like(values, dtype=torch.bool) if mask is None else mask.detach().cpu().bool()
    out = []
    for value, valid in zip(values, mask, strict=True):
        picked = value[valid] if valid.any() else value.flatten()
        lo, hi = torch.quantile(picked, torch.tensor([0.02, 0.98])).tolist()
        scaled = ((value - lo) / max(hi - lo, 1e-8)).clamp(0, 1)
        # [H,W,3]; float64 when diffusers hands the map to matplotlib (installed), float32 from its own fallback
        rgb = MarigoldImageProcessor.colormap(scaled[0], cmap=cmap, bytes=False).float()
        rgb = rgb.permute(2, 0, 1)
        out.append(rgb * valid if blank_outside else rgb)
    return torch.stack(out)


def colorize_error(error: Tensor, valid_mask: Tensor) -> Tensor:
    """AbsRel [B,1,H,W] on the fixed range [0, ERROR_RANGE] ("binary": white = 0), :data:`NO_GT_COLOUR` off the GT."""
    error = error.detach().float().cpu()
    valid = valid_mask.detach().cpu().bool()
    scaled = (error / ERROR_RANGE).clamp(0, 1).nan_to_num(1.0)
    rgb = torch.stack([MarigoldImageProcessor.colormap(e[0], cmap="binary", bytes=False).float() for e in scaled])
    rgb = rgb.permute(0, 3, 1, 2)  # [B,3,H,W]
    invalid = torch.tensor(NO_GT_COLOUR, dtype=rgb.dtype).view(1, 3, 1, 1).expand_as(rgb)
    return torch.where(valid, rgb, invalid)


def depth_error_panel(
    image: Tensor, depth: Tensor, valid_mask: Tensor, predictions: dict[str, Tensor], alignment: str = "depth"
) -> Tensor:
    """One image grid for TensorBoard: per row RGB | GT | each prediction | its error.

    Predictions are affine-invariant, so each is aligned to the GT per image (least squares, as the evaluator does)
    before it is drawn (every pixel, in the GT's colour range) and its absolute relative error (fixed range
    [0, 0.5], magenta = no GT; see the module docstring).

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
        columns.append(colorize(aligned, valid_mask, blank_outside=False))
        error = (aligned - depth.cpu()).abs() / depth.cpu().clamp_min(1e-6)
        columns.append(colorize_error(error, valid_mask))
    rows = torch.cat(columns, dim=-1)  # [B,3,H,C·W]
    return torch.cat(list(rows), dim=-2)  # [3,B·H,C·W]
