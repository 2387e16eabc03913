"""Reading a teacher cache: :class:`TeacherCache` (index, checks, shard access) and :class:`TeacherCacheLookup`.

The layout and the constants of the on-disk format are described in :mod:`d3epth.data.teacher_cache`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor
from torch.utils.data import Dataset

from d3epth.data.base import BaseDepthDataset
from d3epth.data.sample import FLIP_PAIRS, Sample
from d3epth.data.teacher_cache.fingerprint import dataset_signature
from d3epth.errors import TeacherCacheError

#: ``format`` value of ``index.json``.
CACHE_FORMAT = "d3epth-teacher-cache"
#: Version of the on-disk layout; a reader refuses other versions.
CACHE_VERSION = 1
#: Name of the index file inside a cache directory.
INDEX_FILE = "index.json"
#: Sample key of the cached target, and of the target of the mirrored image.
LATENT_KEY = "teacher_latent"
FLIPPED_LATENT_KEY = FLIP_PAIRS[LATENT_KEY]
#: Sample key of the cached one-step decoded depth (caches built ``--with-depth``), and of the mirrored image's.
DEPTH_KEY = "teacher_depth"
FLIPPED_DEPTH_KEY = FLIP_PAIRS[DEPTH_KEY]
#: Storage dtypes.
DTYPES: dict[str, torch.dtype] = {"float16": torch.float16, "float32": torch.float32}
#: How the cached targets are computed (recorded in the index, for people reading it).
TARGET_DESCRIPTION = (
    "LatentDistillationTask.teacher_targets: image padded bottom/right (replicate) to a multiple of the VAE factor, "
    "VAE posterior mean x scaling factor, one UNet step at t=999 (trailing) from a zero depth latent, x0"
)
#: Open shard handles kept per process.
_MAX_OPEN_SHARDS = 64


def _read_index(index_file: Path) -> dict[str, Any]:
    try:
        index = json.loads(index_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TeacherCacheError(f"teacher cache index {index_file} is unreadable: {err}") from err
    if not isinstance(index, dict) or index.get("format") != CACHE_FORMAT:
        raise TeacherCacheError(f"{index_file} is not a d3epth teacher cache index (no format '{CACHE_FORMAT}')")
    if index.get("version") != CACHE_VERSION:
        raise TeacherCacheError(
            f"{index_file}: teacher cache version {index.get('version')} is not supported (expected {CACHE_VERSION}); "
            "recompute it with tools/cache_teacher.py"
        )
    for key in ("teacher", "dtype", "sets"):
        if key not in index:
            raise TeacherCacheError(f"{index_file}: missing key '{key}'")
    return index


class TeacherCache:
    """Read access to a teacher cache directory written by ``tools/cache_teacher.py``.

    Picklable (DataLoader workers): open shard handles are per process and not pickled.

    Args:
        root: the cache directory (holding ``index.json``).

    Raises:
        FileNotFoundError: the directory or its ``index.json`` does not exist.
        TeacherCacheError: the index is unreadable, of another format or version.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"teacher cache directory {self.root} does not exist; create it with "
                f"`python tools/cache_teacher.py --config <stage1 config> --out {self.root}`"
            )
        self.index_file = self.root / INDEX_FILE
        if not self.index_file.is_file():
            raise FileNotFoundError(
                f"teacher cache {self.root} has no {INDEX_FILE} (an interrupted first run writes it after the first "
                "shard); run tools/cache_teacher.py on it"
            )
        self.index = _read_index(self.index_file)
        self.scale = int(self.index["teacher"].get("vae_scale_factor", 8))
        self.channels = int(self.index["teacher"].get("latent_channels", 4))
        self._handles: dict[str, Any] = {}

    # ------------------------------------------------------------------ description
    @property
    def teacher_source(self) -> Any:
        """The teacher source the cache was computed with (``model.init_args.teacher`` of that run)."""
        return self.index["teacher"].get("source")

    @property
    def fingerprint(self) -> str:
        """:func:`teacher_fingerprint` of the teacher the cache was computed with."""
        return str(self.index["teacher"].get("fingerprint"))

    @property
    def has_depth(self) -> bool:
        """Whether the cache also holds the decoded one-step depth (``teacher_depth``), stage 2's pseudo-label."""
        return "depth" in self.index.get("targets", ["latent"])

    @property
    def set_names(self) -> list[str]:
        """Training-set names with cached entries."""
        return list(self.index["sets"])

    def entries(self, set_name: str) -> dict[str, list[Any]]:
        """``{sample path: [shard file relative to the cache, H, W]}`` of one training set."""
        sets = self.index["sets"]
        if set_name not in sets:
            raise TeacherCacheError(
                f"teacher cache {self.index_file} has no training set '{set_name}' (it has {sorted(sets)}); "
                "rerun tools/cache_teacher.py with the config that defines it"
            )
        return sets[set_name]["entries"]

    def __repr__(self) -> str:
        sizes = {name: len(s["entries"]) for name, s in self.index["sets"].items()}
        return f"TeacherCache({str(self.root)!r}, sets={sizes}, dtype={self.index['dtype']})"

    # ------------------------------------------------------------------ checks
    def check_dataset(self, set_name: str, dataset: Dataset) -> None:
        """Check that ``dataset`` (training set ``set_name``) is the one the cache was computed for.

        Compares :func:`dataset_signature` and, for a :class:`~d3epth.data.base.BaseDepthDataset`, that every listed
        sample has an entry (a sample added to the split list after caching is reported here, not mid-epoch).

        Raises:
            TeacherCacheError: naming the index file, the set and what differs or is missing.
        """
        entries = self.entries(set_name)
        recorded = self.index["sets"][set_name].get("dataset", {})
        current = dataset_signature(dataset)
        differ = sorted(k for k in {*recorded, *current} if recorded.get(k) != current.get(k))
        if differ:
            details = "; ".join(f"{k}: cached {recorded.get(k)!r}, now {current.get(k)!r}" for k in differ)
            raise TeacherCacheError(
                f"teacher cache {self.index_file}: training set '{set_name}' is configured differently from when it "
                f"was cached ({details}); the cached latents belong to other images. Recompute the cache"
            )
        if isinstance(dataset, BaseDepthDataset):
            missing = [str(e["rel"]) for e in dataset.entries if str(e["rel"]) not in entries]
            if missing:
                raise TeacherCacheError(
                    f"teacher cache {self.index_file}: {len(missing)} of {len(dataset)} samples of training set "
                    f"'{set_name}' are not cached (e.g. {missing[:3]}); run tools/cache_teacher.py again to add them "
                    "(it skips the ones already cached)"
                )

    def check_teacher(self, fingerprint: str, source: Any = None) -> None:
        """Refuse a teacher other than the one the cache was computed with.

        Args:
            fingerprint: :func:`teacher_fingerprint` of the training run's teacher.
            source: that teacher's source, for the message.

        Raises:
            TeacherCacheError: the fingerprints differ.
        """
        if fingerprint != self.fingerprint:
            raise TeacherCacheError(
                f"teacher cache {self.index_file} was computed with teacher {self.teacher_source!r} "
                f"({self.fingerprint}), but the task's teacher {source!r} has fingerprint {fingerprint}; its latents "
                "are not this teacher's targets. Recompute the cache for this teacher (tools/cache_teacher.py) or "
                "point teacher_cache elsewhere"
            )

    # ------------------------------------------------------------------ reading
    def _handle(self, shard: str) -> Any:
        handle = self._handles.get(shard)
        if handle is None:
            path = self.root / shard
            if not path.is_file():
                raise FileNotFoundError(f"teacher cache shard {path} (listed in {self.index_file}) does not exist")
            if len(self._handles) >= _MAX_OPEN_SHARDS:
                self._handles.clear()
            handle = self._handles[shard] = safe_open(str(path), framework="pt")
        return handle

    def load(self, set_name: str, path: str, image_size: Sequence[int]) -> dict[str, Tensor]:
        """The cached targets of one sample: for the image and for its horizontal mirror.

        Args:
            set_name: training-set name (as in the datamodule).
            path: the sample's ``path`` key.
            image_size: ``(H, W)`` of the sample's image as the dataset returns it now, checked against the cache.

        Returns:
            Sample keys to float32 tensors: ``teacher_latent`` and ``teacher_latent_flipped``
            ``[C,ceil(H/f),ceil(W/f)]`` and, with :attr:`has_depth`, ``teacher_depth`` and ``teacher_depth_flipped``
            ``[1,H,W]``.

        Raises:
            TeacherCacheError: no entry for the sample, or it was cached at another image size.
            FileNotFoundError: the shard file is gone.
        """
        entry = self.entries(set_name).get(path)
        if entry is None:
            raise TeacherCacheError(
                f"teacher cache {self.index_file} has no entry for sample '{path}' of training set '{set_name}'; "
                "run tools/cache_teacher.py again to add it"
            )
        shard, height, width = entry[0], int(entry[1]), int(entry[2])
        size = (int(image_size[0]), int(image_size[1]))
        if size != (height, width):
            raise TeacherCacheError(
                f"teacher cache {self.root / shard}: sample '{path}' of training set '{set_name}' was cached for a "
                f"{height}x{width} image, but the dataset now returns {size[0]}x{size[1]} (resize changed?); "
                "recompute the cache"
            )
        handle = self._handle(shard)
        latent_shape = (self.channels, math.ceil(height / self.scale), math.ceil(width / self.scale))
        # stored suffix -> (sample key, shape)
        stored = {"latent": (LATENT_KEY, latent_shape), "latent_flipped": (FLIPPED_LATENT_KEY, latent_shape)}
        if self.has_depth:
            stored.update(depth=(DEPTH_KEY, (1, height, width)), depth_flipped=(FLIPPED_DEPTH_KEY, (1, height, width)))
        out = {}
        for suffix, (sample_key, expected) in stored.items():
            key = f"{path}#{suffix}"
            try:
                tensor = handle.get_tensor(key)
            except Exception as err:  # safetensors raises its own error type for a missing key
                raise TeacherCacheError(f"teacher cache shard {self.root / shard} has no tensor '{key}'") from err
            if tuple(tensor.shape) != expected:
                raise TeacherCacheError(
                    f"teacher cache shard {self.root / shard}: '{key}' has shape {tuple(tensor.shape)}, expected "
                    f"{expected} for a {height}x{width} image"
                )
            out[sample_key] = tensor.float()
        return out

    def lookup(self, set_name: str) -> TeacherCacheLookup:
        """The transform that adds one training set's cached targets to its samples."""
        self.entries(set_name)  # fail now for an unknown set
        return TeacherCacheLookup(self, set_name)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handles"] = {}  # safetensors handles do not pickle; each worker opens its own
        return state


class TeacherCacheLookup:
    """Transform: add ``teacher_latent`` and ``teacher_latent_flipped`` (and ``teacher_depth*``) from the cache.

    Runs before the flip augmentation, on the sample as its dataset returns it; :class:`~d3epth.data.transforms
    .HorizontalFlip` swaps the two when it mirrors the sample.

    Args:
        cache: the cache.
        set_name: the training set the samples come from.
    """

    def __init__(self, cache: TeacherCache, set_name: str) -> None:
        self.cache = cache
        self.set_name = set_name

    def __call__(self, sample: Sample) -> Sample:
        """Attach the cached targets of ``sample`` and of its mirror (``teacher_latent``, ``..._flipped``)."""
        if "path" not in sample or "image" not in sample:
            raise ValueError(f"teacher cache lookup needs the sample keys 'path' and 'image'; keys: {sorted(sample)}")
        return {**sample, **self.cache.load(self.set_name, str(sample["path"]), tuple(sample["image"].shape[-2:]))}

    def __repr__(self) -> str:
        return f"TeacherCacheLookup({str(self.cache.root)!r}, set_name={self.set_name!r})"
