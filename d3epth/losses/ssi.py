"""Scale-and-shift-invariant (SSI) depth loss with closed-form least-squares alignment.

The prediction is aligned to the target per image by the least-squares scale ``s`` and shift ``t`` (Ranftl et al.,
"Towards Robust Monocular Depth Estimation", TPAMI 2020; the same alignment E2E-FT uses for its pixel-space loss),
then compared with an L1 (E2E-FT) or halved squared (MiDaS) data term over the valid pixels. ``s`` and ``t`` are
functions of the prediction, and gradients flow through them.

All arithmetic runs in at least float32 with autocast disabled: the normal equations sum up to a few hundred thousand
squared values per image, which bfloat16/float16 cannot hold accurately (E2E-FT disables autocast here for the same
reason).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

__all__ = [
    "SSILoss",
    "align_prediction",
    "aligned_data_loss",
    "check_depth_inputs",
    "compute_scale_and_shift",
    "ssi_loss",
]

DataTerm = Literal["l1", "l2"]
Reduction = Literal["batch", "image", "none"]

_DATA_TERMS = ("l1", "l2")
_REDUCTIONS = ("batch", "image", "none")


def check_depth_inputs(pred: Tensor, target: Tensor, mask: Tensor, *, caller: str) -> None:
    """Validate a ``(pred, target, mask)`` triple of depth maps.

    Args:
        pred: predicted depth, floating point, shape ``[B,1,H,W]``.
        target: ground-truth depth, floating point, same shape as ``pred``.
        mask: valid-pixel mask, ``torch.bool``, same shape as ``pred``.
        caller: name of the calling function, used in the error messages.

    Raises:
        TypeError: if an argument is not a tensor.
        ValueError: on a wrong rank, channel count, shape, dtype or device.
    """
    for name, value in (("pred", pred), ("target", target), ("mask", mask)):
        if not isinstance(value, Tensor):
            raise TypeError(f"{caller}: '{name}' must be a torch.Tensor, got {type(value).__name__}")
    if pred.ndim != 4 or pred.shape[1] != 1:
        raise ValueError(f"{caller}: 'pred' must have shape [B,1,H,W], got {tuple(pred.shape)}")
    if target.shape != pred.shape:
        raise ValueError(
            f"{caller}: 'target' must have the shape of 'pred' {tuple(pred.shape)}, got {tuple(target.shape)}"
        )
    if mask.shape != pred.shape:
        raise ValueError(f"{caller}: 'mask' must have the shape of 'pred' {tuple(pred.shape)}, got {tuple(mask.shape)}")
    if not pred.is_floating_point():
        raise ValueError(f"{caller}: 'pred' must be a floating-point tensor, got {pred.dtype}")
    if not target.is_floating_point():
        raise ValueError(f"{caller}: 'target' must be a floating-point tensor, got {target.dtype}")
    if mask.dtype != torch.bool:
        raise ValueError(f"{caller}: 'mask' must be a torch.bool tensor, got {mask.dtype}")
    if not (pred.device == target.device == mask.device):
        raise ValueError(
            f"{caller}: 'pred', 'target' and 'mask' must be on one device, got {pred.device}, {target.device} and "
            f"{mask.device}"
        )


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    """Return the dtype to compute in: float32, or float64 when an input already is (e.g. for gradcheck)."""
    dtype = torch.float32
    for tensor in tensors:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype


def compute_scale_and_shift(pred: Tensor, target: Tensor, mask: Tensor, eps: float = 1e-8) -> tuple[Tensor, Tensor]:
    r"""Per-image least-squares scale and shift that map ``pred`` onto ``target`` over the valid pixels.

    Solves :math:`\min_{s,t} \sum_i M_i (s\,p_i + t - g_i)^2` per image. With :math:`a_{00}=\sum M p^2`,
    :math:`a_{01}=\sum M p`, :math:`a_{11}=\sum M`, :math:`b_0=\sum M p g`, :math:`b_1=\sum M g` and
    :math:`\det = a_{00} a_{11} - a_{01}^2` the closed form is
    :math:`s = (a_{11} b_0 - a_{01} b_1)/\det`, :math:`t = (a_{00} b_1 - a_{01} b_0)/\det`. It is evaluated in the
    algebraically identical centred form :math:`s = \sum M (p-\bar p)(g-\bar g) / \sum M (p-\bar p)^2`,
    :math:`t = \bar g - s \bar p` (means over the valid pixels; :math:`\det = a_{11} \sum M (p-\bar p)^2`), which
    avoids the catastrophic cancellation of :math:`a_{00} a_{11} - a_{01}^2` in float32.

    Singular images: when an image has fewer than 2 valid pixels or a (numerically) constant prediction,
    :math:`\sum M (p-\bar p)^2 \le \text{eps} \cdot \sum M p^2`, the scale is undetermined. Instead of MiDaS' and
    E2E-FT's ``s = t = 0`` (which blocks every gradient to the prediction, so a network that outputs a constant, e.g.
    a zero-initialised head, could never leave it) we fall back to the shift-only fit ``s = 1``,
    ``t = \bar g - \bar p``: finite, and the loss still pulls the prediction towards the target's shape. Images with
    no valid pixel get ``s = 1, t = 0``.

    Runs with autocast disabled, in float32 (float64 if an input is float64); ``s`` and ``t`` are differentiable
    functions of ``pred`` (and ``target``).

    Args:
        pred: predicted depth, shape ``[B,1,H,W]``, any unit.
        target: ground-truth depth, shape ``[B,1,H,W]``.
        mask: valid pixels, ``torch.bool``, shape ``[B,1,H,W]``.
        eps: relative threshold on the prediction's variance below which an image counts as singular.

    Returns:
        ``(scale, shift)``, each of shape ``[B]`` in the compute dtype; ``shift`` is in the target's unit.
    """
    check_depth_inputs(pred, target, mask, caller="compute_scale_and_shift")
    dtype = _compute_dtype(pred, target)
    with torch.autocast(device_type=pred.device.type, enabled=False):
        # torch.where (not a product with the mask) so that NaN/inf stored at invalid pixels cannot leak in.
        zero = pred.new_zeros((), dtype=dtype)
        p = torch.where(mask, pred.to(dtype), zero)
        g = torch.where(mask, target.to(dtype), zero)
        m = mask.to(dtype)
        dims = (1, 2, 3)
        count = m.sum(dims)
        safe_count = count.clamp_min(1.0)
        p_mean = (m * p).sum(dims) / safe_count
        g_mean = (m * g).sum(dims) / safe_count
        p_c = (p - p_mean.view(-1, 1, 1, 1)) * m
        g_c = (g - g_mean.view(-1, 1, 1, 1)) * m
        var = (p_c * p_c).sum(dims)
        cov = (p_c * g_c).sum(dims)
        singular = (count < 2) | (var <= eps * (m * p * p).sum(dims))
        # The denominator is replaced where singular so that the unselected branch of torch.where does not produce
        # inf/NaN, whose backward would poison the selected branch's gradient.
        scale = torch.where(singular, torch.ones_like(var), cov / torch.where(singular, torch.ones_like(var), var))
        shift = g_mean - scale * p_mean
    return scale, shift


def align_prediction(pred: Tensor, target: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """Return ``s * pred + t`` with the per-image least-squares ``s, t`` of :func:`compute_scale_and_shift`.

    Args:
        pred: predicted depth, shape ``[B,1,H,W]``.
        target: ground-truth depth, shape ``[B,1,H,W]``.
        mask: valid pixels, ``torch.bool``, shape ``[B,1,H,W]``.
        eps: singularity threshold, see :func:`compute_scale_and_shift`.

    Returns:
        Aligned prediction, shape ``[B,1,H,W]``, float32 (float64 for float64 inputs), in the target's unit.
    """
    scale, shift = compute_scale_and_shift(pred, target, mask, eps=eps)
    with torch.autocast(device_type=pred.device.type, enabled=False):
        return scale.view(-1, 1, 1, 1) * pred.to(scale.dtype) + shift.view(-1, 1, 1, 1)


def aligned_data_loss(
    aligned: Tensor,
    target: Tensor,
    mask: Tensor,
    data_term: DataTerm = "l1",
    reduction: Reduction = "batch",
) -> Tensor:
    r"""Masked L1 or halved squared error between an already aligned prediction and the target.

    Per pixel :math:`\rho(r) = |r|` (``"l1"``) or :math:`\rho(r) = \tfrac12 r^2` (``"l2"``), :math:`r = \hat p - g`.
    ``reduction="batch"`` returns :math:`\sum_{b,i} M \rho / \sum_{b,i} M` (every valid pixel of the batch counts
    once); ``"image"`` the mean over images that have a valid pixel of :math:`\sum_i M\rho / \sum_i M`; ``"none"`` the
    per-image values, shape ``[B]``, 0 for images without a valid pixel. Images without a valid pixel never add to
    the loss, and a batch without any valid pixel gives 0 (still attached to the graph).

    Args:
        aligned: aligned prediction, shape ``[B,1,H,W]``.
        target: ground-truth depth, shape ``[B,1,H,W]``.
        mask: valid pixels, ``torch.bool``, shape ``[B,1,H,W]``.
        data_term: ``"l1"`` or ``"l2"``.
        reduction: ``"batch"``, ``"image"`` or ``"none"``.

    Returns:
        Scalar loss (``[B]`` for ``reduction="none"``), float32 or float64.
    """
    check_depth_inputs(aligned, target, mask, caller="aligned_data_loss")
    if data_term not in _DATA_TERMS:
        raise ValueError(f"aligned_data_loss: data_term must be one of {_DATA_TERMS}, got {data_term!r}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"aligned_data_loss: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    dtype = _compute_dtype(aligned, target)
    with torch.autocast(device_type=aligned.device.type, enabled=False):
        m = mask.to(dtype)
        residual = torch.where(mask, aligned.to(dtype) - target.to(dtype), aligned.new_zeros((), dtype=dtype))
        per_pixel = residual.abs() if data_term == "l1" else 0.5 * residual * residual
        # Multiplying (not indexing) keeps the result attached to the graph even when no pixel is valid.
        per_image_sum = (per_pixel * m).sum((1, 2, 3))
        count = m.sum((1, 2, 3))
        if reduction == "batch":
            return per_image_sum.sum() / count.sum().clamp_min(1.0)
        per_image = per_image_sum / count.clamp_min(1.0)
        if reduction == "none":
            return per_image
        has_valid = (count > 0).to(dtype)
        return (per_image * has_valid).sum() / has_valid.sum().clamp_min(1.0)


def ssi_loss(
    pred: Tensor,
    target: Tensor,
    mask: Tensor,
    data_term: DataTerm = "l1",
    reduction: Reduction = "batch",
    eps: float = 1e-8,
) -> Tensor:
    r"""Scale-and-shift-invariant depth loss.

    .. math::

        \hat p = s\,p + t, \quad (s, t) = \arg\min \sum M (s p + t - g)^2 \text{ per image}, \qquad
        L = \frac{\sum M\, \rho(\hat p - g)}{\sum M}

    with :math:`\rho(r) = |r|` for ``data_term="l1"`` (E2E-FT: mean absolute error over the valid pixels) or
    :math:`\rho(r) = \tfrac12 r^2` for ``"l2"`` (MiDaS' :math:`L_{ssimse}`). See :func:`compute_scale_and_shift` for
    the alignment and its fallback on singular images, and :func:`aligned_data_loss` for the reductions.

    The default ``reduction="batch"`` pools all valid pixels of the batch (:math:`\sum_{b,i} / \sum_{b,i} M`), as both
    references do (MiDaS' "batch-based" reduction; E2E-FT's ``l1_loss(pred[mask], gt[mask])``): it keeps the recipes'
    loss scale, and an image with only a handful of valid pixels does not weigh as much as a fully valid one.
    ``"image"`` averages per-image means instead (the evaluation protocol's weighting).

    Args:
        pred: predicted depth, shape ``[B,1,H,W]``, any unit and any floating dtype (autocast output is fine).
        target: ground-truth depth, shape ``[B,1,H,W]``.
        mask: valid pixels, ``torch.bool``, shape ``[B,1,H,W]``.
        data_term: ``"l1"`` or ``"l2"``.
        reduction: ``"batch"``, ``"image"`` or ``"none"`` (per-image values, shape ``[B]``).
        eps: singularity threshold, see :func:`compute_scale_and_shift`.

    Returns:
        Scalar loss in float32 (float64 for float64 inputs), in the target's unit (squared for ``"l2"``).

    Example:
        >>> target = torch.rand(2, 1, 8, 8) + 1.0
        >>> mask = torch.ones_like(target, dtype=torch.bool)
        >>> float(ssi_loss(3.0 * target - 0.5, target, mask)) < 1e-5
        True
    """
    aligned = align_prediction(pred, target, mask, eps=eps)
    return aligned_data_loss(aligned, target, mask, data_term=data_term, reduction=reduction)


class SSILoss(nn.Module):
    """Scale-and-shift-invariant depth loss; a thin wrapper around :func:`ssi_loss`.

    Args:
        data_term: ``"l1"`` (E2E-FT) or ``"l2"`` (MiDaS, ½·squared error).
        reduction: ``"batch"``, ``"image"`` or ``"none"``, see :func:`ssi_loss`.
        eps: singularity threshold, see :func:`compute_scale_and_shift`.

    Shape:
        - pred, target, mask: ``[B,1,H,W]``; mask is ``torch.bool``.
        - Output: scalar (``[B]`` for ``reduction="none"``).
    """

    def __init__(self, data_term: DataTerm = "l1", reduction: Reduction = "batch", eps: float = 1e-8) -> None:
        super().__init__()
        if data_term not in _DATA_TERMS:
            raise ValueError(f"SSILoss: data_term must be one of {_DATA_TERMS}, got {data_term!r}")
        if reduction not in _REDUCTIONS:
            raise ValueError(f"SSILoss: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        self.data_term = data_term
        self.reduction = reduction
        self.eps = eps

    def forward(self, pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        """Compute the SSI loss, see :func:`ssi_loss`."""
        return ssi_loss(pred, target, mask, data_term=self.data_term, reduction=self.reduction, eps=self.eps)

    def extra_repr(self) -> str:
        """Show the hyper-parameters in ``print(module)``."""
        return f"data_term={self.data_term!r}, reduction={self.reduction!r}, eps={self.eps}"
