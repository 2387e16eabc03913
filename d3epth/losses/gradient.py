r"""Multi-scale gradient losses on the residual of an aligned depth prediction.

Two forms:

- :func:`gradient_matching_loss`: MiDaS' multi-scale gradient matching term (Ranftl et al., TPAMI 2020), kept exactly
  in its published form (strided subsampling, forward differences, L1, neighbour-product masks).
- :func:`gradient_huber_loss`: our "edge-aware gradient Huber" term of the Hybrid Depth Loss (D³epth's stage 2). The
  paper does not publish its formula; the form documented below is our assumption (``docs/design.md``).

Both compare gradients of the prediction *after* least-squares scale/shift alignment with gradients of the target.
Because a spatial gradient is linear, :math:`\nabla\hat p - \nabla g = \nabla(\hat p - g)`, so both are computed
on the residual :math:`R = \hat p - g` once. All arithmetic runs with autocast disabled in float32 (float64 for
float64 inputs).
"""

from __future__ import annotations

from typing import Literal

import kornia
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from d3epth.losses.ssi import _compute_dtype, align_prediction, check_depth_inputs

__all__ = [
    "GradientHuberLoss",
    "GradientMatchingLoss",
    "edge_weights",
    "gradient_huber_loss",
    "gradient_matching_loss",
]

EdgeSource = Literal["image", "depth", "both", "none"]
GradientMode = Literal["sobel", "diff"]
Reduction = Literal["batch", "image"]

_EDGE_SOURCES = ("image", "depth", "both", "none")
_GRADIENT_MODES = ("sobel", "diff")
_REDUCTIONS = ("batch", "image")


def _check_scales(scales: int, caller: str) -> None:
    if not isinstance(scales, int) or scales < 1:
        raise ValueError(f"{caller}: scales must be a positive int, got {scales!r}")


def _check_choice(value: str, choices: tuple[str, ...], name: str, caller: str) -> None:
    if value not in choices:
        raise ValueError(f"{caller}: {name} must be one of {choices}, got {value!r}")


def _reduce(numerator: Tensor, count: Tensor, reduction: str) -> Tensor:
    """Reduce per-image sums ``[B]`` and valid counts ``[B]`` to a scalar; empty images add nothing."""
    if reduction == "batch":
        return numerator.sum() / count.sum().clamp_min(1.0)
    has_valid = (count > 0).to(numerator.dtype)
    per_image = numerator / count.clamp_min(1.0)
    return (per_image * has_valid).sum() / has_valid.sum().clamp_min(1.0)


def gradient_matching_loss(
    pred: Tensor,
    target: Tensor,
    mask: Tensor,
    scales: int = 4,
    reduction: Reduction = "batch",
    align: bool = True,
) -> Tensor:
    r"""MiDaS multi-scale gradient matching loss.

    .. math::

        L_{gm} = \sum_{k=0}^{K-1} \frac{\sum_{b,i} |\partial_x R^k|\, M^k_x + |\partial_y R^k|\, M^k_y}{\sum_{b,i} M^k}

    with :math:`R = M(\hat p - g)`, :math:`R^k, M^k` subsampled with stride :math:`2^k`, forward differences
    :math:`\partial_x R_{i,j} = R_{i,j+1} - R_{i,j}` and :math:`M^k_x = M^k_{i,j+1} M^k_{i,j}` (likewise in y).
    ``reduction="batch"`` pools numerator and denominator over the batch (MiDaS' default "batch-based");
    ``"image"`` averages per-image ratios over images with a valid pixel. MiDaS adds it to the SSI loss with weight
    α = 0.5.

    Args:
        pred: predicted depth, shape ``[B,1,H,W]``; aligned to ``target`` first unless ``align=False``.
        target: ground-truth depth, shape ``[B,1,H,W]``.
        mask: valid pixels, ``torch.bool``, shape ``[B,1,H,W]``.
        scales: number of scales K.
        reduction: ``"batch"`` or ``"image"``.
        align: align ``pred`` with :func:`~d3epth.losses.ssi.align_prediction` first; pass ``False`` when ``pred``
            is already the aligned prediction (as :class:`~d3epth.losses.hybrid.HybridDepthLoss` does).

    Returns:
        Scalar loss in the target's unit (per pixel), float32 or float64.
    """
    caller = "gradient_matching_loss"
    check_depth_inputs(pred, target, mask, caller=caller)
    _check_scales(scales, caller)
    _check_choice(reduction, _REDUCTIONS, "reduction", caller)
    aligned = align_prediction(pred, target, mask) if align else pred
    dtype = _compute_dtype(aligned, target)
    with torch.autocast(device_type=pred.device.type, enabled=False):
        m_full = mask.to(dtype)
        r_full = torch.where(mask, aligned.to(dtype) - target.to(dtype), m_full.new_zeros(()))
        total = r_full.new_zeros(())
        for k in range(scales):
            step = 2**k
            r = r_full[:, :, ::step, ::step]
            m = m_full[:, :, ::step, ::step]
            grad_x = (r[..., :, 1:] - r[..., :, :-1]).abs() * (m[..., :, 1:] * m[..., :, :-1])
            grad_y = (r[..., 1:, :] - r[..., :-1, :]).abs() * (m[..., 1:, :] * m[..., :-1, :])
            numerator = grad_x.sum((1, 2, 3)) + grad_y.sum((1, 2, 3))
            total = total + _reduce(numerator, m.sum((1, 2, 3)), reduction)
    return total


def _masked_avg_pool(x: Tensor, m: Tensor, factor: int) -> tuple[Tensor, Tensor]:
    """Average ``x`` over the valid pixels of each ``factor x factor`` cell.

    Returns the pooled values (0 in cells without a valid pixel) and the pooled mask (float, 1 where the cell has a
    valid pixel). ``avg_pool2d``'s divisor is the same for numerator and denominator, so it cancels, also in the
    partial cells that ``ceil_mode`` keeps at the bottom/right border.
    """
    if factor == 1:
        return x * m, m
    numerator = F.avg_pool2d(x * m, factor, ceil_mode=True)
    denominator = F.avg_pool2d(m, factor, ceil_mode=True)
    pooled_mask = (denominator > 0).to(x.dtype)
    return numerator / denominator.clamp_min(torch.finfo(x.dtype).tiny), pooled_mask


def _gradient_masks(m: Tensor, mode: str) -> tuple[Tensor, Tensor]:
    """Masks of the pixels whose x / y derivative only reads valid pixels.

    kornia's ``spatial_gradient`` replicates the border, so the mask is padded the same way: a pixel on the image
    border is valid if its replicated neighbours are. Sobel reads the full 3x3 neighbourhood; the central difference
    ("diff") reads the left/right (x) or top/bottom (y) neighbours only.
    """
    invalid = F.pad(1.0 - m, (1, 1, 1, 1), mode="replicate")
    if mode == "sobel":
        invalid_any = F.max_pool2d(invalid, 3, stride=1)
        valid = 1.0 - invalid_any
        return valid, valid
    valid_x = 1.0 - F.max_pool2d(invalid[:, :, 1:-1, :], (1, 3), stride=1)
    valid_y = 1.0 - F.max_pool2d(invalid[:, :, :, 1:-1], (3, 1), stride=1)
    return valid_x, valid_y


def edge_weights(
    target: Tensor,
    mask: Tensor,
    image: Tensor | None = None,
    source: EdgeSource = "image",
    beta: float = 1.0,
    sigma_image: float = 0.1,
    sigma_depth: float = 0.05,
    gradient_mode: GradientMode = "sobel",
) -> Tensor:
    r"""Per-pixel edge weights :math:`w \in [1, 1 + \beta)` that grow at image and/or ground-truth edges.

    .. math::

        w = 1 + \beta a, \quad a_{img} = 1 - e^{-E_{img}/\sigma_{img}}, \quad a_{dep} = 1 - e^{-E_{dep}/\sigma_{dep}}

    with :math:`a = a_{img}` (``source="image"``), :math:`a_{dep}` (``"depth"``), :math:`\max(a_{img}, a_{dep})`
    (``"both"``) or 0 (``"none"``, i.e. :math:`w = 1`).

    - :math:`E_{img} = \frac1C \sum_c \|\nabla I_c\|_2`: mean over channels of the gradient magnitude of the image,
      which is expected in [-1, 1] (the sample contract), so a black-to-white step gives 1 and ``sigma_image=0.1``
      marks it as a full edge.
    - :math:`E_{dep} = \|\nabla g\|_2 / \mathrm{MAD}(g)`: gradient magnitude of the target divided by the per-image
      mean absolute deviation of the valid target values, so the weight is the same for metric or normalised depth
      (scale and shift invariant, like the loss). Set to 0 where the derivative reads an invalid pixel, so hole
      borders are not mistaken for edges.

    The saturating form :math:`1 - e^{-E/\sigma}` is the complement of monodepth's edge-aware smoothness weight
    :math:`e^{-|\nabla I|}` (Godard et al. 2017): there edges *lower* a smoothness penalty, here they *raise* the
    gradient-matching penalty, and the weight stays bounded by :math:`1 + \beta` however sharp the edge is.
    Derivatives are kornia's ``spatial_gradient`` (normalised: a unit ramp gives 1). No gradient flows through the
    weights.

    Args:
        target: ground-truth depth, shape ``[B,1,H,W]``.
        mask: valid pixels, ``torch.bool``, shape ``[B,1,H,W]``.
        image: RGB image in [-1, 1], shape ``[B,C,H,W]``; required for ``source`` ``"image"`` or ``"both"``.
        source: ``"image"``, ``"depth"``, ``"both"`` or ``"none"``.
        beta: extra weight at a full edge (``w`` tends to ``1 + beta``).
        sigma_image: image-gradient magnitude (in image units per pixel) at which :math:`a_{img} = 1 - 1/e`.
        sigma_depth: relative depth-gradient magnitude (per pixel, in units of the MAD) at which
            :math:`a_{dep} = 1 - 1/e`.
        gradient_mode: ``"sobel"`` or ``"diff"`` (central difference), passed to ``kornia.filters.spatial_gradient``.

    Returns:
        Weights, shape ``[B,1,H,W]``, float32 (float64 for float64 targets), detached.
    """
    caller = "edge_weights"
    check_depth_inputs(target, target, mask, caller=caller)
    _check_choice(source, _EDGE_SOURCES, "source", caller)
    _check_choice(gradient_mode, _GRADIENT_MODES, "gradient_mode", caller)
    if beta < 0 or sigma_image <= 0 or sigma_depth <= 0:
        raise ValueError(
            f"{caller}: need beta >= 0 and sigma_image, sigma_depth > 0, got beta={beta}, sigma_image={sigma_image}, "
            f"sigma_depth={sigma_depth}"
        )
    if source in ("image", "both"):
        if image is None:
            raise ValueError(f"{caller}: source={source!r} needs 'image' [B,C,H,W], got None")
        if not isinstance(image, Tensor) or image.ndim != 4 or image.shape[0] != target.shape[0]:
            got = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
            raise ValueError(f"{caller}: 'image' must have shape [B,C,H,W] with B={target.shape[0]}, got {got}")
        if image.shape[-2:] != target.shape[-2:]:
            raise ValueError(
                f"{caller}: 'image' must have the spatial size of 'target' {tuple(target.shape[-2:])}, got "
                f"{tuple(image.shape[-2:])}"
            )
        if not image.is_floating_point():
            raise ValueError(f"{caller}: 'image' must be floating point (in [-1, 1]), got {image.dtype}")
    dtype = _compute_dtype(target)
    with torch.no_grad(), torch.autocast(device_type=target.device.type, enabled=False):
        strength = torch.zeros_like(target, dtype=dtype)
        if source in ("image", "both"):
            grad = kornia.filters.spatial_gradient(image.to(dtype), mode=gradient_mode, normalized=True)
            magnitude = grad.pow(2).sum(dim=2).sqrt().mean(dim=1, keepdim=True)
            strength = torch.maximum(strength, 1.0 - torch.exp(-magnitude / sigma_image))
        if source in ("depth", "both"):
            m = mask.to(dtype)
            g = torch.where(mask, target.to(dtype), m.new_zeros(()))
            count = m.sum((1, 2, 3), keepdim=True).clamp_min(1.0)
            mean = g.sum((1, 2, 3), keepdim=True) / count
            mad = (((g - mean).abs() * m).sum((1, 2, 3), keepdim=True) / count).clamp_min(torch.finfo(dtype).eps)
            grad = kornia.filters.spatial_gradient(g, mode=gradient_mode, normalized=True)
            valid_x, valid_y = _gradient_masks(m, gradient_mode)
            magnitude = ((grad[:, :, 0] * valid_x).pow(2) + (grad[:, :, 1] * valid_y).pow(2)).sqrt() / mad
            strength = torch.maximum(strength, 1.0 - torch.exp(-magnitude / sigma_depth))
        return 1.0 + beta * strength


def gradient_huber_loss(
    pred: Tensor,
    target: Tensor,
    mask: Tensor,
    image: Tensor | None = None,
    scales: int = 4,
    delta: float = 0.05,
    edge_source: EdgeSource = "image",
    edge_beta: float = 1.0,
    edge_sigma_image: float = 0.1,
    edge_sigma_depth: float = 0.05,
    gradient_mode: GradientMode = "sobel",
    reduction: Reduction = "batch",
    align: bool = True,
) -> Tensor:
    r"""Edge-aware multi-scale gradient Huber loss (our documented form of D³epth's "Edge-aware Gradient Huber").

    .. math::

        L = \frac1K \sum_{k=0}^{K-1}
            \frac{\sum_{b,i} w^k \left[ \rho_\delta(\partial_x \hat p^k - \partial_x g^k)\, V^k_x
                                      + \rho_\delta(\partial_y \hat p^k - \partial_y g^k)\, V^k_y \right]}
                 {\sum_{b,i} M^k},
        \qquad
        \rho_\delta(r) = \begin{cases} \tfrac12 r^2 & |r| \le \delta \\ \delta(|r| - \tfrac12\delta) & |r| > \delta
        \end{cases}

    - :math:`\hat p` is the prediction after per-image least-squares scale/shift alignment (``align=True``, or
      passed in already aligned with ``align=False``), :math:`g` the target; both in the target's unit.
    - Scale :math:`k` downsamples by :math:`2^k` with a *masked* average pool: each cell averages only its valid
      pixels (so invalid depth never leaks in), :math:`M^k` marks cells with at least one valid pixel.
    - :math:`\partial_x, \partial_y` are ``kornia.filters.spatial_gradient`` (``gradient_mode`` ``"sobel"`` by
      default, normalised: a unit ramp gives 1 per pixel of that scale); :math:`V^k_x, V^k_y` keep only the
      derivatives whose stencil reads valid cells.
    - :math:`\rho_\delta` is the standard Huber function (``torch.nn.functional.huber_loss``): quadratic for small
      gradient errors, linear (bounded gradient :math:`\delta`) for large ones, such as a GT edge that is off by a
      pixel. This is *not* DepthMaster's inverted "Huber" (quadratic for large errors). ``delta`` is in target units
      per pixel; the default 0.05 suits targets in [-1, 1] (normalised depth).
    - :math:`w^k` is :func:`edge_weights` computed once at full resolution and max-pooled to scale :math:`k` (a
      coarse cell takes its strongest edge), so edges of the image and/or the ground truth weigh up to
      :math:`1 + \beta`.
    - ``reduction="batch"`` pools each scale's numerator and :math:`\sum M^k` over the batch (as MiDaS);
      ``"image"`` averages per-image ratios over images with a valid pixel. Scales are averaged (not summed, unlike
      MiDaS), so ``delta`` and the loss scale do not depend on K.

    Args:
        pred: predicted depth, shape ``[B,1,H,W]``.
        target: ground-truth depth, shape ``[B,1,H,W]``.
        mask: valid pixels, ``torch.bool``, shape ``[B,1,H,W]``.
        image: RGB image in [-1, 1], shape ``[B,C,H,W]``; needed for ``edge_source`` ``"image"``/``"both"``.
        scales: number of scales K.
        delta: Huber threshold δ, target units per pixel.
        edge_source: ``"image"``, ``"depth"``, ``"both"`` or ``"none"``, see :func:`edge_weights`.
        edge_beta: β of :func:`edge_weights`.
        edge_sigma_image: ``sigma_image`` of :func:`edge_weights`.
        edge_sigma_depth: ``sigma_depth`` of :func:`edge_weights`.
        gradient_mode: ``"sobel"`` or ``"diff"``.
        reduction: ``"batch"`` or ``"image"``.
        align: align ``pred`` first (see :func:`gradient_matching_loss`).

    Returns:
        Scalar loss, float32 (float64 for float64 inputs).
    """
    caller = "gradient_huber_loss"
    check_depth_inputs(pred, target, mask, caller=caller)
    _check_scales(scales, caller)
    _check_choice(reduction, _REDUCTIONS, "reduction", caller)
    _check_choice(gradient_mode, _GRADIENT_MODES, "gradient_mode", caller)
    if delta <= 0:
        raise ValueError(f"{caller}: delta must be > 0, got {delta}")
    weights = edge_weights(
        target,
        mask,
        image=image,
        source=edge_source,
        beta=edge_beta,
        sigma_image=edge_sigma_image,
        sigma_depth=edge_sigma_depth,
        gradient_mode=gradient_mode,
    )
    aligned = align_prediction(pred, target, mask) if align else pred
    dtype = _compute_dtype(aligned, target)
    with torch.autocast(device_type=pred.device.type, enabled=False):
        m_full = mask.to(dtype)
        residual = torch.where(mask, aligned.to(dtype) - target.to(dtype), m_full.new_zeros(()))
        weights = weights.to(dtype)
        total = residual.new_zeros(())
        for k in range(scales):
            factor = 2**k
            r, m = _masked_avg_pool(residual, m_full, factor)
            w = weights if factor == 1 else F.max_pool2d(weights, factor, ceil_mode=True)
            grad = kornia.filters.spatial_gradient(r, mode=gradient_mode, normalized=True)
            rho = F.huber_loss(grad, torch.zeros_like(grad), reduction="none", delta=delta)
            valid_x, valid_y = _gradient_masks(m, gradient_mode)
            per_pixel = w * (rho[:, :, 0] * valid_x + rho[:, :, 1] * valid_y)
            total = total + _reduce(per_pixel.sum((1, 2, 3)), m.sum((1, 2, 3)), reduction)
    return total / scales


class GradientMatchingLoss(nn.Module):
    """MiDaS multi-scale gradient matching loss; a thin wrapper around :func:`gradient_matching_loss`.

    Args:
        scales: number of scales.
        reduction: ``"batch"`` or ``"image"``.
        align: align the prediction first (``False`` when given an aligned prediction).
    """

    def __init__(self, scales: int = 4, reduction: Reduction = "batch", align: bool = True) -> None:
        super().__init__()
        _check_scales(scales, "GradientMatchingLoss")
        _check_choice(reduction, _REDUCTIONS, "reduction", "GradientMatchingLoss")
        self.scales = scales
        self.reduction = reduction
        self.align = align

    def forward(self, pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        """Compute the loss for ``[B,1,H,W]`` inputs, see :func:`gradient_matching_loss`."""
        return gradient_matching_loss(
            pred, target, mask, scales=self.scales, reduction=self.reduction, align=self.align
        )

    def extra_repr(self) -> str:
        """Show the hyper-parameters in ``print(module)``."""
        return f"scales={self.scales}, reduction={self.reduction!r}, align={self.align}"


class GradientHuberLoss(nn.Module):
    """Edge-aware multi-scale gradient Huber loss; a thin wrapper around :func:`gradient_huber_loss`.

    Args:
        scales: number of scales K.
        delta: Huber threshold δ (target units per pixel).
        edge_source: ``"image"``, ``"depth"``, ``"both"`` or ``"none"``.
        edge_beta: extra weight at a full edge.
        edge_sigma_image: image-gradient scale of the edge weight.
        edge_sigma_depth: relative depth-gradient scale of the edge weight.
        gradient_mode: ``"sobel"`` or ``"diff"``.
        reduction: ``"batch"`` or ``"image"``.
        align: align the prediction first (``False`` when given an aligned prediction).
    """

    def __init__(
        self,
        scales: int = 4,
        delta: float = 0.05,
        edge_source: EdgeSource = "image",
        edge_beta: float = 1.0,
        edge_sigma_image: float = 0.1,
        edge_sigma_depth: float = 0.05,
        gradient_mode: GradientMode = "sobel",
        reduction: Reduction = "batch",
        align: bool = True,
    ) -> None:
        super().__init__()
        caller = "GradientHuberLoss"
        _check_scales(scales, caller)
        _check_choice(edge_source, _EDGE_SOURCES, "edge_source", caller)
        _check_choice(gradient_mode, _GRADIENT_MODES, "gradient_mode", caller)
        _check_choice(reduction, _REDUCTIONS, "reduction", caller)
        if delta <= 0:
            raise ValueError(f"{caller}: delta must be > 0, got {delta}")
        self.scales = scales
        self.delta = delta
        self.edge_source = edge_source
        self.edge_beta = edge_beta
        self.edge_sigma_image = edge_sigma_image
        self.edge_sigma_depth = edge_sigma_depth
        self.gradient_mode = gradient_mode
        self.reduction = reduction
        self.align = align

    def forward(self, pred: Tensor, target: Tensor, mask: Tensor, image: Tensor | None = None) -> Tensor:
        """Compute the loss for ``[B,1,H,W]`` inputs (image ``[B,C,H,W]``), see :func:`gradient_huber_loss`."""
        return gradient_huber_loss(
            pred,
            target,
            mask,
            image=image,
            scales=self.scales,
            delta=self.delta,
            edge_source=self.edge_source,
            edge_beta=self.edge_beta,
            edge_sigma_image=self.edge_sigma_image,
            edge_sigma_depth=self.edge_sigma_depth,
            gradient_mode=self.gradient_mode,
            reduction=self.reduction,
            align=self.align,
        )

    def extra_repr(self) -> str:
        """Show the hyper-parameters in ``print(module)``."""
        return (
            f"scales={self.scales}, delta={self.delta}, edge_source={self.edge_source!r}, beta={self.edge_beta}, "
            f"gradient_mode={self.gradient_mode!r}, reduction={self.reduction!r}, align={self.align}"
        )
