"""Exact mid-epoch resume of the training data: a stateful loader and augmentations seeded by their batch position.

**What Lightning does** (2.6): when it writes a checkpoint, ``FitLoop.on_save_checkpoint`` stores
``loader.state_dict()`` of every training loader that has ``state_dict`` *and* ``load_state_dict`` (the
``lightning.fabric.utilities.types._Stateful`` protocol; ``CombinedLoader._state_dicts``) under
``loops.fit_loop.state_dict.combined_loader``. On ``fit(ckpt_path=...)`` it hands the state back through
``loader.load_state_dict`` in ``FitLoop.setup_data``, before it first calls ``iter()`` on the loader, and expects the
loader to yield only the batches the interrupted epoch had left (it does not skip any itself; it counts the ones
already done from its restored progress). A plain ``DataLoader`` is not stateful: Lightning then restarts the
epoch's batch order from the beginning and warns "your dataloader is not resumable". The state of a sampler, a
dataset or a worker is not saved by Lightning unless the loader's own ``state_dict`` includes it (torchdata's
``StatefulDataLoader`` is such a loader; it is not needed here). Lightning's checkpoint does not hold any RNG state.
See https://lightning.ai/docs/pytorch/stable/common/checkpointing_intermediate.html and the sources named above.

**What is saved here.** :class:`ResumableDataLoader` is stateful: its state is the sampler epoch and the number of
batches the loader has *handed to the training loop* in it (not the number the sampler has produced: worker
processes prefetch ``num_workers * prefetch_factor`` batches ahead). A checkpoint written after step ``k`` (e.g. by
``ModelCheckpoint(every_n_train_steps=...)`` in ``on_train_batch_end``) thus records ``k`` batches consumed, and
the resumed epoch continues with batch ``k + 1``.

**Random augmentations** (flip, crop, anything a dataset draws from torch's, numpy's or Python's global generator)
get a seed per sample derived from ``(seed, epoch, global batch index, slot in the batch)``
(:func:`sample_seeds`), carried by the batch of indices itself (:class:`SeededBatch`) and applied by
:class:`SeededConcatDataset` around each sample's loading. The draws therefore depend neither on how many batches
came before in this process, nor on the number of workers or which worker loads a batch, and a resumed run draws
exactly what the uninterrupted one drew; nothing but the two integers above needs saving.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader

from d3epth.data.sample import Sample
from d3epth.utils.seeding import derive_seed

__all__ = ["ResumableDataLoader", "SeededBatch", "SeededConcatDataset", "sample_seeds", "seeded_rngs"]


def sample_seeds(seed: int, epoch: int, batch: int, n: int) -> list[int]:
    """The ``n`` per-sample augmentation seeds of global batch ``batch`` of ``epoch``.

    Args:
        seed: base seed (the datamodule's ``seed``).
        epoch: epoch of the batch order.
        batch: index of the batch in the epoch's global (all-ranks) batch sequence.
        n: batch size.

    Returns:
        ``n`` integers in ``[0, 2**63)``: :func:`~d3epth.utils.seeding.derive_seed` of ``(epoch, batch, slot)``.
    """
    return [derive_seed(seed, epoch, batch, slot) for slot in range(n)]


class SeededBatch(list):
    """A batch of dataset indices (a ``list[int]``) with one augmentation seed per index.

    It pickles with its seeds, so it reaches DataLoader worker processes unchanged, and compares equal to the plain
    list of its indices.

    Args:
        indices: dataset indices.
        seeds: one seed per index (:func:`sample_seeds`).
    """

    def __init__(self, indices: Sequence[int], seeds: Sequence[int]) -> None:
        super().__init__(indices)
        if len(seeds) != len(self):
            raise ValueError(f"SeededBatch: {len(seeds)} seeds for {len(self)} indices")
        self.seeds = list(seeds)


@contextmanager
def seeded_rngs(seed: int) -> Iterator[None]:
    """Seed torch's (CPU), numpy's and Python's global generators with ``seed`` inside the block; restore them after.

    Restoring keeps data loading from consuming the global streams the training step may use (with
    ``num_workers=0`` the loader runs in the training process).

    Args:
        seed: integer in ``[0, 2**63)``.
    """
    torch_state = torch.random.get_rng_state()
    numpy_state = np.random.get_state()
    python_state = random.getstate()
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)  # numpy's legacy seed is 32-bit
    random.seed(seed)
    try:
        yield
    finally:
        torch.random.set_rng_state(torch_state)
        np.random.set_state(numpy_state)
        random.setstate(python_state)


class SeededConcatDataset(ConcatDataset):
    """``ConcatDataset`` that loads the samples of a :class:`SeededBatch` each under its own seed.

    ``DataLoader`` fetches a whole batch through ``dataset.__getitems__(batch)`` when the dataset has it
    (``torch.utils.data._utils.fetch._MapDatasetFetcher``), in the main process or in a worker; that is where the
    batch's seeds are applied (:func:`seeded_rngs`). A plain list of indices, or ``dataset[i]``, loads unseeded.
    """

    def __getitems__(self, indices: Sequence[int]) -> list[Sample]:
        """The samples of ``indices``, each loaded under its seed when ``indices`` is a :class:`SeededBatch`."""
        seeds = getattr(indices, "seeds", None)
        if seeds is None:
            return [self[i] for i in indices]
        samples = []
        for index, seed in zip(indices, seeds, strict=True):
            with seeded_rngs(seed):
                samples.append(self[index])
        return samples


class ResumableBatchSampler(Protocol):
    """What :class:`ResumableDataLoader` needs of its batch sampler (``MixedBatchSampler`` has it)."""

    def position(self) -> tuple[int, int]:
        """``(epoch, first batch)`` the next ``iter()`` will use."""
        ...

    def resume(self, epoch: int, start: int) -> None:
        """Make the next ``iter()`` run ``epoch`` from its local batch ``start``."""
        ...


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` whose position in the epoch Lightning saves in checkpoints and restores on resume.

    The batch sampler must provide ``position()`` and ``resume(epoch, start)`` (:class:`ResumableBatchSampler`).
    The loader counts the batches it has yielded in the current epoch; :meth:`state_dict` reports them, and
    :meth:`load_state_dict` makes the next iteration start after them.

    ``iter()`` is lazy: the underlying iterator (and the worker processes) start at the first ``next()``. Lightning
    calls ``iter()`` in ``FitLoop.setup_data`` and only then ``set_epoch`` (``FitLoop.on_advance_start``); starting
    late makes the sampler see that epoch, with or without workers, rather than the one it had at ``iter()``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for method in ("position", "resume"):
            if not callable(getattr(self.batch_sampler, method, None)):
                raise TypeError(
                    f"ResumableDataLoader: the batch sampler {type(self.batch_sampler).__name__} has no {method}()"
                )
        self._epoch, self._yielded = self.batch_sampler.position()  # type: ignore[union-attr]

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        """Yield the epoch's (remaining) batches, counting them."""
        self._epoch, self._yielded = self.batch_sampler.position()  # type: ignore[union-attr]
        for batch in super().__iter__():
            self._yielded += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """``{"epoch": sampler epoch, "batches": batches yielded in it}``: where the training loop stands."""
        return {"epoch": self._epoch, "batches": self._yielded}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Continue epoch ``state_dict["epoch"]`` after its first ``state_dict["batches"]`` batches.

        If Lightning then starts another epoch (the checkpoint was written at the end of one), its ``set_epoch``
        drops this position.
        """
        self.batch_sampler.resume(int(state_dict["epoch"]), int(state_dict["batches"]))  # type: ignore[union-attr]
        self._epoch, self._yielded = self.batch_sampler.position()  # type: ignore[union-attr]
