"""Distributed check: metrics computed in two processes on split data equal one process on all the data.

Two CPU processes (torch.multiprocessing spawn, gloo, file:// rendezvous) each update their own share of the images,
uneven on purpose and with an image that has no valid pixel, and ``compute`` syncs the sums across processes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from d3epth.metrics import METRIC_NAMES, AbsRel, BaseDepthMetric, DepthMetrics

WORLD_SIZE = 2


def _data(alignment: str) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Five batches; the prediction is relative depth, or relative disparity for disparity alignment."""
    gen = torch.Generator().manual_seed(1234)
    batches = []
    for size in (2, 1, 3, 1, 2):
        gt = torch.rand(size, 1, 10, 12, generator=gen) * 9 + 0.5
        pred = (0.5 * gt + 0.2) * (1 + 0.15 * torch.randn(size, 1, 10, 12, generator=gen))
        valid = torch.rand(size, 1, 10, 12, generator=gen) > 0.25
        if size == 3:
            valid[1] = False  # an image without valid pixels, on rank 0
        batches.append((1.0 / pred if alignment == "disparity" else pred, gt, valid))
    return batches


def _shard(rank: int, alignment: str) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    batches = _data(alignment)
    return batches[:3] if rank == 0 else batches[3:]  # 6 images on rank 0, 3 on rank 1


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    try:
        results = {}
        for alignment in ("depth", "disparity"):
            collection = DepthMetrics(benchmark="nyu", crop="none", alignment=alignment, prefix="val/")
            single = AbsRel(benchmark="nyu", crop="none", alignment=alignment)
            for batch in _shard(rank, alignment):
                collection.update(*batch)
                single.update(*batch)
            results[alignment] = {k: float(v) for k, v in collection.compute().items()}
            results[f"{alignment}/single_abs_rel"] = float(single.compute())
            results[f"{alignment}/local_count"] = float(single.count)  # unsynced after compute
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_two_process_result_equals_single_process(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    per_rank = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD_SIZE)]

    for alignment in ("depth", "disparity"):
        reference = BaseDepthMetric(benchmark="nyu", crop="none", alignment=alignment)
        for batch in _data(alignment):
            reference.update(*batch)
        expected = {k: float(v) for k, v in reference.compute().items()}
        assert float(reference.count) == 8  # 9 images, one without valid pixels

        for rank, results in enumerate(per_rank):
            got = results[alignment]
            for key in METRIC_NAMES:
                assert got[f"val/{key}"] == pytest.approx(expected[key], rel=1e-12), (alignment, rank, key)
            assert results[f"{alignment}/single_abs_rel"] == pytest.approx(expected["abs_rel"], rel=1e-12)
        # Each rank kept its own accumulation (5 and 3 scored images), so the equality above came from the sync.
        assert [r[f"{alignment}/local_count"] for r in per_rank] == [5.0, 3.0]
