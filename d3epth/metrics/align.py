"""Per-image least-squares scale-and-shift alignment of affine-invariant predictions, for evaluation.

Affine-invariant depth models (Marigold, E2E-FT, the d3epth students) predict depth up to an unknown scale and shift,
so each prediction is aligned to its ground truth before scoring (Marigold ``src/util/alignment.py`` and
``script/depth/eval.py``):

* ``"depth"``: ``[s, t] = argmin sum_valid (s * p + t - g)^2`` and the aligned depth is ``s * p + t``.
* ``"disparity"`` (for models that predict affine-invariant *disparity*, e.g. MiDaS, DPT, Depth Anything):
  the ground truth becomes ``1 / g`` where ``g > 0``; the fit uses ``valid & (g > 0) & (p > 0)``; the aligned
  disparity ``s * p + t`` is clamped from below at ``MIN_DISPARITY = 1e-3`` 1/m at *every* pixel (Marigold's
  ``np.clip(disparity_pred, a_min=1e-3)``), so it is strictly positive, and inverted to depth (hence <= 1000 m before
  the benchmark's range clipping).
* ``"none"``: metric models; the prediction is scored as it is.

The fit is solved in closed form in float64 with centred sums (numerically safer than the raw normal equations).
Degenerate cases never produce NaN or inf:

* no pixel usable for the fit: ``scale = shift = 0`` and ``num_pixels = 0`` (the caller skips the image when it also
  has no pixel to score);
* the prediction does not vary over the fit mask (constant prediction, a single pixel): ``scale = 0`` and
  ``shift = mean(target)``, i.e. the best constant, which is also what the minimum-norm least-squares solution yields
  for the aligned values.

Non-finite *predictions* inside the mask do propagate (a broken model should not score well); anything outside the
mask never enters the sums.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "ALIGNMENT_SPACES",
    "MIN_DISPARITY",
    "Alignment",
    "align",
    "align_depth",
    "align_disparity",
    "as_depth_batch",
    "fit_scale_shift",
]

AlignmentSpace = Literal["depth", "disparity", "none"]
ALIGNMENT_SPACES: tuple[str, ...] = ("depth", "disparity", "none")

#: Lower clamp (1/m) of aligned disparity before inversion, as in Marigold's evaluation script.
MIN_DISPARITY = 1e-3

# The fit is called singular when the prediction's spread over the mask is at the level of float64 rounding of its
# magnitude; a real (even float16) prediction varies far more than this.
_SINGULAR_RTOL = 64 * torch.finfo(torch.float64).eps


class Alignment(NamedTuple):
    """Result of aligning a batch.

    Attributes:
        depth: Aligned depth [B,1,H,W], float64, metres (before any range clipping).
        scale: Per-image scale [B], float64 (in disparity space: of the disparity).
        shift: Per-image shift [B], float64.
        num_pixels: Pixels used by the fit per image [B], int64; 0 means the fit had no data.
    """

    depth: Tensor
    scale: Tensor
    shift: Tensor
    num_pixels: Tensor


def as_depth_batch(x: Tensor, name: str) -> Tensor:
    """Return ``x`` as [B,1,H,W], accepting [B,H,W].

    Args:
        x: Tensor [B,1,H,W] or [B,H,W].
        name: Argument name for the error message.

    Returns:
        A view of ``x`` shaped [B,1,H,W].
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"'{name}' must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 3:
        return x.unsqueeze(1)
    if x.dim() == 4 and x.shape[1] == 1:
        return x
    raise ValueError(f"'{name}' must have shape [B,1,H,W] or [B,H,W], got {tuple(x.shape)}")


def _check_inputs(pred: Tensor, target: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    pred = as_depth_batch(pred, "pred")
    target = as_depth_batch(target, "target")
    mask = as_depth_batch(mask, "mask")
    if pred.shape != target.shape or mask.shape != target.shape:
        raise ValueError(
            f"pred, target and mask must have the same shape, got {tuple(pred.shape)}, {tuple(target.shape)} and "
            f"{tuple(mask.shape)}"
        )
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got dtype {mask.dtype}")
    return pred, target, mask


def _downsample(pred: Tensor, target: Tensor, mask: Tensor, max_resolution: int) -> tuple[Tensor, Tensor, Tensor]:
    """Nearest-neighbour downsampling so that the longest side is at most ``max_resolution`` (Marigold's rule)."""
    height, width = pred.shape[-2:]
    factor = min(max_resolution / height, max_resolution / width)
    if factor >= 1:
        return pred, target, mask
    pred = F.interpolate(pred, scale_factor=factor, mode="nearest")
    target = F.interpolate(target, scale_factor=factor, mode="nearest")
    mask = F.interpolate(mask.to(pred.dtype), scale_factor=factor, mode="nearest") > 0.5
    return pred, target, mask


def fit_scale_shift(
    pred: Tensor, target: Tensor, mask: Tensor, max_resolution: int | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-image least-squares ``[s, t] = argmin sum_mask (s * pred + t - target)^2``, in float64.

    Args:
        pred: Prediction [B,1,H,W] or [B,H,W], any float dtype.
        target: Target [B,1,H,W] or [B,H,W], same units the aligned prediction should have.
        mask: Bool [B,1,H,W] or [B,H,W]; pixels that enter the fit.
        max_resolution: If set and the image is larger, fit on a nearest-downsampled copy whose longest side is at
            most this many pixels.

    Returns:
        ``(scale, shift, num_pixels)``: float64 [B], float64 [B], int64 [B]. See the module docstring for the
        degenerate cases (``num_pixels == 0``: both zero; constant prediction: ``scale = 0``, ``shift = mean``).
    """
    pred, target, mask = _check_inputs(pred, target, mask)
    x = pred.to(torch.float64)
    y = target.to(torch.float64)
    if max_resolution is not None:
        if max_resolution <= 0:
            raise ValueError(f"max_resolution must be a positive number of pixels or None, got {max_resolution}")
        x, y, mask = _downsample(x, y, mask, max_resolution)
    x, y, m = x.flatten(1), y.flatten(1), mask.flatten(1)

    n = m.sum(dim=1)
    nf = n.clamp_min(1).to(torch.float64)
    # torch.where, not multiplication by the mask: NaN/inf outside the mask must not leak into the sums.
    x_mean = torch.where(m, x, 0.0).sum(dim=1) / nf
    y_mean = torch.where(m, y, 0.0).sum(dim=1) / nf
    dx = torch.where(m, x - x_mean[:, None], 0.0)
    dy = torch.where(m, y - y_mean[:, None], 0.0)
    var = (dx * dx).sum(dim=1)
    cov = (dx * dy).sum(dim=1)

    x_absmax = torch.where(m, x.abs(), 0.0).amax(dim=1)
    singular = var <= nf * (_SINGULAR_RTOL * x_absmax) ** 2  # includes n == 0 and n == 1
    scale = torch.where(singular, torch.zeros_like(var), cov / torch.where(singular, torch.ones_like(var), var))
    shift = y_mean - scale * x_mean
    return scale, shift, n


def align_depth(pred: Tensor, target: Tensor, mask: Tensor, max_resolution: int | None = None) -> Alignment:
    """Align an affine-invariant depth prediction to ground-truth depth by per-image least squares.

    Args:
        pred: Predicted (relative) depth [B,1,H,W] or [B,H,W].
        target: Ground-truth depth [B,1,H,W] or [B,H,W] in metres.
        mask: Bool mask of valid pixels, same shape.
        max_resolution: Optional fit resolution limit (see ``fit_scale_shift``).

    Returns:
        ``Alignment`` with ``depth = scale * pred + shift`` [B,1,H,W] (float64, metres) at every pixel.
    """
    pred, target, mask = _check_inputs(pred, target, mask)
    scale, shift, n = fit_scale_shift(pred, target, mask, max_resolution)
    depth = scale.view(-1, 1, 1, 1) * pred.to(torch.float64) + shift.view(-1, 1, 1, 1)
    return Alignment(depth, scale, shift, n)


def align_disparity(pred: Tensor, target: Tensor, mask: Tensor, max_resolution: int | None = None) -> Alignment:
    """Align an affine-invariant disparity prediction in disparity space and return depth.

    Rule (Marigold ``least_square_disparity``): ground-truth disparity ``1 / g`` where ``g > 0``; fit mask
    ``mask & (g > 0) & (pred > 0)``; aligned disparity ``max(s * pred + t, 1e-3)`` at every pixel; depth = its inverse.

    Args:
        pred: Predicted (relative) disparity [B,1,H,W] or [B,H,W]; larger = closer.
        target: Ground-truth depth [B,1,H,W] or [B,H,W] in metres.
        mask: Bool mask of valid pixels, same shape.
        max_resolution: Optional fit resolution limit (see ``fit_scale_shift``).

    Returns:
        ``Alignment`` with aligned depth [B,1,H,W] (float64, metres, in (0, 1000]); scale and shift are those of
        the disparity.
    """
    pred, target, mask = _check_inputs(pred, target, mask)
    g = target.to(torch.float64)
    positive = g > 0
    gt_disparity = torch.where(positive, 1.0 / torch.where(positive, g, 1.0), 0.0)
    fit_mask = mask & positive & (pred > 0)
    scale, shift, n = fit_scale_shift(pred, gt_disparity, fit_mask, max_resolution)
    disparity = scale.view(-1, 1, 1, 1) * pred.to(torch.float64) + shift.view(-1, 1, 1, 1)
    depth = 1.0 / disparity.clamp_min(MIN_DISPARITY)
    return Alignment(depth, scale, shift, n)


def align(
    pred: Tensor,
    target: Tensor,
    mask: Tensor,
    space: AlignmentSpace | str = "depth",
    max_resolution: int | None = None,
) -> Alignment:
    """Align a prediction to ground truth in the given space.

    Args:
        pred: Prediction [B,1,H,W] or [B,H,W]: relative depth (``"depth"``), relative disparity
            (``"disparity"``) or metric depth in metres (``"none"``).
        target: Ground-truth depth in metres, same shape.
        mask: Bool mask of valid pixels, same shape.
        space: ``"depth"``, ``"disparity"`` or ``"none"``.
        max_resolution: Optional fit resolution limit (see ``fit_scale_shift``).

    Returns:
        ``Alignment`` (aligned depth [B,1,H,W] float64 in metres, scale [B], shift [B], num_pixels [B]).
    """
    if space == "depth":
        return align_depth(pred, target, mask, max_resolution)
    if space == "disparity":
        return align_disparity(pred, target, mask, max_resolution)
    if space == "none":
        pred, target, mask = _check_inputs(pred, target, mask)
        batch = pred.shape[0]
        ones = torch.ones(batch, dtype=torch.float64, device=pred.device)
        return Alignment(pred.to(torch.float64), ones, torch.zeros_like(ones), mask.flatten(1).sum(dim=1))
    raise ValueError(f"Unknown alignment space '{space}'; expected one of {list(ALIGNMENT_SPACES)}")
