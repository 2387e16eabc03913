"""MixedBatchSampler: per-batch mixing, determinism, DDP sharding, and Lightning's distributed-sampler injection."""

from __future__ import annotations

import math

import pytest
from torch.utils.data import DataLoader, DistributedSampler

from d3epth.data import MixedBatchSampler
from d3epth.errors import ConfigError


def dataset_of(index: int, sizes: list[int]) -> int:
    bounds = [sum(sizes[: k + 1]) for k in range(len(sizes))]
    return next(k for k, b in enumerate(bounds) if index < b)


def test_every_batch_from_one_dataset() -> None:
    sizes = [10, 7, 5]
    sampler = MixedBatchSampler(sizes, batch_size=2, probabilities=[0.5, 0.3, 0.2], seed=1, num_replicas=1, rank=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 5 + 3 + 2  # drop_last: all full batches of all datasets
    for batch in batches:
        assert len(batch) == 2
        assert len({dataset_of(i, sizes) for i in batch}) == 1


def test_mix_frequency_within_binomial_tolerance() -> None:
    n, p = 5000, 0.1
    sampler = MixedBatchSampler(
        [1000, 300], batch_size=2, probabilities=[0.9, 0.1], epoch_length=n, seed=5, num_replicas=1, rank=0
    )
    from_second = sum(dataset_of(b[0], [1000, 300]) == 1 for b in sampler)
    assert abs(from_second - n * p) < 4 * math.sqrt(n * p * (1 - p))


def test_probabilities_are_normalised_and_default_proportional() -> None:
    assert MixedBatchSampler([10, 10], 2, probabilities=[9, 1], num_replicas=1, rank=0).probabilities == [0.9, 0.1]
    assert MixedBatchSampler([30, 10], 2, num_replicas=1, rank=0).probabilities == [0.75, 0.25]


def test_exhausted_dataset_reshuffles() -> None:
    sizes = [100, 6]
    sampler = MixedBatchSampler(sizes, 2, probabilities=[0.5, 0.5], epoch_length=80, seed=0, num_replicas=1, rank=0)
    small = [b for b in sampler if dataset_of(b[0], sizes) == 1]
    assert len(small) >= 9
    passes = [sorted(i for b in small[j : j + 3] for i in b) for j in range(0, len(small) - 2, 3)]
    assert all(p == list(range(100, 106)) for p in passes)  # each pass of 3 batches covers the 6 samples once
    assert len({tuple(i for b in small[j : j + 3] for i in b) for j in range(0, 9, 3)}) > 1  # reshuffled


def test_deterministic_under_seed_and_epoch() -> None:
    def make(seed: int) -> MixedBatchSampler:
        return MixedBatchSampler([20, 12], 2, probabilities=[0.7, 0.3], seed=seed, num_replicas=1, rank=0)

    a, b = make(3), make(3)
    assert list(a) == list(b)  # epoch 0
    assert list(a) == list(b)  # epoch 1 (counts up per iteration)
    c = make(3)
    c.set_epoch(1)
    a.set_epoch(1)
    assert list(c) == list(a)
    c.set_epoch(0)
    assert list(c) != list(a)
    assert list(make(3)) != list(make(4))


def test_two_ranks_disjoint_and_covering() -> None:
    ranks = [MixedBatchSampler([40], 4, seed=2, num_replicas=2, rank=r) for r in (0, 1)]
    seen = [[i for b in s for i in b] for s in ranks]
    assert len(ranks[0]) == len(ranks[1]) == 5
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(40))


def test_ranks_split_the_single_process_sequence() -> None:
    kwargs = {"batch_size": 2, "probabilities": [0.8, 0.2], "epoch_length": 30, "seed": 9}
    single = list(MixedBatchSampler([50, 20], num_replicas=1, rank=0, **kwargs))
    per_rank = [list(MixedBatchSampler([50, 20], num_replicas=3, rank=r, **kwargs)) for r in range(3)]
    assert [len(r) for r in per_rank] == [10, 10, 10]
    interleaved = [per_rank[i % 3][i // 3] for i in range(30)]
    assert interleaved == single
    uneven = [len(MixedBatchSampler([50, 20], num_replicas=4, rank=r, **kwargs)) for r in range(4)]
    assert uneven == [7, 7, 7, 7]  # equal per rank, so no rank waits in a collective


def test_sampler_errors() -> None:
    with pytest.raises(ConfigError, match=r"got a sampler \(DistributedSampler\).*use_distributed_sampler: false"):
        MixedBatchSampler(DistributedSampler(list(range(8)), num_replicas=2, rank=0), 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"dataset 1 has 1 samples, fewer than one batch of 2"):
        MixedBatchSampler([10, 1], 2, probabilities=[0.5, 0.5], num_replicas=1, rank=0)
    with pytest.raises(ValueError, match=r"invalid rank 2 for world size 2"):
        MixedBatchSampler([10], 2, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match=r"2 probabilities for 1 datasets"):
        MixedBatchSampler([10], 2, probabilities=[0.5, 0.5], num_replicas=1, rank=0)


def test_lightning_distributed_injection_is_refused() -> None:
    from lightning.pytorch.utilities.data import _update_dataloader

    loader = DataLoader(list(range(20)), batch_sampler=MixedBatchSampler([20], 2, num_replicas=1, rank=0))
    with pytest.raises(ConfigError, match=r"use_distributed_sampler: false"):
        _update_dataloader(loader, DistributedSampler(loader.dataset, num_replicas=2, rank=0))
