"""Depth evaluation metrics as torchmetrics ``Metric`` classes (Marigold protocol).

For every image: build the evaluation mask (given valid mask, strict ``min_depth < g < max_depth`` except for DIODE,
whose shipped mask alone is scored as in Marigold, benchmark crop),
align the prediction by least squares (``align.py``), clip it to ``[min_depth, max_depth]`` and then to ``>= 1e-6``,
and compute the nine metrics over the masked pixels (n of them) against the raw ground truth ``g``:

=========  ==================================================================  ===========
key        per-image value                                                      better
=========  ==================================================================  ===========
abs_rel    mean(|p - g| / g)                                                    lower
sq_rel     mean((p - g)^2 / g)                                                  lower
rmse       sqrt(mean((p - g)^2))                                                lower
rmse_log   sqrt(mean(e^2)),  e = ln p - ln g                                    lower
log10      mean(|log10 p - log10 g|)                                            lower
silog      100 * sqrt(mean(e^2) - mean(e)^2)  (Marigold; lambda = 1)            lower
delta1/2/3 fraction of pixels with max(p/g, g/p) < 1.25^k  (strict)             higher
=========  ==================================================================  ===========

Values are fractions (Marigold tables print abs_rel and delta as percentages: multiply by 100); silog carries its
factor 100 by definition. Every metric is averaged **over images** (Marigold's MetricTracker), not over pooled pixels.
The state is the per-image sum of all nine values (float64 [9]) plus the image count, reduced by ``sum`` across
processes, so distributed results equal single-process ones exactly up to float64 rounding.

Shared alignment: every class here keeps the *same* state (all nine sums), so the classes are interchangeable as far
as the state goes. ``DepthMetrics`` is a ``MetricCollection`` with one explicit compute group holding all its
members: only the first member runs ``update`` (one alignment per batch), the others share its state by reference and
each ``compute`` just picks its entry. A single metric (``AbsRel(...)``) works on its own as well, at the cost of also
summing the eight other (cheap) per-image values. Use ``collection.update(...)`` in the step and
``self.log_dict(collection)``; calling the collection (``forward``) would bypass the compute group.

Images without any pixel to score are skipped (a rank-zero warning, once per metric object); they never turn a
result into NaN. If no image at all was scored, ``compute`` warns and returns NaN (so "no data" cannot pass for a
perfect 0 error).

Devices: the math runs in float64 (CPU, CUDA); Apple MPS has no float64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection
from torchmetrics.utilities import rank_zero_warn

from d3epth.metrics.align import ALIGNMENT_SPACES, align, as_depth_batch
from d3epth.metrics.benchmarks import Benchmark, EvalCrop, evaluation_mask, find_benchmark, get_benchmark, get_crop

__all__ = [
    "METRIC_CLASSES",
    "METRIC_NAMES",
    "MIN_PRED_DEPTH",
    "RMSE",
    "AbsRel",
    "BaseDepthMetric",
    "Delta1",
    "Delta2",
    "Delta3",
    "DepthMetrics",
    "Log10",
    "RMSELog",
    "SILog",
    "SqRel",
    "benchmark_metrics",
    "per_image_depth_metrics",
]

METRIC_NAMES: tuple[str, ...] = (
    "abs_rel",
    "sq_rel",
    "rmse",
    "rmse_log",
    "log10",
    "silog",
    "delta1",
    "delta2",
    "delta3",
)
HIGHER_IS_BETTER: dict[str, bool] = {name: name.startswith("delta") for name in METRIC_NAMES}

#: Final lower clip (m) of the aligned prediction, after the benchmark range (keeps logs and ratios finite).
MIN_PRED_DEPTH = 1e-6

# Defaults when no benchmark is given: any positive, finite ground truth is scored.
_DEFAULT_MIN_DEPTH = 1e-5
_DEFAULT_MAX_DEPTH = math.inf


def per_image_depth_metrics(pred: Tensor, target: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """The nine metrics for each image of a batch (no alignment, no clipping).

    Args:
        pred: Positive predicted depth [B,1,H,W] or [B,H,W] in metres (already aligned and clipped).
        target: Positive ground-truth depth, same shape, metres.
        mask: Bool, same shape; pixels to score.

    Returns:
        ``(values, num_pixels)``: float64 [B,9] in the order of ``METRIC_NAMES`` (rows of images without pixels are
        0) and int64 [B].
    """
    pred, target, mask = as_depth_batch(pred, "pred"), as_depth_batch(target, "target"), as_depth_batch(mask, "mask")
    m = mask.flatten(1)
    n = m.sum(dim=1)
    nf = n.clamp_min(1).to(torch.float64)
    # Outside the mask put p = g = 1 so that logs and divisions stay finite there; those pixels are then excluded.
    one = torch.ones((), dtype=torch.float64, device=pred.device)
    p = torch.where(m, pred.flatten(1).to(torch.float64), one)
    g = torch.where(m, target.flatten(1).to(torch.float64), one)

    def masked_mean(x: Tensor) -> Tensor:
        return torch.where(m, x, 0.0).sum(dim=1) / nf

    diff = p - g
    sq = diff * diff
    e = torch.log(p) - torch.log(g)
    ratio = torch.maximum(p / g, g / p)
    mean_e = masked_mean(e)
    mean_e2 = masked_mean(e * e)
    values = torch.stack(
        [
            masked_mean(diff.abs() / g),
            masked_mean(sq / g),
            masked_mean(sq).sqrt(),
            mean_e2.sqrt(),
            masked_mean((torch.log10(p) - torch.log10(g)).abs()),
            # The variance can come out a hair below 0 by rounding when all e are equal.
            100.0 * (mean_e2 - mean_e * mean_e).clamp_min(0.0).sqrt(),
            # 1.25, 1.5625 and 1.953125 are exact in binary, so "strict <" is exact too.
            masked_mean((ratio < 1.25).to(torch.float64)),
            masked_mean((ratio < 1.25**2).to(torch.float64)),
            masked_mean((ratio < 1.25**3).to(torch.float64)),
        ],
        dim=1,
    )
    values = torch.where((n > 0)[:, None], values, 0.0)
    return values, n


class BaseDepthMetric(Metric):
    """Shared evaluation logic: masks, alignment, clipping and the per-image sums of all nine metrics.

    ``compute`` returns a dict of all nine averages; the subclasses (``AbsRel``, ...) return their own scalar.

    Args:
        benchmark: Preset name (``"nyu"``, ``"kitti"``, ``"kitti_garg"``, ``"eth3d"``, ``"scannet"``, ``"diode"``,
            ``"hypersim"``, ``"vkitti"``; see ``benchmarks.py``) or a ``Benchmark``; ``None`` = no preset.
        alignment: ``"depth"`` (affine-invariant depth, default), ``"disparity"`` (affine-invariant disparity) or
            ``"none"`` (metric depth).
        min_depth: Valid GT lower bound (m, exclusive), also the prediction's lower clip. ``None``: the benchmark's,
            else 1e-5.
        max_depth: Valid GT upper bound (m, exclusive), also the prediction's upper clip. ``None``: the benchmark's,
            else ``inf``.
        crop: Crop name (``"nyu_eigen"``, ``"kitti_eigen"``, ``"kitti_garg"``), an ``EvalCrop``, ``"none"`` for no
            crop, or ``None`` for the benchmark's crop.
        alignment_max_res: Longest side (px) of the nearest-downsampled copy the least-squares fit runs on; ``None``:
            the benchmark's (ETH3D: 1024), ``0``: always full resolution.
        kwargs: Passed to ``torchmetrics.Metric`` (e.g. ``sync_on_compute``, ``process_group``).
    """

    is_differentiable: ClassVar[bool] = False
    full_state_update: ClassVar[bool] = False
    higher_is_better: ClassVar[bool | None] = None
    plot_lower_bound: ClassVar[float | None] = 0.0
    #: Key in ``METRIC_NAMES`` that ``compute`` returns; ``None`` in the base class (returns all).
    metric_name: ClassVar[str | None] = None

    sums: Tensor
    count: Tensor

    def __init__(
        self,
        benchmark: str | Benchmark | None = None,
        alignment: str = "depth",
        min_depth: float | None = None,
        max_depth: float | None = None,
        crop: str | EvalCrop | None = None,
        alignment_max_res: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if alignment not in ALIGNMENT_SPACES:
            raise ValueError(f"alignment must be one of {list(ALIGNMENT_SPACES)}, got '{alignment}'")
        preset = get_benchmark(benchmark) if benchmark is not None else None
        self.benchmark = preset.name if preset is not None else None
        self.alignment = alignment
        self.min_depth = float(
            min_depth if min_depth is not None else (preset.min_depth if preset else _DEFAULT_MIN_DEPTH)
        )
        self.max_depth = float(
            max_depth if max_depth is not None else (preset.max_depth if preset else _DEFAULT_MAX_DEPTH)
        )
        if not (0.0 <= self.min_depth < self.max_depth):
            raise ValueError(
                f"need 0 <= min_depth < max_depth, got min_depth={self.min_depth}, max_depth={self.max_depth}"
            )
        self.crop = get_crop(crop) if crop is not None else (preset.crop if preset else None)
        if alignment_max_res is None:
            alignment_max_res = preset.alignment_max_res if preset else None
        elif alignment_max_res < 0:
            raise ValueError(f"alignment_max_res must be >= 0 (0 = full resolution), got {alignment_max_res}")
        self.alignment_max_res = alignment_max_res or None
        # Marigold's DIODE: the shipped mask alone is scored (finite positive depth), the range only clips.
        masks = preset.range_masks_target if preset else True
        self._target_range = (self.min_depth, self.max_depth) if masks else (0.0, math.inf)

        self.add_state("sums", default=torch.zeros(len(METRIC_NAMES), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self._warned_empty = False

    def per_image(self, pred: Tensor, target: Tensor, valid_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Evaluate each image of a batch without touching the state (e.g. for per-image result tables).

        Args:
            pred: Prediction [B,1,H,W] or [B,H,W]: relative depth, relative disparity or metric depth in metres,
                according to ``alignment``.
            target: Ground-truth depth in metres, same shape; invalid pixels may hold anything (0, inf, NaN).
            valid_mask: Bool, same shape, or ``None`` (range and crop only).

        Returns:
            ``(values, num_pixels)``: float64 [B,9] (``METRIC_NAMES`` order; 0 rows for images without pixels) and
            int64 [B] scored pixels per image.
        """
        pred = as_depth_batch(pred, "pred")
        target = as_depth_batch(target, "target")
        if pred.shape != target.shape:
            raise ValueError(
                f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}"
            )
        if valid_mask is not None:
            valid_mask = as_depth_batch(valid_mask, "valid_mask")
            if valid_mask.shape != target.shape:
                raise ValueError(
                    f"valid_mask must have the shape of target {tuple(target.shape)}, got {tuple(valid_mask.shape)}"
                )
            if valid_mask.dtype != torch.bool:
                raise ValueError(f"valid_mask must be a bool tensor, got dtype {valid_mask.dtype}")
        mask = evaluation_mask(target, valid_mask, *self._target_range, self.crop)
        aligned = align(pred, target, mask, space=self.alignment, max_resolution=self.alignment_max_res).depth
        aligned = aligned.clamp(min=self.min_depth, max=self.max_depth).clamp_min(MIN_PRED_DEPTH)
        return per_image_depth_metrics(aligned, target, mask)

    def update(self, pred: Tensor, target: Tensor, valid_mask: Tensor | None = None) -> None:
        """Add a batch.

        Args:
            pred: Prediction [B,1,H,W] or [B,H,W] (see ``per_image``); any float dtype.
            target: Ground-truth depth in metres, same shape.
            valid_mask: Bool, same shape (the sample dict's ``valid_mask``), or ``None``.
        """
        values, n = self.per_image(pred, target, valid_mask)
        scored = n > 0
        # Re-cast in case a whole-module `.to(dtype)` (true half precision) converted the float64 state.
        self.sums = self.sums.to(torch.float64) + values.sum(dim=0)
        self.count = self.count.to(torch.float64) + scored.sum()
        if not self._warned_empty and not bool(scored.all()):
            self._warned_empty = True
            rank_zero_warn(
                f"{type(self).__name__}: an image without valid pixels (after range {self.min_depth}..{self.max_depth}"
                f" m and crop) was skipped; further skips are not reported.",
                UserWarning,
            )

    def _averages(self) -> Tensor:
        if float(self.count) == 0:
            rank_zero_warn(f"{type(self).__name__}: no image with valid pixels was seen; returning NaN.", UserWarning)
            return torch.full_like(self.sums, math.nan)
        return self.sums / self.count

    def compute(self) -> Tensor | dict[str, Tensor]:
        """Averages over images: a scalar for a named metric, or a dict of all nine for the base class."""
        averages = self._averages()
        if self.metric_name is None:
            return dict(zip(METRIC_NAMES, averages.unbind(0), strict=True))
        return averages[METRIC_NAMES.index(self.metric_name)]

    def extra_repr(self) -> str:
        """Show the benchmark, alignment and range in ``print(metric)``."""
        crop = self.crop.name if self.crop is not None else None
        return (
            f"benchmark={self.benchmark}, alignment={self.alignment}, min_depth={self.min_depth}, "
            f"max_depth={self.max_depth}, crop={crop}, alignment_max_res={self.alignment_max_res}"
        )


class AbsRel(BaseDepthMetric):
    """Absolute relative error, mean(|p - g| / g) per image, averaged over images. Lower is better."""

    metric_name = "abs_rel"
    higher_is_better = False


class SqRel(BaseDepthMetric):
    """Squared relative error, mean((p - g)^2 / g) per image (m), averaged over images. Lower is better."""

    metric_name = "sq_rel"
    higher_is_better = False


class RMSE(BaseDepthMetric):
    """Root mean squared error sqrt(mean((p - g)^2)) per image (m), averaged over images. Lower is better."""

    metric_name = "rmse"
    higher_is_better = False


class RMSELog(BaseDepthMetric):
    """RMSE of natural logs, sqrt(mean((ln p - ln g)^2)) per image, averaged over images. Lower is better."""

    metric_name = "rmse_log"
    higher_is_better = False


class Log10(BaseDepthMetric):
    """Mean absolute log10 error, mean(|log10 p - log10 g|) per image, averaged over images. Lower is better."""

    metric_name = "log10"
    higher_is_better = False


class SILog(BaseDepthMetric):
    """Scale-invariant log error (Marigold): 100 * sqrt(mean(e^2) - mean(e)^2), e = ln p - ln g. Lower is better."""

    metric_name = "silog"
    higher_is_better = False


class Delta1(BaseDepthMetric):
    """Fraction of pixels with max(p/g, g/p) < 1.25 per image, averaged over images. Higher is better."""

    metric_name = "delta1"
    higher_is_better = True
    plot_upper_bound = 1.0


class Delta2(BaseDepthMetric):
    """Fraction of pixels with max(p/g, g/p) < 1.25^2 per image, averaged over images. Higher is better."""

    metric_name = "delta2"
    higher_is_better = True
    plot_upper_bound = 1.0


class Delta3(BaseDepthMetric):
    """Fraction of pixels with max(p/g, g/p) < 1.25^3 per image, averaged over images. Higher is better."""

    metric_name = "delta3"
    higher_is_better = True
    plot_upper_bound = 1.0


METRIC_CLASSES: dict[str, type[BaseDepthMetric]] = {
    cls.metric_name: cls  # type: ignore[misc]
    for cls in (AbsRel, SqRel, RMSE, RMSELog, Log10, SILog, Delta1, Delta2, Delta3)
}


class DepthMetrics(MetricCollection):
    """The depth metrics of a benchmark as one ``MetricCollection`` (keys ``abs_rel``, ..., ``delta3``).

    All members are built with the same settings and form one compute group, so a batch is aligned once, not once
    per metric. Typical use in a LightningModule::

        metrics = DepthMetrics(benchmark="nyu", alignment="depth")
        self.val_metrics = metrics.clone(prefix="val/")
        ...
        self.val_metrics.update(pred, batch["depth"], batch["valid_mask"])
        self.log_dict(self.val_metrics, batch_size=pred.shape[0])

    Args:
        benchmark: Preset name or ``Benchmark`` (see ``BaseDepthMetric``), or ``None``.
        alignment: ``"depth"``, ``"disparity"`` or ``"none"``.
        min_depth: Override of the valid range's lower bound (m).
        max_depth: Override of the valid range's upper bound (m).
        crop: Override of the crop (name, ``EvalCrop`` or ``"none"``).
        alignment_max_res: Override of the fit resolution (``0`` = full).
        metrics: Subset of ``METRIC_NAMES`` to include; ``None`` = all nine.
        prefix: Prepended to every key, e.g. ``"val/"``.
        postfix: Appended to every key.
        kwargs: Passed to every member ``Metric`` (e.g. ``sync_on_compute``).
    """

    def __init__(
        self,
        benchmark: str | Benchmark | None = None,
        alignment: str = "depth",
        min_depth: float | None = None,
        max_depth: float | None = None,
        crop: str | EvalCrop | None = None,
        alignment_max_res: int | None = None,
        metrics: Sequence[str] | None = None,
        prefix: str | None = None,
        postfix: str | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(metrics, str):
            raise ValueError(f"metrics must be a list of names, got the string '{metrics}'")
        names = list(METRIC_NAMES) if metrics is None else [str(name) for name in metrics]
        unknown = [name for name in names if name not in METRIC_CLASSES]
        if unknown or not names or len(set(names)) != len(names):
            raise ValueError(f"metrics must be distinct names from {list(METRIC_NAMES)}, got {names}")
        members = {
            name: METRIC_CLASSES[name](
                benchmark=benchmark,
                alignment=alignment,
                min_depth=min_depth,
                max_depth=max_depth,
                crop=crop,
                alignment_max_res=alignment_max_res,
                **kwargs,
            )
            for name in names
        }
        # Identical states by construction, so one explicit group is safe (no state comparison after batch one).
        super().__init__(members, prefix=prefix, postfix=postfix, compute_groups=[sorted(names)])


def benchmark_metrics(set_name: str, alignment: str, benchmark: str | None = None) -> DepthMetrics:
    """The evaluator for a named dataset (validation set, test set, benchmark).

    Uses the preset ``benchmark`` if given (an unknown one is an error), else the preset named like the set (``nyu``,
    ``kitti``, ``hypersim``, ...) if there is one, else range-only defaults.
    """
    preset = get_benchmark(benchmark) if benchmark else find_benchmark(set_name)
    return DepthMetrics(benchmark=preset, alignment=alignment)
