"""Tests for d3epth.metrics: alignment, benchmark presets and the torchmetrics depth metrics.

Expectations come from hand-worked numbers (in the comments), from an independent numpy implementation of the
Marigold protocol written below, or from invariance properties.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import d3epth.metrics as public
import d3epth.metrics.depth as depth_module
from d3epth.data.crops import EvalCrop
from d3epth.metrics import (
    BENCHMARKS,
    METRIC_NAMES,
    AbsRel,
    BaseDepthMetric,
    Delta1,
    DepthMetrics,
    align,
    align_disparity,
    crop_mask,
    fit_scale_shift,
    get_benchmark,
)
from tests.helpers.checkpoints import quiet_trainer
from tests.helpers.tensors import depth_inputs

# ----------------------------------------------------------------------------------------------------------------------
# Independent numpy reference (Marigold eval.py + metric.py semantics, one image at a time)


def _np_metrics(p: np.ndarray, g: np.ndarray) -> dict[str, float]:
    e = np.log(p) - np.log(g)
    ratio = np.maximum(p / g, g / p)
    return {
        "abs_rel": float(np.mean(np.abs(p - g) / g)),
        "sq_rel": float(np.mean((p - g) ** 2 / g)),
        "rmse": float(np.sqrt(np.mean((p - g) ** 2))),
        "rmse_log": float(np.sqrt(np.mean(e**2))),
        "log10": float(np.mean(np.abs(np.log10(p) - np.log10(g)))),
        "silog": float(100 * np.sqrt(np.mean(e**2) - np.mean(e) ** 2)),
        "delta1": float(np.mean(ratio < 1.25)),
        "delta2": float(np.mean(ratio < 1.25**2)),
        "delta3": float(np.mean(ratio < 1.25**3)),
    }


def _np_evaluate(
    pred: np.ndarray, gt: np.ndarray, valid: np.ndarray, alignment: str, lo: float, hi: float
) -> dict[str, float]:
    """Average over images of the per-image metrics; pred/gt/valid are [B, H, W]."""
    per_image = []
    for p, g, v in zip(pred.astype(np.float64), gt.astype(np.float64), valid, strict=True):
        mask = v & (g > lo) & (g < hi)
        if not mask.any():
            continue
        if alignment == "depth":
            a = np.stack([p[mask], np.ones(mask.sum())], axis=1)
            (s, t), *_ = np.linalg.lstsq(a, g[mask], rcond=None)
            p = s * p + t
        elif alignment == "disparity":
            fit = mask & (g > 0) & (p > 0)
            a = np.stack([p[fit], np.ones(fit.sum())], axis=1)
            (s, t), *_ = np.linalg.lstsq(a, 1.0 / g[fit], rcond=None)
            p = 1.0 / np.clip(s * p + t, 1e-3, None)
        p = np.clip(np.clip(p, lo, hi), 1e-6, None)
        per_image.append(_np_metrics(p[mask], g[mask]))
    return {k: float(np.mean([d[k] for d in per_image])) for k in METRIC_NAMES}


def _random_batch(seed: int, batch: int = 3, h: int = 12, w: int = 16) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    gt = torch.rand(batch, 1, h, w, generator=gen, dtype=torch.float64) * 8 + 0.5
    noise = 1 + 0.2 * torch.randn(batch, 1, h, w, generator=gen, dtype=torch.float64)
    pred = (0.4 * gt + 0.3) * noise  # affine-related to gt up to multiplicative noise
    valid = torch.rand(batch, 1, h, w, generator=gen) > 0.2
    return pred, gt, valid


def _values(metric: BaseDepthMetric) -> dict[str, float]:
    return {k: float(v) for k, v in metric.compute().items()}


# ----------------------------------------------------------------------------------------------------------------------
# Alignment


def test_fit_recovers_known_scale_and_shift_per_image() -> None:
    gen = torch.Generator().manual_seed(0)
    pred = torch.rand(3, 1, 9, 11, generator=gen, dtype=torch.float64) * 5
    scale = torch.tensor([2.5, 0.01, -3.0], dtype=torch.float64)
    shift = torch.tensor([0.7, 40.0, -1.25], dtype=torch.float64)
    target = scale.view(-1, 1, 1, 1) * pred + shift.view(-1, 1, 1, 1)
    mask = torch.rand(3, 1, 9, 11, generator=gen) > 0.3
    # Garbage outside the mask must not leak into the fit.
    target = torch.where(mask, target, torch.full_like(target, float("nan")))
    pred_garbage = torch.where(mask, pred, torch.full_like(pred, float("inf")))
    s, t, n = fit_scale_shift(pred_garbage, target, mask)
    torch.testing.assert_close(s, scale, rtol=0, atol=1e-10)
    torch.testing.assert_close(t, shift, rtol=0, atol=1e-10)
    assert n.tolist() == mask.flatten(1).sum(1).tolist()
    aligned = align(pred, target, mask, "depth").depth
    torch.testing.assert_close(aligned[mask], target[mask], rtol=0, atol=1e-10)


def test_fit_matches_numpy_lstsq_on_noisy_data() -> None:
    pred, gt, valid = _random_batch(1)
    s, t, _ = fit_scale_shift(pred.float(), gt.float(), valid)
    for i in range(pred.shape[0]):
        m = valid[i, 0].numpy()
        p = pred[i, 0].float().double().numpy()[m]
        g = gt[i, 0].float().double().numpy()[m]
        (s_ref, t_ref), *_ = np.linalg.lstsq(np.stack([p, np.ones_like(p)], 1), g, rcond=None)
        assert float(s[i]) == pytest.approx(s_ref, rel=1e-10)
        assert float(t[i]) == pytest.approx(t_ref, rel=1e-10)


def test_fit_degenerate_cases_are_finite() -> None:
    target = torch.tensor([[[[1.0, 2.0], [3.0, 6.0]]]]).repeat(3, 1, 1, 1)
    pred = torch.ones_like(target) * 0.7  # constant prediction: singular system
    mask = torch.ones_like(target, dtype=torch.bool)
    mask[1] = False  # no pixel at all
    mask[2] = False
    mask[2, 0, 1, 1] = True  # a single pixel
    s, t, n = fit_scale_shift(pred, target, mask)
    assert torch.isfinite(s).all() and torch.isfinite(t).all()
    # Constant prediction: best constant = mean target (1+2+3+6)/4 = 3.
    assert (float(s[0]), float(t[0])) == (0.0, 3.0)
    assert (float(s[1]), float(t[1]), int(n[1])) == (0.0, 0.0, 0)
    assert (float(s[2]), float(t[2]), int(n[2])) == (0.0, 6.0, 1)


def test_disparity_alignment_recovers_depth_and_follows_clamp_rule() -> None:
    gen = torch.Generator().manual_seed(2)
    depth = torch.rand(2, 1, 6, 7, generator=gen, dtype=torch.float64) * 9 + 1  # 1..10 m
    mask = torch.ones_like(depth, dtype=torch.bool)
    disparity_pred = 3.0 / depth + 0.25  # affine in disparity: s = 1/3, t = -1/12 recovers 1/depth
    # Pixels with pred <= 0 must be excluded from the fit; give them a target that would spoil it.
    disparity_pred[:, :, 0, 0] = -1.0
    out = align_disparity(disparity_pred, depth, mask)
    torch.testing.assert_close(out.scale, torch.full((2,), 1 / 3, dtype=torch.float64), rtol=0, atol=1e-10)
    torch.testing.assert_close(out.shift, torch.full((2,), -1 / 12, dtype=torch.float64), rtol=0, atol=1e-10)
    fit = disparity_pred > 0
    torch.testing.assert_close(out.depth[fit], depth[fit], rtol=0, atol=1e-9)
    assert out.num_pixels.tolist() == [41, 41]
    # At the excluded pixel the aligned disparity is (1/3)(-1) - 1/12 < 1e-3, so it is clamped to 1e-3 -> 1000 m.
    assert out.depth[:, 0, 0, 0].tolist() == pytest.approx([1000.0, 1000.0], rel=1e-12)


def test_alignment_max_resolution_fits_on_nearest_downsampled_copy() -> None:
    gen = torch.Generator().manual_seed(3)
    pred = torch.rand(1, 1, 8, 12, generator=gen, dtype=torch.float64)
    target = 2 * pred + 1 + 0.3 * torch.rand(1, 1, 8, 12, generator=gen, dtype=torch.float64)
    mask = torch.ones_like(pred, dtype=torch.bool)
    # Longest side 12 -> 6 is a factor 1/2; nearest picks the even rows and columns.
    s, t, n = fit_scale_shift(pred, target, mask, max_resolution=6)
    s_ref, t_ref, n_ref = fit_scale_shift(pred[..., ::2, ::2], target[..., ::2, ::2], mask[..., ::2, ::2])
    assert int(n) == int(n_ref) == 24
    torch.testing.assert_close((s, t), (s_ref, t_ref), rtol=1e-12, atol=0)
    s_full, _, _ = fit_scale_shift(pred, target, mask)
    assert float(s_full) != pytest.approx(float(s), rel=1e-6)  # the option does change the fit


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pred": torch.ones(2, 3, 4, 4)}, "shape"),
        ({"mask": torch.ones(2, 1, 4, 4)}, "bool"),
        ({"target": torch.ones(2, 1, 4, 5)}, "same shape"),
        ({"space": "log"}, "alignment space"),
    ],
)
def test_align_rejects_bad_input(kwargs: dict, match: str) -> None:
    args = {**depth_inputs(4, fill=1.0), "space": "depth", **kwargs}
    with pytest.raises(ValueError, match=match):
        align(args["pred"], args["target"], args["mask"], args["space"])


# ----------------------------------------------------------------------------------------------------------------------
# Metric formulas


def test_each_metric_on_a_hand_worked_example() -> None:
    g = torch.tensor([1.0, 2.0, 4.0, 8.0]).view(1, 1, 1, 4)
    p = torch.tensor([1.0, 2.5, 3.0, 10.0]).view(1, 1, 1, 4)
    mask = torch.ones_like(g, dtype=torch.bool)
    # p - g = 0, 0.5, -1, 2;  ratios max(p/g, g/p) = 1, 1.25, 4/3, 1.25;  e = ln p - ln g = 0, ln1.25, ln0.75, ln1.25
    e = [0.0, math.log(1.25), math.log(0.75), math.log(1.25)]
    mean_e = sum(e) / 4
    mean_e2 = sum(x * x for x in e) / 4
    expected = {
        public.AbsRel: (0 + 0.5 / 2 + 1 / 4 + 2 / 8) / 4,  # 0.1875
        public.SqRel: (0 + 0.25 / 2 + 1 / 4 + 4 / 8) / 4,  # 0.21875
        public.RMSE: math.sqrt((0 + 0.25 + 1 + 4) / 4),  # sqrt(1.3125)
        public.RMSELog: math.sqrt(mean_e2),
        public.Log10: (0 + 2 * math.log10(1.25) + abs(math.log10(0.75))) / 4,
        public.SILog: 100 * math.sqrt(mean_e2 - mean_e**2),
        public.Delta1: 1 / 4,  # only the exact pixel: 1.25 is *not* < 1.25
        public.Delta2: 1.0,  # all ratios < 1.5625
        public.Delta3: 1.0,
    }
    for cls, value in expected.items():
        metric = cls(alignment="none")
        metric.update(p, g, mask)
        assert float(metric.compute()) == pytest.approx(value, rel=1e-12), cls.__name__
    assert expected[public.AbsRel] == 0.1875 and expected[public.SqRel] == 0.21875


@pytest.mark.parametrize("k", [1, 2, 3])
def test_delta_threshold_is_strict(k: int) -> None:
    base = torch.tensor([1.0, 2.0, 4.0, 0.5]).view(1, 1, 2, 2)
    factor = 1.25**k  # exact in binary, and so are the products below
    mask = torch.ones_like(base, dtype=torch.bool)
    # Ratio exactly at the threshold, once as p/g (over-estimate) and once as g/p (under-estimate).
    for pred, gt in ((base * factor, base), (base, base * factor)):
        metric = BaseDepthMetric(alignment="none")
        metric.update(pred, gt, mask)
        values = _values(metric)
        for j in (1, 2, 3):
            assert values[f"delta{j}"] == (1.0 if j > k else 0.0), (k, j)


def test_metrics_match_numpy_reference_for_all_alignments() -> None:
    pred, gt, valid = _random_batch(4, batch=4)
    gt[0, 0, 0, :] = 0.0  # invalid GT values (0, inf, beyond range) must not matter
    gt[1, 0, 1, :] = float("inf")
    gt[2, 0, 2, :] = 25.0
    for alignment, p in (("depth", pred), ("disparity", 1.0 / pred), ("none", pred)):
        metric = BaseDepthMetric(alignment=alignment, min_depth=1e-3, max_depth=10.0)
        metric.update(p[:2].float(), gt[:2].float(), valid[:2])
        metric.update(p[2:].float(), gt[2:].float(), valid[2:])
        ref = _np_evaluate(
            p[:, 0].float().numpy(), gt[:, 0].float().numpy(), valid[:, 0].numpy(), alignment, 1e-3, 10.0
        )
        got = _values(metric)
        for key in METRIC_NAMES:
            assert got[key] == pytest.approx(ref[key], rel=1e-9, abs=1e-12), (alignment, key)


def test_per_image_averaging_differs_from_pooled_pixels() -> None:
    g = torch.ones(2, 1, 2, 2)
    p = torch.ones(2, 1, 2, 2)
    p[0, 0, 0, 0] = 2.0
    mask = torch.ones_like(g, dtype=torch.bool)
    mask[0] = False
    mask[0, 0, 0, 0] = True  # image 0: one pixel, abs_rel 1, delta1 0; image 1: four exact pixels
    metric = BaseDepthMetric(alignment="none")
    metric.update(p, g, mask)
    values = _values(metric)
    # Per image: abs_rel (1 + 0) / 2 = 0.5, delta1 (0 + 1) / 2 = 0.5. Pooled pixels would give 1/5 = 0.2 and 4/5.
    assert values["abs_rel"] == pytest.approx(0.5)
    assert values["delta1"] == pytest.approx(0.5)
    assert values["abs_rel"] != pytest.approx(0.2)


def test_aligned_metrics_are_invariant_to_positive_affine_changes() -> None:
    pred, gt, valid = _random_batch(5)
    for alignment, base in (("depth", pred), ("disparity", 1.0 / pred)):
        reference = BaseDepthMetric(benchmark="nyu", crop="none", alignment=alignment)
        reference.update(base, gt, valid)
        ref = _values(reference)
        for a, b in ((3.0, 0.0), (0.02, 5.0), (250.0, 0.1)):
            metric = BaseDepthMetric(benchmark="nyu", crop="none", alignment=alignment)
            metric.update(a * base + b, gt, valid)
            got = _values(metric)
            for key in METRIC_NAMES:
                assert got[key] == pytest.approx(ref[key], rel=1e-9, abs=1e-12), (alignment, a, b, key)
        # A non-affine change does change the result, so the invariance above is not vacuous.
        metric = BaseDepthMetric(benchmark="nyu", crop="none", alignment=alignment)
        metric.update(base**2, gt, valid)
        assert _values(metric)["abs_rel"] != pytest.approx(ref["abs_rel"], rel=1e-3)


def test_prediction_is_clipped_to_benchmark_range_then_to_1e_minus_6() -> None:
    g = torch.tensor([5.0, 5.0, 2.0]).view(1, 1, 1, 3)
    p = torch.tensor([20.0, -1.0, 2.0]).view(1, 1, 1, 3)
    mask = torch.ones_like(g, dtype=torch.bool)
    metric = AbsRel(benchmark="scannet", alignment="none")  # range (1e-3, 10)
    metric.update(p, g, mask)
    # 20 -> 10: |10-5|/5 = 1;  -1 -> 1e-3: |1e-3-5|/5 = 0.9998;  exact: 0.
    assert float(metric.compute()) == pytest.approx((1.0 + 0.9998 + 0.0) / 3, rel=1e-12)
    metric = AbsRel(min_depth=0.0, max_depth=10.0, alignment="none")
    metric.update(p, g, mask)
    assert float(metric.compute()) == pytest.approx((1.0 + (5 - 1e-6) / 5 + 0.0) / 3, rel=1e-12)


def test_all_invalid_image_is_skipped_with_one_warning() -> None:
    pred, gt, valid = _random_batch(6, batch=2)
    expected = BaseDepthMetric()
    expected.update(pred, gt, valid)

    empty_gt = torch.zeros_like(gt[:1])  # no valid GT anywhere
    metric = BaseDepthMetric()
    with pytest.warns(UserWarning, match="without valid pixels"):
        metric.update(torch.cat([pred, pred[:1]]), torch.cat([gt, empty_gt]), torch.cat([valid, valid[:1]]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second skip is not reported again
        metric.update(pred[:1], gt[:1], torch.zeros_like(valid[:1]))
    got, ref = _values(metric), _values(expected)
    assert all(math.isfinite(v) for v in got.values())
    assert got == pytest.approx(ref, rel=1e-12)
    assert float(metric.count) == 2


def test_no_image_at_all_gives_nan_with_warning() -> None:
    metric = Delta1()
    with pytest.warns(UserWarning, match="without valid pixels"):
        metric.update(torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2, dtype=torch.bool))
    with pytest.warns(UserWarning, match="no image"):
        assert math.isnan(float(metric.compute()))


def test_accepts_bhw_and_low_precision_inputs() -> None:
    pred, gt, valid = _random_batch(7)
    ref = BaseDepthMetric()
    ref.update(pred, gt, valid)
    metric = BaseDepthMetric()
    metric.update(pred[:, 0], gt[:, 0], valid[:, 0])
    assert _values(metric) == pytest.approx(_values(ref), rel=1e-12)
    half = BaseDepthMetric()
    half.update(pred.bfloat16(), gt.float(), valid)
    assert _values(half)["abs_rel"] == pytest.approx(_values(ref)["abs_rel"], rel=0.05)


def test_metric_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="alignment"):
        AbsRel(alignment="scale")
    with pytest.raises(ValueError, match="Did you mean 'nyu'"):
        AbsRel(benchmark="nuy")
    with pytest.raises(ValueError, match="min_depth < max_depth"):
        AbsRel(min_depth=5.0, max_depth=1.0)
    with pytest.raises(ValueError, match="bool"):
        AbsRel().update(torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 2))
    with pytest.raises(ValueError, match="metrics must be"):
        DepthMetrics(metrics=["abs_rel", "rmse_lg"])


# ----------------------------------------------------------------------------------------------------------------------
# Benchmarks and crops


def test_diode_scores_its_mask_alone_and_clips_to_the_range() -> None:
    """Marigold's DIODE: in-mask pixels outside 0.6-350 m are scored, the prediction clipped to the range.

    Ground truth 0.4, 2, 4, 400 m and a perfect metric prediction: clipped to 0.6 and 350, AbsRel = (0.2 / 0.4 +
    50 / 400) / 4 = 0.15625 over all four pixels. With the range as a mask (as every other preset), only 2 and 4 m
    count and AbsRel is 0.
    """
    target = torch.tensor([0.4, 2.0, 4.0, 400.0]).reshape(1, 1, 2, 2)
    mask = torch.ones_like(target, dtype=torch.bool)
    diode = AbsRel(benchmark="diode", alignment="none")
    diode.update(target.clone(), target, mask)
    assert float(diode.compute()) == pytest.approx(0.15625)
    ranged = AbsRel(benchmark=dataclasses.replace(BENCHMARKS["diode"], range_masks_target=True), alignment="none")
    ranged.update(target.clone(), target, mask)
    assert float(ranged.compute()) == pytest.approx(0.0)
    # Zero (missing) depth inside the mask is never scored.
    hole = AbsRel(benchmark="diode", alignment="none")
    hole.update(target.clone(), torch.tensor([0.0, 2.0, 4.0, 400.0]).reshape(1, 1, 2, 2), mask)
    assert float(hole.compute()) == pytest.approx(50 / 400 / 3)


def test_presets_carry_the_protocol_ranges() -> None:
    ranges = {name: (b.min_depth, b.max_depth) for name, b in BENCHMARKS.items()}
    assert ranges["nyu"] == (1e-3, 10.0) and ranges["scannet"] == (1e-3, 10.0)
    assert ranges["kitti_eigen"] == ranges["kitti_garg"] == ranges["vkitti"] == (1e-5, 80.0)
    assert ranges["eth3d"] == (1e-5, math.inf) and BENCHMARKS["eth3d"].alignment_max_res == 1024
    assert ranges["diode"] == (0.6, 350.0) and ranges["hypersim"] == (1e-5, 65.0)
    assert get_benchmark("NYUv2") is BENCHMARKS["nyu"] and get_benchmark("kitti") is BENCHMARKS["kitti_eigen"]
    assert BENCHMARKS["vkitti"].crop is BENCHMARKS["kitti_eigen"].crop


def test_crop_bounds() -> None:
    # NYU Eigen crop at 480x640: rows 45:471, cols 41:601 -> 426 x 560 pixels.
    nyu = crop_mask("nyu_eigen", 480, 640)
    assert nyu.sum() == 426 * 560
    rows, cols = nyu.any(1).nonzero(), nyu.any(0).nonzero()
    assert (int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())) == (45, 470, 41, 600)
    # Half size: 22.5 -> 23, 235.5 -> 236, 20.5 -> 21, 300.5 -> 301 (round half up).
    assert BENCHMARKS["nyu"].crop.bounds(240, 320) == (23, 236, 21, 301)
    # KITTI after the 352x1216 benchmark crop, int() truncation: 0.3324324*352 = 117.02, 0.91351351*352 = 321.56,
    # 0.0359477*1216 = 43.71, 0.96405229*1216 = 1172.29; Garg: 0.40810811*352 = 143.65, 0.99189189*352 = 349.15.
    assert BENCHMARKS["kitti_eigen"].crop.bounds(352, 1216) == (117, 321, 43, 1172)
    assert BENCHMARKS["kitti_garg"].crop.bounds(352, 1216) == (143, 349, 43, 1172)
    assert crop_mask(None, 4, 4) is None and crop_mask("none", 4, 4) is None
    with pytest.raises(ValueError, match="Unknown crop"):
        crop_mask("eigen", 4, 4)


def test_metrics_use_the_data_crops() -> None:
    from d3epth import metrics
    from d3epth.data import crops

    # One definition: the metrics re-export the crops the dataset readers use.
    assert metrics.CROPS is crops.CROPS and metrics.EvalCrop is crops.EvalCrop
    assert metrics.crop_mask is crops.crop_mask and metrics.get_crop is crops.get_crop
    assert BENCHMARKS["nyu"].crop is crops.CROPS["nyu_eigen"]
    assert BENCHMARKS["kitti_eigen"].crop is crops.CROPS["kitti_eigen"]
    assert BENCHMARKS["kitti_garg"].crop is crops.CROPS["kitti_garg"]


def test_metric_scores_only_pixels_inside_the_crop() -> None:
    crop = EvalCrop("box", 1, 3, 2, 5, reference_size=(4, 6))  # rows 1:3, cols 2:5 of a 4x6 image
    g = torch.full((1, 1, 4, 6), 2.0)
    p = torch.full((1, 1, 4, 6), 4.0)  # wrong everywhere ...
    p[:, :, 1:3, 2:5] = 2.0  # ... except inside the crop
    mask = torch.ones_like(g, dtype=torch.bool)
    inside = BaseDepthMetric(alignment="none", crop=crop)
    values, n = inside.per_image(p, g, mask)
    assert int(n[0]) == 6 and float(values[0, 0]) == 0.0
    outside = BaseDepthMetric(alignment="none", crop="none")
    values, n = outside.per_image(p, g, mask)
    assert int(n[0]) == 24 and float(values[0, 0]) == pytest.approx((18 * 1.0) / 24)


def test_benchmark_crop_is_applied_by_default() -> None:
    g = torch.full((1, 1, 480, 640), 3.0)
    metric = BaseDepthMetric(benchmark="nyu")
    _, n = metric.per_image(g * 2, g, torch.ones_like(g, dtype=torch.bool))
    assert int(n[0]) == 426 * 560


# ----------------------------------------------------------------------------------------------------------------------
# Collection: shared alignment, prefixes, Lightning logging


def test_collection_aligns_once_per_batch_and_matches_single_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real_align = depth_module.align

    def counting_align(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return real_align(*args, **kwargs)

    monkeypatch.setattr(depth_module, "align", counting_align)
    batches = [_random_batch(seed) for seed in (8, 9, 10)]
    metrics = DepthMetrics(benchmark="hypersim", alignment="depth").clone(prefix="val/")
    for batch in batches:
        metrics.update(*batch)
    assert len(calls) == 3  # not 27
    result = metrics.compute()
    assert sorted(result) == sorted(f"val/{k}" for k in METRIC_NAMES)

    for name, cls in depth_module.METRIC_CLASSES.items():
        single = cls(benchmark="hypersim")
        for batch in batches:
            single.update(*batch)
        assert float(result[f"val/{name}"]) == pytest.approx(float(single.compute()), rel=1e-12), name

    metrics.reset()
    metrics.update(*batches[0])
    alone = BaseDepthMetric(benchmark="hypersim")
    alone.update(*batches[0])
    assert float(metrics.compute()["val/rmse"]) == pytest.approx(_values(alone)["rmse"], rel=1e-12)


def test_collection_subset() -> None:
    metrics = DepthMetrics(metrics=["abs_rel", "delta1"], alignment="none", prefix="test/")
    metrics.update(torch.full((1, 1, 2, 2), 2.0), torch.full((1, 1, 2, 2), 2.0), torch.ones(1, 1, 2, 2).bool())
    assert {k: float(v) for k, v in metrics.compute().items()} == {"test/abs_rel": 0.0, "test/delta1": 1.0}


class _LogModule(L.LightningModule):
    """Logs a DepthMetrics collection the way the tasks do; the 'prediction' comes with the batch."""

    def __init__(self) -> None:
        super().__init__()
        self.val_metrics = DepthMetrics(benchmark="nyu", crop="none").clone(prefix="val/")

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        pred, gt, valid = batch
        self.val_metrics.update(pred, gt, valid)
        self.log_dict(self.val_metrics, batch_size=pred.shape[0])


def test_lightning_log_dict_reports_per_epoch_values() -> None:
    module = _LogModule()
    trainer = quiet_trainer()
    for seed in (11, 12):  # the second run must not include the first run's images
        pred, gt, valid = _random_batch(seed, batch=4)
        loader = DataLoader(TensorDataset(pred.float(), gt.float(), valid), batch_size=2)
        (logged,) = trainer.validate(module, loader, verbose=False)
        direct = BaseDepthMetric(benchmark="nyu", crop="none")
        direct.update(pred.float(), gt.float(), valid)
        expected = _values(direct)
        assert sorted(logged) == sorted(f"val/{k}" for k in METRIC_NAMES)
        for key in METRIC_NAMES:
            assert logged[f"val/{key}"] == pytest.approx(expected[key], rel=1e-6), key
