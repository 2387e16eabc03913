"""Tests for d3epth.losses.distill: latent mask, masked latent MSE, feature distillation through 1x1 adapters."""

import pytest
import torch
import torch.nn.functional as F

from d3epth.losses.distill import (
    FeatureDistillationLoss,
    LatentDistillationLoss,
    feature_distillation_loss,
    latent_distillation_loss,
    latent_mask_from_pixels,
)


def test_latent_mask_hand_made_example() -> None:
    mask = torch.ones(2, 1, 16, 24, dtype=torch.bool)
    mask[0, 0, 3, 10] = False  # one invalid pixel in latent cell (0, 1)
    mask[1, 0, 8:16, 16:24] = False  # a whole cell: (1, 2)
    mask[1, 0, 7, 0] = False  # last pixel row of cell (0, 0)
    latent = latent_mask_from_pixels(mask, channels=4)
    assert latent.shape == (2, 4, 2, 3) and latent.dtype == torch.bool
    expected = torch.ones(2, 2, 3, dtype=torch.bool)
    expected[0, 0, 1] = False
    expected[1, 1, 2] = False
    expected[1, 0, 0] = False
    for channel in range(4):
        torch.testing.assert_close(latent[:, channel], expected)


def test_latent_mask_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="not divisible by the latent factor 8"):
        latent_mask_from_pixels(torch.ones(1, 1, 12, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"must be a torch\.bool tensor"):
        latent_mask_from_pixels(torch.ones(1, 1, 16, 16))
    with pytest.raises(ValueError, match=r"shape \[B,1,H,W\]"):
        latent_mask_from_pixels(torch.ones(1, 2, 16, 16, dtype=torch.bool))


def _latents(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(2, 4, 2, 3, generator=generator)
    teacher = torch.randn(2, 4, 2, 3, generator=generator)
    mask = torch.ones(2, 1, 16, 24, dtype=torch.bool)
    mask[0, 0, 3, 10] = False
    mask[1, 0, 9, 20] = False
    return student, teacher, mask


def test_latent_loss_is_mse_over_valid_latent_cells() -> None:
    student, teacher, mask = _latents()
    valid = latent_mask_from_pixels(mask)
    expected = F.mse_loss(student[valid], teacher[valid])  # Marigold's form
    torch.testing.assert_close(latent_distillation_loss(student, teacher, mask), expected)
    # invalid cells do not matter
    changed = student.clone()
    changed[~valid] += 100.0
    torch.testing.assert_close(latent_distillation_loss(changed, teacher, mask), expected)
    # without a mask it is the plain MSE
    torch.testing.assert_close(latent_distillation_loss(student, teacher), F.mse_loss(student, teacher))


def test_latent_loss_image_reduction_and_empty_images() -> None:
    student, teacher, mask = _latents(seed=1)
    per_image = [latent_distillation_loss(student[i : i + 1], teacher[i : i + 1], mask[i : i + 1]) for i in range(2)]
    torch.testing.assert_close(
        latent_distillation_loss(student, teacher, mask, reduction="image"), (per_image[0] + per_image[1]) / 2
    )
    mask[1] = False
    torch.testing.assert_close(latent_distillation_loss(student, teacher, mask), per_image[0])
    student.requires_grad_(True)
    empty = latent_distillation_loss(student, teacher, torch.zeros_like(mask))
    empty.backward()
    assert float(empty.detach()) == 0.0 and torch.isfinite(student.grad).all()


def test_latent_function_module_parity_and_autocast() -> None:
    student, teacher, mask = _latents(seed=2)
    module = LatentDistillationLoss(reduction="image")
    torch.testing.assert_close(
        module(student, teacher, mask), latent_distillation_loss(student, teacher, mask, reduction="image")
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = latent_distillation_loss(student.bfloat16(), teacher, mask)
    assert loss.dtype == torch.float32


def test_latent_loss_bad_shapes() -> None:
    student, teacher, mask = _latents()
    with pytest.raises(ValueError, match="must have the same shape"):
        latent_distillation_loss(student, teacher[:, :3])
    with pytest.raises(ValueError, match=r"'pixel_mask' must have shape \(2, 1, 16, 24\)"):
        latent_distillation_loss(student, teacher, mask[..., :16, :16])


def test_gradcheck_latent_loss() -> None:
    student, teacher, mask = _latents(seed=3)
    inputs = (student.double().requires_grad_(True), teacher.double().requires_grad_(True))
    assert torch.autograd.gradcheck(lambda s, t: latent_distillation_loss(s, t, mask), inputs)


def _features(seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    student = [torch.randn(2, 3, 8, 8, generator=generator), torch.randn(2, 5, 4, 4, generator=generator)]
    teacher = [torch.randn(2, 6, 8, 8, generator=generator), torch.randn(2, 2, 2, 2, generator=generator)]
    return student, teacher


def test_feature_loss_matches_manual_adapters_and_resize() -> None:
    student, teacher = _features()
    loss_fn = FeatureDistillationLoss([3, 5], [6, 2])
    loss, parts = loss_fn(student, teacher)
    first = F.mse_loss(loss_fn.adapters[0](student[0]), teacher[0])
    projected = loss_fn.adapters[1](student[1])
    # default resize: 4x4 -> 2x2 shrinks by averaging 2x2 cells
    second = F.mse_loss(F.avg_pool2d(projected, 2), teacher[1])
    torch.testing.assert_close(parts["loss_feat_0"], first.detach())
    torch.testing.assert_close(parts["loss_feat_1"], second.detach())
    torch.testing.assert_close(loss, (first + second) / 2)
    loss.backward()
    assert all(p.grad is not None for p in loss_fn.parameters())


def test_feature_function_is_zero_for_matching_features() -> None:
    teacher = [torch.randn(1, 4, 6, 6)]
    loss, parts = feature_distillation_loss([teacher[0].clone()], teacher)
    assert float(loss) == 0.0 and set(parts) == {"loss_feat_0"}
    # upsampling is bilinear: a constant map stays constant, and a 2x2 map matches F.interpolate
    loss, _ = feature_distillation_loss([torch.ones(1, 2, 3, 3)], [torch.ones(1, 2, 6, 6)])
    assert float(loss) == pytest.approx(0.0, abs=1e-12)
    small = torch.randn(1, 2, 2, 2)
    upsampled = F.interpolate(small, size=(4, 4), mode="bilinear", align_corners=False)
    loss, _ = feature_distillation_loss([small], [upsampled])
    assert float(loss) == pytest.approx(0.0, abs=1e-12)
    loss, _ = feature_distillation_loss([small], [torch.zeros(1, 2, 4, 4)], resize_mode="nearest")
    expected = F.mse_loss(small.repeat_interleave(2, -1).repeat_interleave(2, -2), torch.zeros(1, 2, 4, 4))
    torch.testing.assert_close(loss, expected)


def test_gradcheck_feature_loss() -> None:
    generator = torch.Generator().manual_seed(1)
    loss_fn = FeatureDistillationLoss([3, 5], [6, 2]).double()
    teacher_0 = torch.randn(1, 6, 4, 4, generator=generator, dtype=torch.float64)  # same size as the student map
    inputs = (
        torch.randn(1, 3, 4, 4, generator=generator, dtype=torch.float64).requires_grad_(True),
        torch.randn(1, 5, 4, 4, generator=generator, dtype=torch.float64).requires_grad_(True),
        torch.randn(1, 2, 2, 2, generator=generator, dtype=torch.float64).requires_grad_(True),  # resized pair
    )

    def fn(s0: torch.Tensor, s1: torch.Tensor, t1: torch.Tensor) -> torch.Tensor:
        return loss_fn([s0, s1], [teacher_0, t1])[0]

    assert torch.autograd.gradcheck(fn, inputs)
    # and through the adapters' weights
    weight = loss_fn.adapters[1].weight
    assert torch.autograd.gradcheck(
        lambda w: F.mse_loss(F.avg_pool2d(F.conv2d(inputs[1].detach(), w), 2), inputs[2].detach()),
        (weight.detach().clone().requires_grad_(True),),
    )


def test_feature_loss_bad_inputs() -> None:
    student, teacher = _features()
    with pytest.raises(ValueError, match="equal length"):
        FeatureDistillationLoss([3, 5], [6])
    loss_fn = FeatureDistillationLoss([3, 5], [6, 2])
    with pytest.raises(ValueError, match="expected 2 student and teacher feature maps"):
        loss_fn(student[:1], teacher)
    with pytest.raises(ValueError, match=r"student feature 1 must be \(B, 5, H, W\)"):
        loss_fn([student[0], student[0]], teacher)
    with pytest.raises(ValueError, match=r"teacher feature 0 must be \(B, 6, H, W\)"):
        loss_fn(student, [teacher[1], teacher[1]])
