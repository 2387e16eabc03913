"""Tests for d3epth.losses.ssi: closed-form alignment, SSI loss, numerics and input checks."""

import numpy as np
import pytest
import torch
from torch import nn

from d3epth.losses.ssi import SSILoss, align_prediction, compute_scale_and_shift, ssi_loss
from tests.helpers.tensors import depth_inputs


def _inputs(seed: int = 0, batch: int = 3, size: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    pred = torch.rand(batch, 1, size, size, generator=generator)
    target = torch.rand(batch, 1, size, size, generator=generator) * 5 + 1
    mask = torch.rand(batch, 1, size, size, generator=generator) > 0.3
    return pred, target, mask


def _numpy_reference(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, data_term: str
) -> tuple[float, float, list[float]]:
    """Per-image least squares with numpy.linalg.lstsq; returns (batch-pooled loss, image-mean loss, scales)."""
    total, count, per_image, scales = 0.0, 0, [], []
    for p, g, m in zip(pred.double().numpy(), target.double().numpy(), mask.numpy(), strict=True):
        pv, gv = p[m], g[m]
        design = np.stack([pv, np.ones_like(pv)], axis=1)
        (s, t), *_ = np.linalg.lstsq(design, gv, rcond=None)
        residual = s * pv + t - gv
        values = np.abs(residual) if data_term == "l1" else 0.5 * residual**2
        total += values.sum()
        count += values.size
        per_image.append(values.mean())
        scales.append(s)
    return total / count, float(np.mean(per_image)), scales


def test_scale_and_shift_matches_brief_closed_form() -> None:
    pred, target, mask = _inputs()
    scale, shift = compute_scale_and_shift(pred.double(), target.double(), mask)
    m, p, g = mask.double(), pred.double(), target.double()
    a00, a01, a11 = (m * p * p).sum((1, 2, 3)), (m * p).sum((1, 2, 3)), m.sum((1, 2, 3))
    b0, b1 = (m * p * g).sum((1, 2, 3)), (m * g).sum((1, 2, 3))
    det = a00 * a11 - a01 * a01
    torch.testing.assert_close(scale, (a11 * b0 - a01 * b1) / det)
    torch.testing.assert_close(shift, (-a01 * b0 + a00 * b1) / det)


def test_scale_and_shift_recovers_affine_map() -> None:
    pred, _, mask = _inputs(seed=1)
    scale, shift = compute_scale_and_shift(pred, 2.5 * pred - 0.75, mask)
    torch.testing.assert_close(scale, torch.full((3,), 2.5), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shift, torch.full((3,), -0.75), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("data_term", ["l1", "l2"])
def test_ssi_is_zero_for_positive_affine_transform_of_target(seed: int, data_term: str) -> None:
    _, target, mask = _inputs(seed)
    generator = torch.Generator().manual_seed(100 + seed)
    s = torch.rand(3, 1, 1, 1, generator=generator) * 10 + 0.05
    t = torch.randn(3, 1, 1, 1, generator=generator) * 5
    assert float(ssi_loss(s * target + t, target, mask, data_term=data_term)) < 1e-4
    # and clearly non-zero for an unrelated prediction
    assert float(ssi_loss(torch.rand_like(target), target, mask, data_term=data_term)) > 0.1


@pytest.mark.parametrize("data_term", ["l1", "l2"])
def test_ssi_matches_numpy_least_squares(data_term: str) -> None:
    pred, target, mask = _inputs(seed=5)
    batch_ref, image_ref, scales = _numpy_reference(pred, target, mask, data_term)
    np.testing.assert_allclose(float(ssi_loss(pred, target, mask, data_term=data_term)), batch_ref, rtol=1e-5)
    image = ssi_loss(pred, target, mask, data_term=data_term, reduction="image")
    np.testing.assert_allclose(float(image), image_ref, rtol=1e-5)
    np.testing.assert_allclose(compute_scale_and_shift(pred, target, mask)[0].numpy(), scales, rtol=1e-4)


@pytest.mark.parametrize("data_term", ["l1", "l2"])
@pytest.mark.parametrize("reduction", ["batch", "image", "none"])
def test_function_module_parity(data_term: str, reduction: str) -> None:
    pred, target, mask = _inputs(seed=7)
    module = SSILoss(data_term=data_term, reduction=reduction)
    torch.testing.assert_close(
        module(pred, target, mask), ssi_loss(pred, target, mask, data_term=data_term, reduction=reduction)
    )


def test_images_without_valid_pixels_contribute_nothing() -> None:
    pred, target, mask = _inputs(seed=3, batch=2)
    alone = ssi_loss(pred[:1], target[:1], mask[:1])
    mask_empty = mask.clone()
    mask_empty[1] = False
    for reduction in ("batch", "image"):
        with_empty = ssi_loss(pred, target, mask_empty, reduction=reduction)
        torch.testing.assert_close(with_empty, ssi_loss(pred[:1], target[:1], mask[:1], reduction=reduction))
    torch.testing.assert_close(ssi_loss(pred, target, mask_empty, reduction="batch"), alone)
    per_image = ssi_loss(pred, target, mask_empty, reduction="none")
    assert per_image.shape == (2,) and float(per_image[1]) == 0.0


def test_all_invalid_batch_gives_zero_and_finite_gradient() -> None:
    pred, target, mask = _inputs(seed=4)
    pred.requires_grad_(True)
    loss = ssi_loss(pred, target, torch.zeros_like(mask))
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert torch.isfinite(pred.grad).all()


@pytest.mark.parametrize("data_term", ["l1", "l2"])
def test_constant_prediction_is_finite_with_shift_only_fallback(data_term: str) -> None:
    _, target, mask = _inputs(seed=6)
    pred = torch.full_like(target, 0.3, requires_grad=True)
    scale, shift = compute_scale_and_shift(pred, target, mask)
    g_mean = (target * mask).sum((1, 2, 3)) / mask.sum((1, 2, 3))
    torch.testing.assert_close(scale, torch.ones(3))
    torch.testing.assert_close(shift, g_mean - 0.3)
    loss = ssi_loss(pred, target, mask, data_term=data_term)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(pred.grad).all()
    # the documented fallback keeps a learning signal (MiDaS' s = t = 0 would give an all-zero gradient)
    assert float(pred.grad.abs().sum()) > 0


def test_single_valid_pixel_is_finite() -> None:
    pred, target, _ = _inputs(seed=8, batch=1)
    pred.requires_grad_(True)
    mask = torch.zeros_like(pred, dtype=torch.bool)
    mask[0, 0, 2, 3] = True
    loss = ssi_loss(pred, target, mask)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(0.0, abs=1e-6)  # s = 1, t = g - p reproduces the only pixel
    assert torch.isfinite(pred.grad).all()


def test_non_finite_values_at_invalid_pixels_do_not_leak() -> None:
    pred, target, mask = _inputs(seed=9)
    reference = ssi_loss(pred, target, mask)
    target_bad = target.masked_fill(~mask, float("nan"))
    target_bad[1][~mask[1]] = float("inf")
    torch.testing.assert_close(ssi_loss(pred, target_bad, mask), reference)


def test_autocast_bfloat16_returns_float32() -> None:
    _, target, mask = _inputs(seed=10)
    conv = nn.Conv2d(1, 1, 3, padding=1)
    image = torch.rand(3, 1, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pred = conv(image)
        assert pred.dtype == torch.bfloat16
        loss = ssi_loss(pred, target, mask)
        aligned = align_prediction(pred, target, mask)
    assert loss.dtype == torch.float32 and aligned.dtype == torch.float32
    assert torch.isfinite(loss)
    # equals the float32 computation on the same (bf16-rounded) prediction
    torch.testing.assert_close(loss, ssi_loss(pred.float(), target, mask))
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in conv.parameters())


@pytest.mark.parametrize("data_term", ["l1", "l2"])
def test_gradcheck_float64(data_term: str) -> None:
    pred, target, mask = _inputs(seed=11, batch=2, size=5)
    pred = pred.double().requires_grad_(True)
    target = target.double().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p, g: ssi_loss(p, g, mask, data_term=data_term), (pred, target))


def test_float64_inputs_stay_float64() -> None:
    pred, target, mask = _inputs()
    assert ssi_loss(pred.double(), target.double(), mask).dtype == torch.float64


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pred": torch.rand(2, 8, 8)}, r"'pred' must have shape \[B,1,H,W\]"),
        ({"pred": torch.rand(2, 3, 8, 8)}, r"'pred' must have shape \[B,1,H,W\]"),
        ({"target": torch.rand(2, 1, 8, 7)}, "'target' must have the shape of 'pred'"),
        ({"mask": torch.ones(2, 1, 8, 8)}, "'mask' must be a torch.bool tensor"),
        ({"mask": torch.ones(2, 1, 4, 8, dtype=torch.bool)}, "'mask' must have the shape of 'pred'"),
        ({"pred": torch.ones(2, 1, 8, 8, dtype=torch.long)}, "'pred' must be a floating-point tensor"),
        ({"data_term": "l3"}, "data_term must be one of"),
        ({"reduction": "mean"}, "reduction must be one of"),
    ],
)
def test_bad_inputs_raise(kwargs: dict, message: str) -> None:
    arguments = {**depth_inputs(8), **kwargs}
    with pytest.raises(ValueError, match=message):
        ssi_loss(**arguments)


def test_module_rejects_bad_hyperparameters() -> None:
    with pytest.raises(ValueError, match="data_term"):
        SSILoss(data_term="huber")
    with pytest.raises(ValueError, match="reduction"):
        SSILoss(reduction="sum")
