"""``DepthDataModule``: named training sets mixed per batch, named validation / test sets, configurable loaders.

YAML (``class_path`` nodes nest; the datasets are built before the datamodule)::

    data:
      class_path: d3epth.data.DepthDataModule
      init_args:
        train:
          hypersim: {class_path: d3epth.data.HypersimDataset,
                     init_args: {root: sample_data/hypersim, split: train, resize: [480, 640]}}
          vkitti2: {class_path: d3epth.data.VirtualKITTI2Dataset, init_args: {root: sample_data/vkitti2}}
        train_probabilities: {hypersim: 0.9, vkitti2: 0.1}
        val:
          hypersim_val: {class_path: d3epth.data.HypersimDataset,
                         init_args: {root: sample_data/hypersim, split: val, resize: [480, 640]}}
          nyu: {class_path: d3epth.data.NYUv2Dataset, init_args: {root: sample_data/nyuv2}}
        batch_size: 2
        num_workers: 2
        teacher_cache: cache/stage1_teacher   # optional: stage-1 targets from tools/cache_teacher.py

Unlabeled training sets (``has_depth`` False, e.g. :class:`~d3epth.data.unlabeled.UnlabeledImageDataset`) mix
like the others; ``unlabeled_set_names`` names them, and each task decides what it does with their batches.

Training: every batch comes from one training set (:class:`~d3epth.data.sampler.MixedBatchSampler`), so sets of
different resolutions mix. Horizontal flip (``hflip_p``) and ``train_transforms`` are applied to training sets only,
before ``depth_norm`` is computed. With ``teacher_cache`` (see :mod:`d3epth.data.teacher_cache`) every training sample
also gets ``teacher_latent`` [4,⌈H/8⌉,⌈W/8⌉], the cached target of the image as flipped or not. Validation and test:
one ``DataLoader`` per named set, in the order given, not shuffled, not augmented; ``val_set_names`` /
``test_set_names`` name them (dataloader index i <-> name i).

Resume: the training loader is a :class:`~d3epth.data.resume.ResumableDataLoader`, so Lightning's checkpoints hold
its position in the epoch, and every training sample's random augmentation is seeded from its position in the
epoch's batch order (not from a worker's generator), so a run resumed from a mid-epoch checkpoint trains on exactly
the batches, flipped and cropped exactly as, the uninterrupted run (:mod:`d3epth.data.resume`).

DDP: the trainer must run with ``use_distributed_sampler: false`` (``configs/base.yaml`` sets it; the datamodule
raises otherwise). The training sampler then takes rank and world size from the attached trainer (else
``torch.distributed``, else 0/1) and gives each rank distinct batches. Validation/test sets are split across ranks
without padding (rank r reads samples r, r+W, ...), so every sample is evaluated exactly once; ranks may then run a
different number of evaluation steps, so evaluation steps must not call per-step collectives (log metric objects,
or ``self.log(..., on_step=False)``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from d3epth.data.base import BaseDepthDataset
from d3epth.data.faults import CheckedDataset, probe_valid_depth
from d3epth.data.hypersim import HypersimDataset
from d3epth.data.resume import ResumableDataLoader, SeededConcatDataset
from d3epth.data.sample import FLIP_PAIRS, Sample, collate_samples
from d3epth.data.sampler import MixedBatchSampler, default_rank_world
from d3epth.data.teacher_cache import TeacherCache, check_cacheable
from d3epth.data.transforms import Compose, HorizontalFlip, Transform
from d3epth.data.vkitti2 import VirtualKITTI2Dataset
from d3epth.errors import ConfigError

#: Marigold's training mix (``prob_ls: [0.9, 0.1]``), used when ``train_probabilities`` is not given and the
#: training sets are one Hypersim and one Virtual KITTI 2 set.
MARIGOLD_MIX: dict[type, float] = {HypersimDataset: 0.9, VirtualKITTI2Dataset: 0.1}


class AugmentedDataset(Dataset):
    """A depth dataset with a training augmentation applied before ``depth_norm`` is computed.

    For a :class:`~d3epth.data.base.BaseDepthDataset` the augmentation runs between its geometry and
    ``finalize`` (so a random crop changes the normalisation quantiles, as it should); for any other dataset it runs
    on the finished sample (fine for flips, which do not change the quantiles). The precomputed mirror-image partners
    of :data:`~d3epth.data.sample.FLIP_PAIRS` (the teacher cache's ``teacher_latent_flipped``) only serve the flip
    and are dropped from the returned sample.

    Args:
        dataset: the dataset to wrap.
        augment: a callable ``sample -> sample``.
    """

    def __init__(self, dataset: Dataset, augment: Transform) -> None:
        self.dataset = dataset
        self.augment = augment

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Sample:
        if isinstance(self.dataset, BaseDepthDataset):
            sample = self.dataset.get_sample(index, augment=self.augment)
        else:
            sample = self.augment(self.dataset[index])
        partners = FLIP_PAIRS.values()
        return {key: value for key, value in sample.items() if key not in partners}


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + W, rank + 2W, ...`` of ``n``: each sample on exactly one rank, no padding."""

    def __init__(self, n: int, rank: int, num_replicas: int) -> None:
        self.n, self.rank, self.num_replicas = n, rank, num_replicas

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.num_replicas))


def has_depth(dataset: Dataset) -> bool:
    """Whether a dataset's samples carry ground truth: its ``has_depth`` attribute (unlabeled sources set False)."""
    return bool(getattr(dataset, "has_depth", True))


def _check_sets(sets: Mapping[str, Dataset] | None, arg: str) -> dict[str, Dataset]:
    if sets is None:
        return {}
    if not isinstance(sets, Mapping):
        raise ConfigError(
            f"DepthDataModule: '{arg}' must map names to datasets (e.g. {{hypersim: <dataset>}}), "
            f"got {type(sets).__name__}"
        )
    out = {}
    for name, dataset in sets.items():
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise ConfigError(f"DepthDataModule: {arg}.{name} is {type(dataset).__name__}, not a map-style dataset")
        if len(dataset) == 0:
            raise ValueError(f"DepthDataModule: {arg}.{name} is empty")
        if arg != "train" and not has_depth(dataset):
            raise ValueError(
                f"DepthDataModule: {arg}.{name} is {type(dataset).__name__}, a source without depth; only training "
                "sets may be unlabeled (move it to data.init_args.train)"
            )
        out[str(name)] = dataset
    return out


class DepthDataModule(L.LightningDataModule):
    """Named depth datasets for training (mixed per batch), validation and test.

    Args:
        train: training sets by name (built dataset objects; in YAML, class nodes).
        val: validation sets by name; one dataloader each, in this order.
        test: test sets by name; one dataloader each, in this order.
        train_probabilities: per-name probability that a batch comes from that set (normalised); must name exactly
            the training sets. ``None``: Marigold's 0.9/0.1 for one Hypersim + one VKITTI set, a single set gets 1,
            anything else is proportional to the sets' numbers of batches (uniform over samples).
        batch_size: training batch size per process.
        val_batch_size: validation/test batch size (1 suits sets with varying frame sizes).
        num_workers: loader worker processes.
        pin_memory: pin host memory; ``None`` = when CUDA is available.
        persistent_workers: keep workers between epochs (forced off with ``num_workers=0``).
        prefetch_factor: batches prefetched per worker (ignored with ``num_workers=0``).
        epoch_length: training batches per epoch over all ranks; ``None`` = all batches of all training sets.
        hflip_p: horizontal-flip probability for training samples (Marigold: 0.5; 0 disables).
        train_transforms: further joint transforms for training samples (e.g. ``RandomCrop``), after the flip.
        drop_last: drop each training set's last incomplete batch.
        seed: seed of the batch order and of the training augmentations (with the epoch and the batch's position),
            and of the worker RNGs (with the rank).
        teacher_cache: directory written by ``tools/cache_teacher.py``: training samples then carry the cached stage-1
            target ``teacher_latent`` (of the flipped image when flipped), and stage 1 does not run the teacher on
            them. Every training set must be cached, configured as when cached, and without ``train_transforms``;
            the task that consumes the targets checks the teacher against the cache (stage 1 at ``fit``).
        skip_bad_samples: a training sample whose file is unreadable or corrupt, or that holds NaN/Inf, is replaced
            by the next good sample of its set (warned, counted as ``train/skipped_samples``) instead of stopping
            training with an error that names it (see :mod:`d3epth.data.faults`).

    Attributes:
        teacher_cache: the opened :class:`~d3epth.data.teacher_cache.TeacherCache`, or ``None``; read-only.
    """

    def __init__(
        self,
        train: Mapping[str, Dataset] | None = None,
        val: Mapping[str, Dataset] | None = None,
        test: Mapping[str, Dataset] | None = None,
        train_probabilities: Mapping[str, float] | None = None,
        batch_size: int = 2,
        val_batch_size: int = 1,
        num_workers: int = 2,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        prefetch_factor: int | None = 2,
        epoch_length: int | None = None,
        hflip_p: float = 0.5,
        train_transforms: Sequence[Transform] | None = None,
        drop_last: bool = True,
        seed: int = 2024,
        teacher_cache: str | None = None,
        skip_bad_samples: bool = False,
    ) -> None:
        super().__init__()
        self.skip_bad_samples = bool(skip_bad_samples)
        self._probed = False
        self.train_sets = _check_sets(train, "train")
        self.val_sets = _check_sets(val, "val")
        self.test_sets = _check_sets(test, "test")
        for key, value in (("batch_size", batch_size), ("val_batch_size", val_batch_size)):
            if value < 1:
                raise ConfigError(f"data.init_args.{key}: must be >= 1, got {value}")
        if num_workers < 0:
            raise ValueError(f"DepthDataModule: num_workers must be >= 0, got {num_workers}")
        self.batch_size = int(batch_size)
        self.val_batch_size = int(val_batch_size)
        self.num_workers = int(num_workers)
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        self.persistent_workers = bool(persistent_workers) and self.num_workers > 0
        self.prefetch_factor = prefetch_factor if self.num_workers > 0 else None
        self.epoch_length = epoch_length
        self.drop_last = bool(drop_last)
        self.seed = int(seed)
        self.train_probabilities = self._resolve_probabilities(train_probabilities)
        self.hflip_p = float(hflip_p)
        self.train_transforms: list[Transform] = list(train_transforms or [])
        augments: list[Transform] = [HorizontalFlip(hflip_p)] if hflip_p > 0 else []
        augments.extend(self.train_transforms)
        self.train_augment: Transform | None = Compose(augments) if augments else None
        self._teacher_cache: TeacherCache | None = None
        if teacher_cache is not None:
            check_cacheable(self.train_sets, self.train_transforms)
            self._teacher_cache = TeacherCache(teacher_cache)
            for name, dataset in self.train_sets.items():
                self._teacher_cache.check_dataset(name, dataset)

    @property
    def teacher_cache(self) -> TeacherCache | None:
        """The teacher cache serving ``teacher_latent`` to the training samples, or ``None``."""
        return self._teacher_cache

    # ------------------------------------------------------------------ names

    @property
    def train_set_names(self) -> list[str]:
        """Names of the training sets, in ConcatDataset order."""
        return list(self.train_sets)

    @property
    def unlabeled_set_names(self) -> list[str]:
        """Names of the training sets without ground truth (``has_depth`` False, e.g. ``UnlabeledImageDataset``)."""
        return [name for name, dataset in self.train_sets.items() if not has_depth(dataset)]

    @property
    def val_set_names(self) -> list[str]:
        """Names of the validation sets; ``val_dataloader()[i]`` reads ``val_set_names[i]``."""
        return list(self.val_sets)

    @property
    def test_set_names(self) -> list[str]:
        """Names of the test sets; ``test_dataloader()[i]`` reads ``test_set_names[i]``."""
        return list(self.test_sets)

    # ------------------------------------------------------------------ helpers

    def _resolve_probabilities(self, given: Mapping[str, float] | None) -> dict[str, float]:
        names = list(self.train_sets)
        if not names:
            if given:
                raise ValueError("DepthDataModule: train_probabilities given but no train sets")
            return {}
        if given is not None:
            unknown = sorted(set(given) - set(names))
            missing = sorted(set(names) - set(given))
            if unknown or missing:
                raise ValueError(
                    f"DepthDataModule: train_probabilities keys {sorted(given)} must be the train set names {names}"
                    + (f"; unknown: {unknown}" if unknown else "")
                    + (f"; missing: {missing}" if missing else "")
                )
            probs = {name: float(given[name]) for name in names}
            if any(p < 0 for p in probs.values()) or sum(probs.values()) <= 0:
                raise ValueError(f"DepthDataModule: train_probabilities must be >= 0 with a positive sum, got {probs}")
        elif len(names) == 1:
            probs = {names[0]: 1.0}
        elif sorted(type(d).__name__ for d in self.train_sets.values()) == sorted(c.__name__ for c in MARIGOLD_MIX):
            probs = {name: MARIGOLD_MIX[type(d)] for name, d in self.train_sets.items()}
        else:
            probs = {name: float(len(d) // self.batch_size) for name, d in self.train_sets.items()}  # type: ignore
        total = sum(probs.values())
        return {name: p / total for name, p in probs.items()}

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is not None:
            return int(trainer.global_rank), int(trainer.world_size)
        return default_rank_world()

    def _check_trainer(self) -> None:
        """Refuse a distributed trainer that would inject its own DistributedSampler."""
        trainer = self.trainer
        if trainer is None or int(getattr(trainer, "world_size", 1)) <= 1:
            return
        connector = getattr(trainer, "_accelerator_connector", None)
        if connector is not None and getattr(connector, "use_distributed_sampler", False):
            raise ConfigError(
                "DepthDataModule: the trainer runs distributed with use_distributed_sampler=True, which would replace "
                "the rank-aware mixed batch sampler; set trainer.use_distributed_sampler: false"
            )

    def _loader_kwargs(self, rank: int) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "num_workers": self.num_workers,
            "pin_memory": self.pin_memory,
            "persistent_workers": self.persistent_workers,
            "collate_fn": collate_samples,
            # Seeds the workers' RNGs, distinct per rank. The training augmentations do not draw from them: each
            # training sample is loaded under its own seed (d3epth.data.resume), which survives a resume.
            "generator": torch.Generator().manual_seed(self.seed * 1000 + rank),
        }
        if self.num_workers > 0 and self.prefetch_factor is not None:
            kwargs["prefetch_factor"] = self.prefetch_factor
        return kwargs

    def train_sampler(self) -> MixedBatchSampler:
        """The training batch sampler for this process's rank."""
        rank, world = self._rank_world()
        return MixedBatchSampler(
            [len(d) for d in self.train_sets.values()],  # type: ignore[arg-type]
            batch_size=self.batch_size,
            probabilities=[self.train_probabilities[name] for name in self.train_sets],
            epoch_length=self.epoch_length,
            drop_last=self.drop_last,
            shuffle=True,
            seed=self.seed,
            num_replicas=world,
            rank=rank,
        )

    def _augment_for(self, name: str) -> Transform | None:
        """Training-time transform of set ``name``: cache lookup (before the flip, which swaps), then augmentation."""
        if self._teacher_cache is None:
            return self.train_augment
        lookup = self._teacher_cache.lookup(name)
        return Compose([lookup, self.train_augment]) if self.train_augment is not None else lookup

    def train_dataset(self) -> SeededConcatDataset:
        """The training sets (augmented, checked), concatenated in ``train_set_names`` order.

        A batch of :meth:`train_sampler` loads each of its samples under the sample's seed.
        """
        sets: list[Dataset] = []
        for name, dataset in self.train_sets.items():
            augment = self._augment_for(name)
            augmented = AugmentedDataset(dataset, augment) if augment is not None else dataset
            sets.append(CheckedDataset(augmented, name, self.skip_bad_samples))
        return SeededConcatDataset(sets)

    def _eval_loaders(self, sets: dict[str, Dataset]) -> list[DataLoader]:
        rank, world = self._rank_world()
        loaders = []
        for name, dataset in sets.items():
            size = len(dataset)  # type: ignore[arg-type]
            if size < world:
                # A process without a batch skips the evaluation loop, and the others wait for it in the metric sync.
                raise ConfigError(
                    f"DepthDataModule: evaluation set {name} has {size} sample(s) for {world} processes; "
                    "each process needs at least one: add samples or run on fewer devices"
                )
            sampler = ShardSampler(size, rank, world) if world > 1 else None
            loaders.append(
                DataLoader(
                    dataset,
                    batch_size=self.val_batch_size,
                    shuffle=False,
                    sampler=sampler,
                    drop_last=False,
                    **self._loader_kwargs(rank),
                )
            )
        return loaders

    # ------------------------------------------------------------------ Lightning hooks

    def setup(self, stage: str | None = None) -> None:
        """For ``fit``, once: refuse a labelled training set without a valid depth pixel.

        A bounded probe, see :func:`~d3epth.data.faults.probe_valid_depth`.

        Raises:
            DataError: naming the set (or a bad file met while probing, unless ``skip_bad_samples``).
        """
        if stage not in ("fit", None) or self._probed:
            return
        for name, dataset in self.train_sets.items():
            if has_depth(dataset):
                probe_valid_depth(CheckedDataset(dataset, name, self.skip_bad_samples))
        self._probed = True

    def train_dataloader(self) -> ResumableDataLoader:
        """One loader over all training sets, batches from :meth:`train_sampler`; resumable mid-epoch."""
        if not self.train_sets:
            raise ValueError("DepthDataModule: no training sets configured (data.init_args.train)")
        self._check_trainer()
        rank, _ = self._rank_world()
        return ResumableDataLoader(
            self.train_dataset(), batch_sampler=self.train_sampler(), **self._loader_kwargs(rank)
        )

    def val_dataloader(self) -> list[DataLoader]:
        """One loader per validation set, in ``val_set_names`` order (empty list: no validation)."""
        return self._eval_loaders(self.val_sets)

    def test_dataloader(self) -> list[DataLoader]:
        """One loader per test set, in ``test_set_names`` order."""
        if not self.test_sets:
            raise ValueError("DepthDataModule: no test sets configured (data.init_args.test)")
        return self._eval_loaders(self.test_sets)

    def __repr__(self) -> str:
        return (
            f"DepthDataModule(train={ {k: len(v) for k, v in self.train_sets.items()} }, "  # type: ignore[arg-type]
            f"probabilities={self.train_probabilities}, val={self.val_set_names}, test={self.test_set_names}, "
            f"batch_size={self.batch_size}, num_workers={self.num_workers})"
        )
