"""Score any depth model on benchmark datasets with the shared evaluator, and time it.

This is the evaluation behind ``tools/evaluate.py`` and ``tools/quickstart.py``: it runs a
:class:`~d3epth.inference.predictor.DepthPredictor` (a task checkpoint of any stage, an exported student, a diffusers
Marigold directory) over datasets, updates one :class:`~d3epth.metrics.DepthMetrics` per dataset (per-image
least-squares alignment in the model's space, benchmark range and crop), and measures milliseconds per image. It
needs no Lightning trainer, so it scores models that have no LightningModule at all, and imports no Lightning.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from d3epth.data.sample import collate_samples
from d3epth.metrics import benchmark_metrics

__all__ = ["evaluate", "format_table", "time_per_image"]


@torch.inference_mode()
def evaluate(
    predict: Callable[[Tensor], Tensor],
    datasets: Mapping[str, Dataset],
    alignment: str = "depth",
    benchmarks: Mapping[str, str] | None = None,
    batch_size: int = 1,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """Score a model on each dataset.

    Args:
        predict: images [B,3,H,W] in [−1,1] → depth (or disparity, per ``alignment``) [B,1,H,W] at the same size.
        datasets: name → dataset returning the sample dict (``image``, ``depth`` in metres, ``valid_mask``).
        alignment: ``"depth"``, ``"disparity"`` or ``"none"`` (see :func:`d3epth.metrics.align`).
        benchmarks: name → benchmark preset (``nyu``, ``kitti_eigen``, ...) where it differs from the set's name.
        batch_size: images per forward pass (1 suits sets whose frames differ in size).
        num_workers: data-loading workers.
        device: where the model runs; batches are moved there.
        progress: show a progress bar per dataset.

    Returns:
        ``{set name: {metric: value, ..., "num_images": n}}``; metric values are fractions (AbsRel 0.052 = 5.2 %).
    """
    results: dict[str, dict[str, float]] = {}
    for name, dataset in datasets.items():
        metrics = benchmark_metrics(name, alignment, (benchmarks or {}).get(name)).to(device)
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_samples)
        count = 0
        for batch in tqdm(loader, desc=f"evaluate {name}", disable=not progress, leave=False):
            image = batch["image"].to(device)
            pred = predict(image).float()
            metrics.update(pred, batch["depth"].to(device).float(), batch["valid_mask"].to(device))
            count += image.shape[0]
        values = {key: float(value) for key, value in metrics.compute().items()}
        results[name] = {**values, "num_images": count}
    return results


@torch.inference_mode()
def time_per_image(
    predict: Callable[[Tensor], Tensor],
    size: tuple[int, int],
    device: torch.device | str = "cpu",
    warmup: int = 3,
    repeats: int = 10,
) -> float:
    """Median wall time of one forward pass on one image of ``size`` (H, W), in milliseconds.

    Synchronises CUDA around each pass so the time is the model's, not the launch's. Pre- and post-processing
    outside ``predict`` (file decoding, colourising) is not included.
    """
    image = torch.rand(1, 3, *size, device=device) * 2 - 1
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    for _ in range(warmup):
        predict(image)
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        predict(image)
        sync()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def format_table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
    """A plain-text table: ``columns`` are (key, header, format spec); missing values print as ``-``."""
    headers = [header for _, header, _ in columns]
    cells = [[format(row[key], spec) if row.get(key) is not None else "-" for key, _, spec in columns] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)
