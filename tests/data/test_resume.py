"""Resumable training data: the sampler continues an epoch anywhere, the loader reports what it handed out, and each
sample's random draws depend only on its position in the epoch (not on workers or on what ran before)."""

from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import Dataset

from d3epth.data import MixedBatchSampler
from d3epth.data.resume import ResumableDataLoader, SeededConcatDataset, sample_seeds
from d3epth.utils.seeding import derive_seed


class Draws(Dataset):
    """Sample ``i`` is ``(i, a torch draw, a numpy draw, a Python draw)`` from the global generators."""

    def __len__(self) -> int:
        return 12

    def __getitem__(self, index: int) -> tuple[int, float, float, float]:
        return index, torch.rand(()).item(), float(np.random.rand()), random.random()


def sampler(**kwargs: object) -> MixedBatchSampler:
    defaults: dict = {"batch_size": 2, "probabilities": [0.5, 0.5], "seed": 3, "num_replicas": 1, "rank": 0}
    return MixedBatchSampler([12, 8], **{**defaults, **kwargs})


def loader(num_workers: int = 0) -> ResumableDataLoader:
    return ResumableDataLoader(
        SeededConcatDataset([Draws(), Draws()]), batch_sampler=sampler(), num_workers=num_workers, collate_fn=list
    )


def test_sampler_resumes_an_epoch_at_any_batch() -> None:
    full = sampler()
    full.set_epoch(1)
    batches = list(full)
    assert len(batches) == 10
    for start in (0, 3, 9):
        resumed = sampler()
        resumed.resume(1, start)
        rest = list(resumed)
        assert rest == batches[start:]
        assert [b.seeds for b in rest] == [b.seeds for b in batches[start:]]
    # Per-sample seeds: the epoch's global batch index and the slot, nothing else.
    assert batches[4].seeds == sample_seeds(3, 1, 4, 2) == [derive_seed(3, 1, 4, 0), derive_seed(3, 1, 4, 1)]
    assert len({s for b in batches for s in b.seeds}) == 20


def test_sampler_resume_position_with_ranks_and_epoch_changes() -> None:
    kwargs = {"epoch_length": 12, "num_replicas": 2}
    whole = [list(sampler(rank=r, **kwargs)) for r in (0, 1)]
    for rank in (0, 1):
        resumed = sampler(rank=rank, **kwargs)
        resumed.resume(0, 4)
        assert list(resumed) == whole[rank][4:]
    s = sampler()
    s.resume(2, 5)
    s.set_epoch(2)  # Lightning's set_epoch for the resumed epoch keeps the position
    assert s.position() == (2, 5)
    s.set_epoch(3)  # ... and for another epoch drops it
    assert s.position() == (3, 0)
    s.resume(2, len(s))  # the epoch was over: the next one from its start
    assert s.position() == (3, 0)


def test_loader_state_counts_batches_handed_out_with_workers_prefetching() -> None:
    reference = [batch for batch in loader()]
    dl = loader(num_workers=2)  # workers prefetch 2 x 2 batches ahead of what the loop has consumed
    iterator = iter(dl)
    consumed = [next(iterator) for _ in range(3)]
    assert dl.state_dict() == {"epoch": 0, "batches": 3}
    del iterator
    resumed = loader(num_workers=2)
    resumed.load_state_dict(dl.state_dict())
    assert consumed + list(resumed) == reference  # same indices and the same torch, numpy and Python draws
    assert resumed.state_dict() == {"epoch": 0, "batches": 10}
    assert list(resumed) != reference and resumed.state_dict() == {"epoch": 1, "batches": 10}  # next epoch


def test_sample_draws_follow_their_seed_and_leave_the_global_generators_alone() -> None:
    batch = next(iter(sampler()))
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    samples = SeededConcatDataset([Draws(), Draws()]).__getitems__(batch)
    assert torch.equal(torch.random.get_rng_state(), before)
    for (index, draw, _, _), seed, expected_index in zip(samples, batch.seeds, batch, strict=True):
        assert index == expected_index % 12
        assert draw == torch.rand((), generator=torch.Generator().manual_seed(seed)).item()
