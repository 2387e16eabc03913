"""Rank-aware batch sampler that draws every batch from one dataset, picked at random with given probabilities.

This is Marigold's ``MixedBatchSampler`` idea (Hypersim:VKITTI = 0.9:0.1 per batch, so resolutions may differ between
batches but never within one) made deterministic per epoch and correct under DDP.

Indices refer to a ``torch.utils.data.ConcatDataset`` of the datasets in the given order.

**DDP.** Every rank builds the same global sequence of batches from ``seed + epoch``; rank ``r`` of ``W`` takes
batches ``r, r + W, r + 2W, ...``, so within one pass over a dataset no two ranks see the same sample, and all ranks
yield the same number of batches (needed so no rank waits forever in a collective). Lightning must not wrap this
sampler with its ``DistributedSampler``: set ``trainer.use_distributed_sampler: false`` (``configs/base.yaml`` does).
If Lightning tries anyway it re-instantiates the class with a sampler as first argument, which raises a
``TypeError`` saying so.

**Resume.** Each batch is a :class:`~d3epth.data.resume.SeededBatch` carrying per-sample augmentation seeds derived
from ``(seed, epoch, global batch index, slot)``, and :meth:`MixedBatchSampler.resume` starts an epoch at any batch;
with :class:`~d3epth.data.resume.ResumableDataLoader` a run resumed mid-epoch sees exactly the batches, and the
augmentations, that the uninterrupted run saw (see :mod:`d3epth.data.resume`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from d3epth.data.resume import SeededBatch, sample_seeds
from d3epth.errors import ConfigError


def default_rank_world() -> tuple[int, int]:
    """``(rank, world_size)`` from ``torch.distributed`` when initialised, else ``(0, 1)``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class MixedBatchSampler(Sampler[SeededBatch]):
    """Yield batches of ConcatDataset indices, each batch from a single dataset chosen by a multinomial draw.

    Per epoch, each dataset's indices are shuffled and cut into batches; for every batch slot a dataset is drawn
    with ``probabilities`` and its next batch is taken. A dataset whose batches run out is reshuffled and starts
    over. The epoch has ``epoch_length`` batches in total over all ranks (default: the total number of batches of all
    datasets with a non-zero probability), i.e. ``epoch_length // num_replicas`` per rank.

    The epoch number comes from :meth:`set_epoch` (Lightning calls it through the ``sampler`` property before each
    epoch) or, without it, counts up by one per ``iter()``. :meth:`resume` makes the next ``iter()`` skip the
    epoch's first batches (the order of the rest is unchanged). Each batch is a
    :class:`~d3epth.data.resume.SeededBatch`: a ``list[int]`` whose ``seeds`` (one per sample, from ``seed``, the
    epoch and the batch's global index) seed the sample's augmentation.

    Args:
        dataset_sizes: number of samples of each dataset, in ConcatDataset order.
        batch_size: samples per batch.
        probabilities: per-dataset probability of a batch (normalised to sum 1); ``None`` = proportional to the
            number of batches of each dataset.
        epoch_length: batches per epoch over all ranks; ``None`` = the total number of batches of the datasets with
            a non-zero probability.
        drop_last: drop each dataset's last incomplete batch (Marigold does); else it is yielded smaller.
        shuffle: shuffle indices within each dataset (else they are taken in order).
        seed: base seed; the epoch's order depends only on ``seed``, the epoch and the sizes.
        num_replicas: world size; ``None`` = from ``torch.distributed``, else 1.
        rank: this process's rank; ``None`` = from ``torch.distributed``, else 0.

    Raises:
        TypeError: when given a sampler as ``dataset_sizes`` (Lightning trying to inject a DistributedSampler).
        ValueError: inconsistent sizes, probabilities, rank or epoch length.
    """

    def __init__(
        self,
        dataset_sizes: Sequence[int],
        batch_size: int,
        probabilities: Sequence[float] | None = None,
        epoch_length: int | None = None,
        drop_last: bool = True,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        if isinstance(dataset_sizes, Sampler):
            raise ConfigError(
                f"MixedBatchSampler got a sampler ({type(dataset_sizes).__name__}) instead of dataset sizes: Lightning "
                "is trying to replace it with a DistributedSampler. MixedBatchSampler is already rank-aware; set "
                "trainer.use_distributed_sampler: false (Trainer(use_distributed_sampler=False))."
            )
        sizes = [int(s) for s in dataset_sizes]
        if not sizes or any(s < 0 for s in sizes):
            raise ValueError(f"MixedBatchSampler: dataset_sizes must be non-negative and non-empty, got {sizes}")
        if batch_size < 1:
            raise ValueError(f"MixedBatchSampler: batch_size must be >= 1, got {batch_size}")
        self.sizes = sizes
        self.batch_size = int(batch_size)
        self.drop_last = bool(drop_last)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.batches_per_dataset = [s // self.batch_size if self.drop_last else -(-s // self.batch_size) for s in sizes]

        if probabilities is None:
            probabilities = [float(n) for n in self.batches_per_dataset]
        probs = [float(p) for p in probabilities]
        if len(probs) != len(sizes):
            raise ValueError(f"MixedBatchSampler: {len(probs)} probabilities for {len(sizes)} datasets")
        if any(p < 0 for p in probs) or sum(probs) <= 0:
            raise ValueError(f"MixedBatchSampler: probabilities must be >= 0 with a positive sum, got {probs}")
        for i, (p, n) in enumerate(zip(probs, self.batches_per_dataset, strict=True)):
            if p > 0 and n == 0:
                raise ValueError(
                    f"MixedBatchSampler: dataset {i} has {sizes[i]} samples, fewer than one batch of "
                    f"{self.batch_size}, but probability {p} > 0"
                )
        total = sum(probs)
        self.probabilities = [p / total for p in probs]

        default_rank, default_world = default_rank_world()
        self.num_replicas = int(num_replicas if num_replicas is not None else default_world)
        self.rank = int(rank if rank is not None else default_rank)
        if self.num_replicas < 1 or not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"MixedBatchSampler: invalid rank {self.rank} for world size {self.num_replicas}")

        if epoch_length is None:  # all batches of the datasets that can be drawn
            epoch_length = sum(n for n, p in zip(self.batches_per_dataset, self.probabilities, strict=True) if p > 0)
        self.epoch_length = int(epoch_length)
        if self.epoch_length < self.num_replicas:
            raise ValueError(
                f"MixedBatchSampler: epoch_length {self.epoch_length} gives no batch to some of the "
                f"{self.num_replicas} ranks"
            )
        self._next_epoch = 0
        self._start = 0  # local batch of ``_next_epoch`` the next iter() starts at (non-zero after resume())

    @property
    def sampler(self) -> MixedBatchSampler:
        """Itself: Lightning calls ``set_epoch`` on ``dataloader.batch_sampler.sampler`` before each epoch."""
        return self

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch`` for the next ``iter()`` (later iterations continue from it).

        A position set by :meth:`resume` is kept if it is in ``epoch`` and dropped otherwise: Lightning calls
        ``set_epoch`` with the resumed epoch after ``load_state_dict``, or with the next one when the checkpoint
        was written at the end of an epoch.
        """
        if int(epoch) != self._next_epoch:
            self._start = 0
        self._next_epoch = int(epoch)

    def position(self) -> tuple[int, int]:
        """``(epoch, first local batch)`` the next ``iter()`` will use."""
        return self._next_epoch, self._start

    def resume(self, epoch: int, start: int) -> None:
        """Make the next ``iter()`` run ``epoch`` from its local (this rank's) batch ``start``.

        ``start >= len(self)`` means the epoch is over: the next ``iter()`` runs ``epoch + 1`` from its start.
        """
        if epoch < 0 or start < 0:
            raise ValueError(f"MixedBatchSampler.resume: epoch and start must be >= 0, got {epoch}, {start}")
        self._next_epoch, self._start = (epoch, start) if start < len(self) else (epoch + 1, 0)

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return self.epoch_length // self.num_replicas

    def _order(self, n: int, generator: torch.Generator) -> list[int]:
        return torch.randperm(n, generator=generator).tolist() if self.shuffle else list(range(n))

    def _global_batches(self, epoch: int) -> Iterator[tuple[int, list[int]]]:
        """The epoch's global batch sequence (identical on every rank): ``(dataset index, ConcatDataset indices)``.

        Skipping batches (:meth:`resume`) still runs this generator from the start, so the draws stay identical.
        """
        generator = torch.Generator().manual_seed(self.seed + epoch)
        offsets = [0]
        for size in self.sizes[:-1]:
            offsets.append(offsets[-1] + size)
        n_global = len(self) * self.num_replicas
        choices = torch.multinomial(
            torch.tensor(self.probabilities, dtype=torch.float64), n_global, replacement=True, generator=generator
        ).tolist()
        orders: list[list[int] | None] = [None] * len(self.sizes)
        cursors = [0] * len(self.sizes)
        for k in choices:
            order = orders[k]
            if order is None or cursors[k] >= self.batches_per_dataset[k]:
                order = orders[k] = self._order(self.sizes[k], generator)  # (re)shuffle when exhausted
                cursors[k] = 0
            start = cursors[k] * self.batch_size
            cursors[k] += 1
            yield k, [offsets[k] + i for i in order[start : start + self.batch_size]]

    def __iter__(self) -> Iterator[SeededBatch]:
        epoch, start = self._next_epoch, self._start
        self._next_epoch, self._start = epoch + 1, 0
        first = start * self.num_replicas  # global index of this rank's first batch to yield, less its rank
        for i, (_, batch) in enumerate(self._global_batches(epoch)):
            if i % self.num_replicas == self.rank and i >= first:
                yield SeededBatch(batch, sample_seeds(self.seed, epoch, i, len(batch)))

    def __repr__(self) -> str:
        return (
            f"MixedBatchSampler(sizes={self.sizes}, batch_size={self.batch_size}, "
            f"probabilities={[round(p, 4) for p in self.probabilities]}, batches_per_rank={len(self)}, "
            f"rank={self.rank}/{self.num_replicas})"
        )
