"""Writing a teacher cache: :class:`TeacherCacheWriter` (index and shards, atomically) and :func:`fill_cache`.

:func:`fill_cache` is the loop of ``tools/cache_teacher.py``: every training sample not cached yet, and its mirror,
through the frozen teacher in batches, one shard at a time.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from d3epth.data.base import BaseDepthDataset
from d3epth.data.teacher_cache.fingerprint import dataset_signature
from d3epth.data.teacher_cache.read import (
    CACHE_FORMAT,
    CACHE_VERSION,
    DTYPES,
    INDEX_FILE,
    TARGET_DESCRIPTION,
    _read_index,
)
from d3epth.errors import TeacherCacheError


class CacheImageSource(Dataset):
    """``(image [3,H,W], path)`` of chosen samples of a dataset, as the dataset returns them before augmentation.

    What ``tools/cache_teacher.py`` feeds the teacher: for a :class:`~d3epth.data.base.BaseDepthDataset`, ``load`` +
    the dataset's own transforms (what ``get_sample`` does before augmenting); any other dataset is indexed as is.

    Args:
        dataset: a training set.
        indices: the samples to serve (those not cached yet).
    """

    def __init__(self, dataset: Dataset, indices: list[int]) -> None:
        self.dataset = dataset
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Tensor, str]:
        index = self.indices[i]
        if isinstance(self.dataset, BaseDepthDataset):
            # load + the dataset's own transforms is what get_sample does before augmenting; finalize (depth_norm)
            # does not touch the image and is skipped.
            sample = self.dataset.load(index)
            if self.dataset.transforms is not None:
                sample = self.dataset.transforms(sample)
        else:
            sample = self.dataset[index]
        return sample["image"], str(sample["path"])


@torch.no_grad()
def teacher_latents(teacher: Any, images: Tensor) -> Tensor:
    """The stage-1 target of each image, as :meth:`LatentDistillationTask.teacher_targets` computes it.

    Both call :meth:`~d3epth.models.teacher.DiffusionDepthTeacher.one_step`.

    Args:
        teacher: a frozen :class:`~d3epth.models.teacher.DiffusionDepthTeacher`.
        images: ``[B,3,H,W]`` in [-1, 1].

    Returns:
        float32 ``[B,4,ceil(H/f),ceil(W/f)]``.
    """
    return teacher.one_step(images).latent.float()


def _atomic_write_text(path: Path, text: str) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        tmp.write(text)
        tmp_name = tmp.name
    os.replace(tmp_name, path)


class TeacherCacheWriter:
    """Create or extend a teacher cache directory; used by ``tools/cache_teacher.py``.

    An existing cache is extended only if it was written for the same teacher fingerprint and storage dtype, and for
    identically configured sets (:func:`dataset_signature`); anything else is refused rather than mixed.

    Args:
        root: cache directory (created if needed).
        teacher: ``{"source": ..., "fingerprint": ..., "vae_scale_factor": f, "latent_channels": C}``.
        dtype: storage dtype name, ``"float16"`` or ``"float32"``.
        d3epth_version: written into the index.
        with_depth: also store the decoded one-step depth (``teacher_depth``, [1,H,W] per flip state: stage 2's
            pseudo-label; 2·H·W values per sample instead of the latent's 8·H·W/64).

    Raises:
        TeacherCacheError: ``root`` holds a cache for another teacher or dtype, or something that is not a cache.
    """

    def __init__(
        self, root: str | Path, teacher: Mapping[str, Any], dtype: str, d3epth_version: str, with_depth: bool = False
    ) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"teacher cache dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        self.root = Path(root).expanduser()
        self.index_file = self.root / INDEX_FILE
        self.dtype = dtype
        if self.index_file.is_file():
            index = _read_index(self.index_file)
            if index["teacher"].get("fingerprint") != teacher["fingerprint"]:
                raise TeacherCacheError(
                    f"{self.index_file} holds targets of teacher {index['teacher'].get('source')!r} "
                    f"({index['teacher'].get('fingerprint')}), not of {teacher.get('source')!r} "
                    f"({teacher['fingerprint']}); choose another --out or delete {self.root}"
                )
            targets = ["latent", "depth"] if with_depth else ["latent"]
            if index.get("targets", ["latent"]) != targets:
                raise TeacherCacheError(
                    f"{self.index_file} stores {index.get('targets', ['latent'])}, not {targets}; "
                    f"{'drop' if not with_depth else 'add'} --with-depth to extend it, or use another --out"
                )
            if index["dtype"] != dtype:
                raise TeacherCacheError(
                    f"{self.index_file} stores {index['dtype']}, not {dtype}; use --dtype {index['dtype']} to extend "
                    f"it, or another --out"
                )
            index["teacher"]["source"] = teacher.get("source", index["teacher"].get("source"))
            index["d3epth_version"] = d3epth_version
        else:
            if self.root.exists() and (not self.root.is_dir() or any(self.root.iterdir())):
                raise TeacherCacheError(
                    f"{self.root} exists and is not a teacher cache (no {INDEX_FILE}); choose an empty or new --out"
                )
            self.root.mkdir(parents=True, exist_ok=True)
            index = {
                "format": CACHE_FORMAT,
                "version": CACHE_VERSION,
                "d3epth_version": d3epth_version,
                "teacher": dict(teacher),
                "dtype": dtype,
                "target": TARGET_DESCRIPTION,
                "targets": ["latent", "depth"] if with_depth else ["latent"],
                "sets": {},
            }
        self.index = index
        self.with_depth = "depth" in index["targets"]

    def begin_set(self, set_name: str, dataset: Dataset) -> set[str]:
        """Register a training set (or check it against the cached one); returns the sample paths already cached."""
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", set_name) or set_name in (".", ".."):
            raise ValueError(f"training set name {set_name!r} cannot name a cache folder; use letters, digits, _ . -")
        signature = dataset_signature(dataset)
        sets = self.index["sets"]
        if set_name in sets:
            recorded = sets[set_name].get("dataset", {})
            if recorded != signature:
                raise TeacherCacheError(
                    f"{self.index_file}: training set '{set_name}' was cached as {recorded}, now it is {signature}; "
                    "its cached latents would belong to other images. Use another --out"
                )
        else:
            sets[set_name] = {"dataset": signature, "entries": {}}
        return set(sets[set_name]["entries"])

    def write_shard(
        self,
        set_name: str,
        paths: Sequence[str],
        sizes: Sequence[tuple[int, int]],
        latents: Iterable[Tensor],
        flipped: Iterable[Tensor],
        depths: Sequence[Tensor] = (),
        depths_flipped: Sequence[Tensor] = (),
    ) -> Path:
        """Write one shard (atomically), then record its samples in the index (atomically).

        Args:
            set_name: a set registered with :meth:`begin_set`.
            paths: sample paths.
            sizes: ``(H, W)`` of each sample's image.
            latents: target of each image, ``[C,h,w]``.
            flipped: target of each mirrored image, ``[C,h,w]``.
            depths: with ``with_depth``, the decoded one-step depth of each image, ``[1,H,W]``.
            depths_flipped: with ``with_depth``, that of each mirrored image, ``[1,H,W]``.

        Returns:
            The shard file.
        """
        folder = self.root / set_name
        folder.mkdir(parents=True, exist_ok=True)
        # Next free number on disk, so a shard written before a crash (but not yet indexed) is never overwritten by
        # a shard with other samples while the index still could point at it.
        numbers = [
            int(m.group(1)) for p in folder.iterdir() if (m := re.fullmatch(r"shard_(\d+)\.safetensors", p.name))
        ]
        shard = folder / f"shard_{max(numbers, default=-1) + 1:05d}.safetensors"
        dtype = DTYPES[self.dtype]
        tensors: dict[str, Tensor] = {}
        columns = {"latent": list(latents), "latent_flipped": list(flipped)}
        if self.with_depth:
            columns.update(depth=list(depths), depth_flipped=list(depths_flipped))
        for suffix, values in columns.items():
            if len(values) != len(paths):
                raise ValueError(f"write_shard: {len(paths)} paths but {len(values)} '{suffix}' tensors")
            for path, value in zip(paths, values, strict=True):
                tensors[f"{path}#{suffix}"] = value.detach().to("cpu", dtype).contiguous()
        tmp = shard.with_name(f".{shard.name}.tmp")
        save_file(tensors, str(tmp), metadata={"format": CACHE_FORMAT, "set": set_name})
        os.replace(tmp, shard)
        relative = shard.relative_to(self.root).as_posix()
        entries = self.index["sets"][set_name]["entries"]
        for path, (height, width) in zip(paths, sizes, strict=True):
            entries[path] = [relative, int(height), int(width)]
        _atomic_write_text(self.index_file, json.dumps(self.index, indent=1))
        return shard

    def flush_index(self) -> None:
        """Write the index (e.g. after registering sets with nothing left to compute)."""
        _atomic_write_text(self.index_file, json.dumps(self.index, indent=1))


def _batches(loader: DataLoader, batch_size: int, done: set[str]) -> Iterator[tuple[list[str], Tensor]]:
    """Group the loader's samples into batches of equal image size, skipping cached paths."""
    paths: list[str] = []
    images: list[Tensor] = []
    for image, path in loader:
        if path in done:
            continue
        if images and image.shape != images[0].shape:
            yield paths, torch.stack(images)
            paths, images = [], []
        paths.append(path)
        images.append(image)
        if len(images) == batch_size:
            yield paths, torch.stack(images)
            paths, images = [], []
    if images:
        yield paths, torch.stack(images)


def fill_cache(
    writer: TeacherCacheWriter,
    train_sets: Mapping[str, Dataset],
    teacher: Any,
    device: torch.device,
    batch_size: int = 4,
    shard_size: int = 256,
    num_workers: int = 2,
    progress: bool = True,
) -> tuple[int, int]:
    """Compute and store the targets of every training sample not cached yet, set by set, shard by shard.

    For each set: register it with the writer (checking it against the cached one), skip the samples already cached,
    and run the teacher once per batch on the images and their mirrors (:func:`teacher_latents`); every
    ``shard_size`` samples a shard and the index are written, so an interrupted run loses at most one shard.

    Args:
        writer: the cache being written.
        train_sets: the datamodule's training sets, by name.
        teacher: the frozen teacher, already on ``device``.
        device: where the images go.
        batch_size: samples per teacher call (the teacher sees twice as many images).
        shard_size: samples per shard file.
        num_workers: DataLoader workers decoding the images.
        progress: show a progress bar per set.

    Returns:
        ``(computed, skipped)``: samples computed now and samples that were cached already.

    Raises:
        TeacherCacheError: a set is cached with another configuration, or its name cannot name a cache folder.
    """
    computed = skipped = 0
    for set_name, dataset in train_sets.items():
        try:
            done = writer.begin_set(set_name, dataset)
        except TeacherCacheError:
            raise
        except ValueError as err:
            raise TeacherCacheError(str(err)) from err
        if isinstance(dataset, BaseDepthDataset):  # paths known without decoding: skip cached samples up front
            indices = [i for i, e in enumerate(dataset.entries) if str(e["rel"]) not in done]
        else:
            indices = list(range(len(dataset)))  # type: ignore[arg-type]
        skipped += len(dataset) - len(indices)  # type: ignore[arg-type]
        writer.flush_index()
        if not indices:
            continue
        loader = DataLoader(
            CacheImageSource(dataset, indices),
            batch_size=None,
            num_workers=num_workers,
            pin_memory=device.type == "cuda",
        )
        shard: dict[str, list[Any]] = {
            "paths": [],
            "sizes": [],
            "latents": [],
            "flipped": [],
            "depths": [],
            "depths_flipped": [],
        }
        with tqdm(total=len(indices), desc=f"teacher cache: {set_name}", disable=not progress, unit="img") as bar:
            for paths, images in _batches(loader, batch_size, done):
                images = images.to(device, non_blocking=True)
                # One teacher call for the images and their mirrors; the mirror is padded after flipping, exactly as
                # stage 1 pads a flipped training image.
                latents = teacher_latents(teacher, torch.cat([images, images.flip(-1)]))
                n = len(paths)
                if writer.with_depth:
                    depths = teacher.decode_depth(latents, images.shape[-2:]).float().cpu()
                    shard["depths"].extend(depths[:n].unbind(0))
                    shard["depths_flipped"].extend(depths[n:].unbind(0))
                latents = latents.cpu()
                shard["paths"].extend(paths)
                shard["sizes"].extend([tuple(images.shape[-2:])] * n)
                shard["latents"].extend(latents[:n].unbind(0))
                shard["flipped"].extend(latents[n:].unbind(0))
                computed += n
                bar.update(n)
                if len(shard["paths"]) >= shard_size:
                    writer.write_shard(set_name, **shard)
                    shard = {key: [] for key in shard}
            if shard["paths"]:
                writer.write_shard(set_name, **shard)
    return computed, skipped
