"""Tests for d3epth.losses.gradient: MiDaS gradient matching and the edge-aware gradient Huber loss."""

import math

import pytest
import torch
from torch import nn

from d3epth.losses.gradient import (
    GradientHuberLoss,
    GradientMatchingLoss,
    edge_weights,
    gradient_huber_loss,
    gradient_matching_loss,
)


def _inputs(seed: int = 0, batch: int = 2, size: int = 16) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    pred = torch.rand(batch, 1, size, size, generator=generator)
    target = torch.rand(batch, 1, size, size, generator=generator) * 2 - 1
    mask = torch.rand(batch, 1, size, size, generator=generator) > 0.2
    image = torch.rand(batch, 3, size, size, generator=generator) * 2 - 1
    return pred, target, mask, image


# ----------------------------------------------------------------------------------------------- gradient matching


def test_gradient_matching_hand_worked_value() -> None:
    pred = torch.tensor([[[[0.0, 1.0], [3.0, 3.0]]]])
    target = torch.zeros_like(pred)
    full = torch.ones_like(pred, dtype=torch.bool)
    # |dx|: |1-0| + |3-3| = 1; |dy|: |3-0| + |3-1| = 5; over M = 4 pixels
    assert float(gradient_matching_loss(pred, target, full, scales=1, align=False)) == pytest.approx(6 / 4)
    # invalidate the bottom-right pixel: only dx of row 0 (1) and dy of column 0 (3) survive, over M = 3
    mask = full.clone()
    mask[0, 0, 1, 1] = False
    assert float(gradient_matching_loss(pred, target, mask, scales=1, align=False)) == pytest.approx(4 / 3)


def test_gradient_matching_sums_strided_scales() -> None:
    pred, target, mask, _ = _inputs(seed=1, batch=1)
    two_scales = gradient_matching_loss(pred, target, mask, scales=2, align=False)
    fine = gradient_matching_loss(pred, target, mask, scales=1, align=False)
    coarse = gradient_matching_loss(pred[..., ::2, ::2], target[..., ::2, ::2], mask[..., ::2, ::2], 1, align=False)
    torch.testing.assert_close(two_scales, fine + coarse)


@pytest.mark.parametrize("loss_fn", [gradient_matching_loss, gradient_huber_loss])
def test_zero_for_affine_prediction_and_positive_otherwise(loss_fn: object) -> None:
    _, target, mask, image = _inputs(seed=2)
    kwargs = {"image": image, "edge_source": "both"} if loss_fn is gradient_huber_loss else {}
    for scale, shift in ((3.0, -0.5), (0.2, 4.0), (-1.5, 0.1)):
        assert float(loss_fn(scale * target + shift, target, mask, **kwargs)) < 1e-5  # float32 rounding
    assert float(loss_fn(torch.rand_like(target), target, mask, **kwargs)) > 1e-3


def test_gradient_matching_batch_and_image_reductions() -> None:
    pred, target, mask, _ = _inputs(seed=3)
    per_image = [gradient_matching_loss(pred[i : i + 1], target[i : i + 1], mask[i : i + 1], 1) for i in range(2)]
    torch.testing.assert_close(
        gradient_matching_loss(pred, target, mask, scales=1, reduction="image"), (per_image[0] + per_image[1]) / 2
    )
    assert not torch.allclose(gradient_matching_loss(pred, target, mask, scales=1), (per_image[0] + per_image[1]) / 2)


# ------------------------------------------------------------------------------------------------------- Huber


def test_huber_hand_worked_value_central_difference() -> None:
    pred = torch.tensor([[[[0.0, 0.0, 2.0, 2.0]]]])
    target = torch.zeros_like(pred)
    mask = torch.ones_like(pred, dtype=torch.bool)
    # central differences with replicated border: dx = [0, 1, 1, 0], dy = 0
    # Huber(1, delta=0.5) = 0.5 * (1 - 0.25) = 0.375, twice, over 4 valid pixels
    loss = gradient_huber_loss(
        pred, target, mask, scales=1, delta=0.5, edge_source="none", gradient_mode="diff", align=False
    )
    assert float(loss) == pytest.approx(2 * 0.375 / 4)


def test_huber_hand_worked_value_sobel_ramp() -> None:
    slope = 0.1
    pred = (torch.arange(4.0) * slope).expand(1, 1, 4, 4).contiguous()
    target = torch.zeros_like(pred)
    mask = torch.ones_like(pred, dtype=torch.bool)
    # normalised Sobel of a ramp: slope inside, slope / 2 on the replicated border columns; quadratic regime
    expected = 0.5 * slope**2 * (0.25 + 1 + 1 + 0.25) / 4
    loss = gradient_huber_loss(pred, target, mask, scales=1, delta=1.0, edge_source="none", align=False)
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_huber_is_linear_beyond_delta_and_quadratic_below() -> None:
    pred = torch.tensor([[[[0.0, 0.0, 2.0, 2.0]]]])
    target = torch.zeros_like(pred)
    mask = torch.ones_like(pred, dtype=torch.bool)
    kwargs = {"scales": 1, "edge_source": "none", "gradient_mode": "diff", "align": False}
    big = gradient_huber_loss(pred, target, mask, delta=10.0, **kwargs)  # all |r| = 1 <= delta: 0.5 r^2
    assert float(big) == pytest.approx(2 * 0.5 / 4)
    small = gradient_huber_loss(pred, target, mask, delta=0.01, **kwargs)  # delta (|r| - delta / 2)
    assert float(small) == pytest.approx(2 * 0.01 * (1 - 0.005) / 4)


def test_huber_ignores_values_at_invalid_pixels() -> None:
    pred, target, mask, image = _inputs(seed=4)
    reference = gradient_huber_loss(pred, target, mask, image=image, edge_source="both")
    noisy_pred = torch.where(mask, pred, torch.randn_like(pred) * 100)
    noisy_target = torch.where(mask, target, torch.randn_like(target) * 100)
    torch.testing.assert_close(
        gradient_huber_loss(noisy_pred, noisy_target, mask, image=image, edge_source="both"), reference
    )


def test_huber_scales_are_averaged_with_masked_pooling() -> None:
    pred, target, _, _ = _inputs(seed=5, batch=1, size=8)
    mask = torch.ones_like(pred, dtype=torch.bool)
    kwargs = {"edge_source": "none", "align": False, "delta": 0.3}
    two = gradient_huber_loss(pred, target, mask, scales=2, **kwargs)
    fine = gradient_huber_loss(pred, target, mask, scales=1, **kwargs)
    pool = nn.AvgPool2d(2)  # with a full mask the masked average pool is a plain average pool
    coarse = gradient_huber_loss(pool(pred), pool(target), mask[..., ::2, ::2], scales=1, **kwargs)
    torch.testing.assert_close(two, (fine + coarse) / 2)


def test_edge_weighting_raises_loss_for_errors_at_edges() -> None:
    target = torch.zeros(1, 1, 16, 16)
    target[..., 8:] = 1.0
    mask = torch.ones_like(target, dtype=torch.bool)
    pred = target.clone()
    pred[..., 7:9] = 0.5  # blurred edge: the error sits on the GT edge
    plain = gradient_huber_loss(pred, target, mask, edge_source="none", align=False)
    weighted = gradient_huber_loss(pred, target, mask, edge_source="depth", edge_beta=2.0, align=False)
    assert float(weighted) > 1.5 * float(plain) > 0


def test_edge_weights_depth_step_hand_value() -> None:
    target = torch.zeros(1, 1, 8, 8)
    target[..., 4:] = 1.0
    mask = torch.ones_like(target, dtype=torch.bool)
    weights = edge_weights(target, mask, source="depth", beta=2.0, sigma_depth=0.5)
    # MAD of a half-0/half-1 map is 0.5; normalised Sobel gives 0.5 on the two columns next to the step,
    # so E = 0.5 / 0.5 = 1 and w = 1 + 2 (1 - exp(-1 / 0.5)); flat columns give w = 1
    edge_value = 1 + 2 * (1 - math.exp(-2))
    torch.testing.assert_close(weights[..., 3:5], torch.full((1, 1, 8, 2), edge_value))
    torch.testing.assert_close(weights[..., :2], torch.ones(1, 1, 8, 2))
    torch.testing.assert_close(weights[..., 6:], torch.ones(1, 1, 8, 2))
    # scale and shift invariant, like the loss
    torch.testing.assert_close(edge_weights(10 * target + 3, mask, source="depth", beta=2.0, sigma_depth=0.5), weights)


def test_edge_weights_image_and_both() -> None:
    target = torch.rand(1, 1, 8, 8) * 0.01  # nearly flat depth
    mask = torch.ones_like(target, dtype=torch.bool)
    image = -torch.ones(1, 3, 8, 8)
    image[..., 4:, :] = 1.0  # horizontal black/white edge
    weights = edge_weights(target, mask, image=image, source="image", beta=1.0)
    assert float(weights[..., 3:5, :].min()) > 1.99
    torch.testing.assert_close(weights[..., :2, :], torch.ones(1, 1, 2, 8))
    both = edge_weights(target, mask, image=image, source="both", beta=1.0)
    depth_only = edge_weights(target, mask, source="depth", beta=1.0)
    torch.testing.assert_close(both, torch.maximum(weights, depth_only))
    torch.testing.assert_close(edge_weights(target, mask, source="none"), torch.ones_like(target))


def test_edge_weights_ignore_hole_borders() -> None:
    target = torch.ones(1, 1, 8, 8)
    mask = torch.ones_like(target, dtype=torch.bool)
    mask[..., 2:4, 2:4] = False
    target[~mask] = 0.0  # invalid pixels stored as 0, as in the datasets
    target[..., 6:, :] = 2.0
    weights = edge_weights(target, mask, source="depth")
    assert float(weights[..., 1:5, 1:5].max()) == 1.0  # around the hole: no edge
    assert float(weights[..., 5:7, :].min()) > 1.5  # the real step


@pytest.mark.parametrize("gradient_mode", ["sobel", "diff"])
def test_gradcheck_gradient_huber(gradient_mode: str) -> None:
    pred, target, mask, image = _inputs(seed=6, batch=1, size=6)
    pred = pred.double().requires_grad_(True)
    target = target.double()

    def fn(p: torch.Tensor) -> torch.Tensor:
        return gradient_huber_loss(
            p, target, mask, image=image.double(), scales=2, delta=0.05, gradient_mode=gradient_mode
        )

    # fast_mode checks random projections of the Jacobian: the same test at a fraction of the cost
    assert torch.autograd.gradcheck(fn, (pred,), fast_mode=True)


def test_gradcheck_gradient_matching() -> None:
    pred, target, mask, _ = _inputs(seed=7, batch=2, size=6)
    pred = pred.double().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda p: gradient_matching_loss(p, target.double(), mask, scales=2), (pred,), fast_mode=True
    )


def test_autocast_bfloat16_returns_float32() -> None:
    _, target, mask, image = _inputs(seed=8)
    conv = nn.Conv2d(3, 1, 3, padding=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pred = conv(image)
        huber = gradient_huber_loss(pred, target, mask, image=image)
        matching = gradient_matching_loss(pred, target, mask)
    assert huber.dtype == torch.float32 and matching.dtype == torch.float32
    assert torch.isfinite(huber) and torch.isfinite(matching)


def test_constant_prediction_is_finite() -> None:
    _, target, mask, image = _inputs(seed=9)
    pred = torch.full_like(target, 0.7, requires_grad=True)
    loss = gradient_huber_loss(pred, target, mask, image=image) + gradient_matching_loss(pred, target, mask)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(pred.grad).all()


def test_function_module_parity() -> None:
    pred, target, mask, image = _inputs(seed=10)
    huber = GradientHuberLoss(scales=3, delta=0.1, edge_source="both", edge_beta=0.5, gradient_mode="diff")
    torch.testing.assert_close(
        huber(pred, target, mask, image),
        gradient_huber_loss(
            pred,
            target,
            mask,
            image=image,
            scales=3,
            delta=0.1,
            edge_source="both",
            edge_beta=0.5,
            gradient_mode="diff",
        ),
    )
    matching = GradientMatchingLoss(scales=3, reduction="image")
    torch.testing.assert_close(
        matching(pred, target, mask), gradient_matching_loss(pred, target, mask, scales=3, reduction="image")
    )


def test_bad_inputs_raise() -> None:
    pred, target, mask, image = _inputs()
    with pytest.raises(ValueError, match="needs 'image'"):
        gradient_huber_loss(pred, target, mask, edge_source="image")
    with pytest.raises(ValueError, match="spatial size"):
        gradient_huber_loss(pred, target, mask, image=image[..., :8, :8])
    with pytest.raises(ValueError, match="source must be one of"):
        gradient_huber_loss(pred, target, mask, edge_source="rgb")
    with pytest.raises(ValueError, match="scales must be a positive int"):
        gradient_matching_loss(pred, target, mask, scales=0)
    with pytest.raises(ValueError, match="delta must be > 0"):
        GradientHuberLoss(delta=0.0)
    with pytest.raises(ValueError, match="gradient_mode must be one of"):
        GradientHuberLoss(gradient_mode="scharr")
    with pytest.raises(ValueError, match=r"'mask' must be a torch\.bool tensor"):
        gradient_matching_loss(pred, target, mask.float())
