"""Stage-1 distillation losses: masked latent MSE and feature distillation through 1x1 adapters.

- Latent: the student's 4-channel latent at 1/8 resolution against the teacher's depth latent, masked like Marigold's
  latent loss (an 8x8 pixel cell with any invalid pixel invalidates its latent cell, for every channel).
- Features: student feature maps projected by 1x1 convolutions to the teacher's channels (resized to the teacher's
  size when they differ) and compared with MSE, as in knowledge distillation of SD UNets (BK-SDM's feature KD).

Errors are computed in at least float32 with autocast disabled.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "FeatureDistillationLoss",
    "LatentDistillationLoss",
    "feature_distillation_loss",
    "latent_distillation_loss",
    "latent_mask_from_pixels",
]

Reduction = Literal["batch", "image"]
ResizeMode = Literal["auto", "bilinear", "nearest", "area"]

_RESIZE_MODES = ("auto", "bilinear", "nearest", "area")


def latent_mask_from_pixels(mask: Tensor, channels: int = 4, factor: int = 8) -> Tensor:
    """Valid-latent mask from a valid-pixel mask, as Marigold masks its latent loss.

    The invalid mask is max-pooled with kernel and stride ``factor`` (any invalid pixel in a ``factor x factor`` cell
    invalidates the latent cell) and repeated to ``channels`` channels.

    Args:
        mask: valid pixels, ``torch.bool``, shape ``[B,1,H,W]`` with H and W divisible by ``factor``.
        channels: number of latent channels C.
        factor: VAE downsampling factor (8 for Stable Diffusion's VAE).

    Returns:
        Valid latent cells, ``torch.bool``, shape ``[B,C,H/factor,W/factor]``.
    """
    if not isinstance(mask, Tensor):
        raise TypeError(f"latent_mask_from_pixels: 'mask' must be a torch.Tensor, got {type(mask).__name__}")
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(f"latent_mask_from_pixels: 'mask' must have shape [B,1,H,W], got {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        raise ValueError(f"latent_mask_from_pixels: 'mask' must be a torch.bool tensor, got {mask.dtype}")
    if channels < 1 or factor < 1:
        raise ValueError(f"latent_mask_from_pixels: channels and factor must be >= 1, got {channels} and {factor}")
    height, width = mask.shape[-2:]
    if height % factor or width % factor:
        raise ValueError(
            f"latent_mask_from_pixels: mask size {height}x{width} is not divisible by the latent factor {factor}"
        )
    invalid = F.max_pool2d((~mask).to(torch.float32), kernel_size=factor, stride=factor)
    return (invalid < 0.5).expand(-1, channels, -1, -1).contiguous()


def latent_distillation_loss(
    student_latent: Tensor,
    teacher_latent: Tensor,
    pixel_mask: Tensor | None = None,
    factor: int = 8,
    reduction: Reduction = "batch",
) -> Tensor:
    r"""Masked latent MSE: :math:`\sum M (z_s - z_t)^2 / \sum M` over valid latent elements.

    :math:`M` is :func:`latent_mask_from_pixels` of ``pixel_mask`` (all ones if None). ``reduction="batch"`` pools
    every valid latent element of the batch (Marigold's ``mse(pred[mask], target[mask])``); ``"image"`` averages
    per-image means over images with a valid element. A batch without any valid element gives 0, attached to the
    graph.

    Args:
        student_latent: student prediction, shape ``[B,C,h,w]``.
        teacher_latent: teacher target, shape ``[B,C,h,w]`` (not detached here; pass a frozen teacher's output).
        pixel_mask: valid pixels, ``torch.bool``, shape ``[B,1,h*factor,w*factor]``, or None.
        factor: pixels per latent cell along each axis.
        reduction: ``"batch"`` or ``"image"``.

    Returns:
        Scalar loss in float32 (float64 for float64 inputs).
    """
    caller = "latent_distillation_loss"
    for name, value in (("student_latent", student_latent), ("teacher_latent", teacher_latent)):
        if not isinstance(value, Tensor) or value.ndim != 4 or not value.is_floating_point():
            got = f"{tuple(value.shape)} {value.dtype}" if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"{caller}: '{name}' must be a floating tensor of shape (B, C, h, w), got {got}")
    if student_latent.shape != teacher_latent.shape:
        raise ValueError(
            f"{caller}: 'student_latent' {tuple(student_latent.shape)} and 'teacher_latent' "
            f"{tuple(teacher_latent.shape)} must have the same shape"
        )
    if reduction not in ("batch", "image"):
        raise ValueError(f"{caller}: reduction must be 'batch' or 'image', got {reduction!r}")
    batch, channels, height, width = student_latent.shape
    if pixel_mask is None:
        mask = torch.ones_like(student_latent, dtype=torch.bool)
    else:
        expected = (batch, 1, height * factor, width * factor)
        if not isinstance(pixel_mask, Tensor) or tuple(pixel_mask.shape) != expected:
            got = tuple(pixel_mask.shape) if isinstance(pixel_mask, Tensor) else type(pixel_mask).__name__
            raise ValueError(f"{caller}: 'pixel_mask' must have shape {expected} (latent x {factor}), got {got}")
        mask = latent_mask_from_pixels(pixel_mask.to(student_latent.device), channels=channels, factor=factor)
    dtype = torch.promote_types(torch.promote_types(student_latent.dtype, teacher_latent.dtype), torch.float32)
    with torch.autocast(device_type=student_latent.device.type, enabled=False):
        diff = student_latent.to(dtype) - teacher_latent.to(dtype)
        squared = torch.where(mask, diff * diff, diff.new_zeros(()))
        per_image = squared.sum((1, 2, 3))
        count = mask.sum((1, 2, 3)).to(dtype)
        if reduction == "batch":
            return per_image.sum() / count.sum().clamp_min(1.0)
        has_valid = (count > 0).to(dtype)
        return (per_image / count.clamp_min(1.0) * has_valid).sum() / has_valid.sum().clamp_min(1.0)


class LatentDistillationLoss(nn.Module):
    """Masked latent MSE; a thin wrapper around :func:`latent_distillation_loss`.

    Args:
        factor: pixels per latent cell along each axis.
        reduction: ``"batch"`` or ``"image"``.
    """

    def __init__(self, factor: int = 8, reduction: Reduction = "batch") -> None:
        super().__init__()
        if reduction not in ("batch", "image"):
            raise ValueError(f"LatentDistillationLoss: reduction must be 'batch' or 'image', got {reduction!r}")
        self.factor = factor
        self.reduction = reduction

    def forward(self, student_latent: Tensor, teacher_latent: Tensor, pixel_mask: Tensor | None = None) -> Tensor:
        """Compute the loss for ``[B,C,h,w]`` latents, see :func:`latent_distillation_loss`."""
        return latent_distillation_loss(
            student_latent, teacher_latent, pixel_mask, factor=self.factor, reduction=self.reduction
        )


def _resize(features: Tensor, size: tuple[int, int], mode: str) -> Tensor:
    if tuple(features.shape[-2:]) == size:
        return features
    shrinking = features.shape[-2] > size[0] or features.shape[-1] > size[1]
    if mode == "auto":
        # Averaging cells when shrinking (no aliasing, each output is the mean of the pixels it covers);
        # bilinear when enlarging.
        mode = "area" if shrinking else "bilinear"
    if mode == "bilinear":
        return F.interpolate(features, size=size, mode="bilinear", align_corners=False, antialias=shrinking)
    return F.interpolate(features, size=size, mode=mode)


def feature_distillation_loss(
    student_features: Sequence[Tensor],
    teacher_features: Sequence[Tensor],
    resize_mode: ResizeMode = "auto",
) -> tuple[Tensor, dict[str, Tensor]]:
    r"""Mean over pairs of the MSE between (already channel-matched) student and teacher feature maps.

    .. math:: L = \frac1P \sum_{j=1}^{P} \operatorname{mean}\bigl(\operatorname{resize}(f^s_j) - f^t_j\bigr)^2

    where ``resize`` brings the student map to the teacher's spatial size when they differ.

    Args:
        student_features: P tensors ``[B,C_j,H_j,W_j]`` (after adapters: same channels as the teacher's).
        teacher_features: P tensors ``[B,C_j,H'_j,W'_j]``.
        resize_mode: ``"auto"`` (area average when shrinking, bilinear when enlarging), ``"bilinear"``
            (anti-aliased when shrinking), ``"nearest"`` or ``"area"``.

    Returns:
        ``(loss, parts)``: the scalar mean (float32, or float64 for float64 inputs) and ``{"loss_feat_j": mse_j}``
        (detached).
    """
    caller = "feature_distillation_loss"
    if len(student_features) != len(teacher_features) or not student_features:
        raise ValueError(
            f"{caller}: need as many student as teacher features (and at least one), got {len(student_features)} "
            f"and {len(teacher_features)}"
        )
    if resize_mode not in _RESIZE_MODES:
        raise ValueError(f"{caller}: resize_mode must be one of {_RESIZE_MODES}, got {resize_mode!r}")
    losses = []
    parts: dict[str, Tensor] = {}
    for j, (student, teacher) in enumerate(zip(student_features, teacher_features, strict=True)):
        if student.ndim != 4 or teacher.ndim != 4 or student.shape[:2] != teacher.shape[:2]:
            raise ValueError(
                f"{caller}: pair {j}: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} must be "
                "[B,C,H,W] with the same B and C"
            )
        dtype = torch.promote_types(torch.promote_types(student.dtype, teacher.dtype), torch.float32)
        with torch.autocast(device_type=student.device.type, enabled=False):
            resized = _resize(student.to(dtype), (teacher.shape[-2], teacher.shape[-1]), resize_mode)
            mse = F.mse_loss(resized, teacher.to(dtype))
        losses.append(mse)
        parts[f"loss_feat_{j}"] = mse.detach()
    return torch.stack(losses).mean(), parts


class FeatureDistillationLoss(nn.Module):
    """Feature distillation through learnable 1x1 adapters.

    Pair ``j`` maps a student feature map with ``student_channels[j]`` channels to ``teacher_channels[j]`` channels
    with a 1x1 convolution, resizes it to the teacher map's size when they differ, and takes the MSE (see
    :func:`feature_distillation_loss`). The adapters are trainable: the owner puts this module's parameters in its
    optimiser with the student's (they are discarded after training).

    Args:
        student_channels: channels of the chosen student feature maps, one per pair.
        teacher_channels: channels of the teacher feature maps they are matched to, same length.
        resize_mode: ``"auto"``, ``"bilinear"``, ``"nearest"`` or ``"area"``, see :func:`feature_distillation_loss`.

    Shape:
        - student_features: P tensors ``[B,student_channels[j],H_j,W_j]``.
        - teacher_features: P tensors ``[B,teacher_channels[j],H'_j,W'_j]``.
        - Output: ``(loss, parts)`` with a scalar loss and ``{"loss_feat_j": ...}`` detached.
    """

    def __init__(
        self, student_channels: Sequence[int], teacher_channels: Sequence[int], resize_mode: ResizeMode = "auto"
    ) -> None:
        super().__init__()
        student_channels = [int(c) for c in student_channels]
        teacher_channels = [int(c) for c in teacher_channels]
        if len(student_channels) != len(teacher_channels) or not student_channels:
            raise ValueError(
                "FeatureDistillationLoss: student_channels and teacher_channels must be non-empty and of equal "
                f"length, got {student_channels} and {teacher_channels}"
            )
        if min(student_channels + teacher_channels) < 1:
            raise ValueError(
                f"FeatureDistillationLoss: channels must be >= 1, got {student_channels} and {teacher_channels}"
            )
        if resize_mode not in _RESIZE_MODES:
            raise ValueError(
                f"FeatureDistillationLoss: resize_mode must be one of {_RESIZE_MODES}, got {resize_mode!r}"
            )
        self.student_channels = student_channels
        self.teacher_channels = teacher_channels
        self.resize_mode = resize_mode
        # A 1x1 conv commutes with the resizing (both linear, resizing weights sum to 1), so projecting
        # before resizing gives the same result as after.
        self.adapters = nn.ModuleList(
            nn.Conv2d(c_in, c_out, kernel_size=1)
            for c_in, c_out in zip(student_channels, teacher_channels, strict=True)
        )

    def forward(
        self, student_features: Sequence[Tensor], teacher_features: Sequence[Tensor]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Project, resize and compare; returns the mean MSE over pairs and the per-pair parts."""
        if len(student_features) != len(self.adapters) or len(teacher_features) != len(self.adapters):
            raise ValueError(
                f"FeatureDistillationLoss: expected {len(self.adapters)} student and teacher feature maps, got "
                f"{len(student_features)} and {len(teacher_features)}"
            )
        projected = []
        for j, (adapter, student, teacher) in enumerate(
            zip(self.adapters, student_features, teacher_features, strict=True)
        ):
            if student.ndim != 4 or student.shape[1] != adapter.in_channels:
                raise ValueError(
                    f"FeatureDistillationLoss: student feature {j} must be (B, {adapter.in_channels}, H, W), got "
                    f"{tuple(student.shape)}"
                )
            if teacher.ndim != 4 or teacher.shape[1] != adapter.out_channels:
                raise ValueError(
                    f"FeatureDistillationLoss: teacher feature {j} must be (B, {adapter.out_channels}, H, W), got "
                    f"{tuple(teacher.shape)}"
                )
            projected.append(adapter(student))
        return feature_distillation_loss(projected, teacher_features, resize_mode=self.resize_mode)

    def extra_repr(self) -> str:
        """Show the hyper-parameters in ``print(module)``."""
        return f"resize_mode={self.resize_mode!r}"
