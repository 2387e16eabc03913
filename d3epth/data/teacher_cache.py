"""On-disk cache of the teacher's stage-1 targets, so stage 1 need not run the diffusion teacher every step.

``tools/cache_teacher.py`` computes, for every sample of every training set, the frozen teacher's one-step depth
latent (exactly :meth:`~d3epth.tasks.stage1.LatentDistillationTask.teacher_targets`: the image padded bottom/right to
a multiple of the VAE factor, encoded, one UNet step at t = 999) for the image *and for its horizontal mirror*, and
writes them here. ``DepthDataModule(teacher_cache=DIR)`` then serves them as the sample key ``teacher_latent``.

Layout of a cache directory::

    DIR/index.json                        # what was cached, by whom, and where each sample's latents are
    DIR/<set name>/shard_00000.safetensors  # up to --shard-size samples; for sample path P the tensors
                                          #   "P#latent" and "P#latent_flipped", each [C, ceil(H/f), ceil(W/f)]

``index.json``::

    {"format": "d3epth-teacher-cache", "version": 1, "d3epth_version": "0.1.0",
     "teacher": {"source": <model.init_args.teacher>, "fingerprint": "sha256:...", "vae_scale_factor": 8,
                 "latent_channels": 4},
     "dtype": "float16", "target": "...",
     "sets": {"hypersim": {"dataset": {<what decides the image: class, resize, interpolation, crop, transforms>},
                           "entries": {"<sample path>": ["hypersim/shard_00000.safetensors", H, W], ...}}}}

Entries are keyed by (training-set name in the datamodule, the sample's ``path``), so the cache does not depend on the
order of the split list. Shards and the index are written atomically (temporary file, then rename), the index after
every shard, so an interrupted run loses at most one shard of work and a rerun skips every sample already listed.

Storage is float16 by default: rounding to the nearest fp16 value changes each latent element by at most
2**-11 (0.049 %) of its magnitude (unit round-off; SD-VAE depth latents lie within about ±5, so by < 2.5e-3 absolute),
far below the student's regression error; ``--dtype float32`` stores the targets exactly.

Flip: the teacher is not flip-equivariant, so the target of a mirrored training image is the teacher's output for
the mirrored image, not the mirror of its output. The cache therefore supplies both (``teacher_latent`` and
``teacher_latent_flipped``, see :data:`~d3epth.data.sample.FLIP_PAIRS`), :class:`~d3epth.data.transforms
.HorizontalFlip` swaps them when it mirrors the sample, and :class:`~d3epth.data.datamodule.AugmentedDataset` drops
the unused one afterwards.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn
from torch.utils.data import Dataset

from d3epth.data.base import BaseDepthDataset
from d3epth.data.sample import FLIP_PAIRS, Sample
from d3epth.data.transforms import Compose, HorizontalFlip, RandomCrop, Transform
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
#: Storage dtypes.
DTYPES: dict[str, torch.dtype] = {"float16": torch.float16, "float32": torch.float32}
#: How the cached targets are computed (recorded in the index, for people reading it).
TARGET_DESCRIPTION = (
    "LatentDistillationTask.teacher_targets: image padded bottom/right (replicate) to a multiple of the VAE factor, "
    "VAE posterior mean x scaling factor, one UNet step at t=999 (trailing) from a zero depth latent, x0"
)
#: Open shard handles kept per process.
_MAX_OPEN_SHARDS = 64


# ----------------------------------------------------------------------------------------------------------------------
# Fingerprints and checks
# ----------------------------------------------------------------------------------------------------------------------


def teacher_fingerprint(teacher: nn.Module) -> str:
    """SHA-256 over everything that decides the teacher's outputs: weights, buffers and noise-schedule config.

    Hashes every parameter and buffer (name, dtype, shape, raw bytes; non-persistent buffers such as the empty-prompt
    embedding included) in module order, plus the ``scheduler`` config when the module has one (timestep spacing and
    zero-terminal-SNR change the one-step prediction). Independent of the device. About 2 s for an SD2-sized teacher.

    Args:
        teacher: the (frozen) teacher module.

    Returns:
        ``"sha256:<hex digest>"``.
    """
    digest = hashlib.sha256()
    tensors = [*teacher.named_parameters(remove_duplicate=False), *teacher.named_buffers(remove_duplicate=False)]
    for name, tensor in tensors:
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}|".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    scheduler = getattr(teacher, "scheduler", None)
    config = getattr(scheduler, "config", None)
    if config is not None:
        public = {k: v for k, v in dict(config).items() if not str(k).startswith("_")}
        digest.update(json.dumps(public, sort_keys=True, default=str).encode())
    return f"sha256:{digest.hexdigest()}"


def _describe(transform: Any) -> Any:
    """A stable description of a transform (``repr`` without memory addresses)."""
    if transform is None:
        return None
    if isinstance(transform, Compose):
        return [_describe(t) for t in transform.transforms]
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(transform))


def dataset_signature(dataset: Dataset) -> dict[str, Any]:
    """What, besides the files, decides the image a dataset returns: its class and deterministic geometry.

    Recorded per training set in the index and compared when the cache is used, so a cache written at another
    ``resize`` / interpolation / crop cannot silently serve latents of a different image.
    """
    signature: dict[str, Any] = {"class": type(dataset).__name__}
    if isinstance(dataset, BaseDepthDataset):
        resize = getattr(dataset, "_resize", None)
        signature.update(
            resize=None if dataset.resize is None else list(dataset.resize),
            image_interpolation=None if resize is None else resize.image_interpolation,
            antialias=None if resize is None else bool(resize.antialias),
            kb_crop=bool(dataset.kb_crop),
            transforms=_describe(dataset.transforms),
        )
    return signature


def _flatten(transform: Any) -> list[Any]:
    if transform is None:
        return []
    if isinstance(transform, Compose):
        return [t for inner in transform.transforms for t in _flatten(inner)]
    if isinstance(transform, list | tuple):
        return [t for inner in transform for t in _flatten(inner)]
    return [transform]


def check_cacheable(train_sets: Mapping[str, Dataset], train_transforms: Sequence[Transform] | None) -> None:
    """Refuse a training setup whose images would differ from the images the cached targets were computed for.

    The cache is computed on each sample as its dataset returns it (after the dataset's own, deterministic geometry)
    and on its mirror. So: no ``train_transforms`` at all (they run after the cache lookup; a ``RandomCrop`` in
    particular gives a different window every time), and no random transform in a dataset's own ``transforms``. The
    datamodule's ``hflip_p`` is fine: both flip states are cached.

    Raises:
        ValueError: naming the offending transform and where it is configured.
    """
    for transform in _flatten(list(train_transforms or [])):
        if isinstance(transform, RandomCrop):
            raise ValueError(
                f"teacher cache: train_transforms contains {transform!r}; a random crop shows the student a different "
                "window every step, which cached teacher latents (computed once on the whole image) cannot match. "
                "Remove the crop, or train without teacher_cache (the teacher then runs on the cropped image)"
            )
        raise ValueError(
            f"teacher cache: train_transforms contains {_describe(transform)}; with teacher_cache only the "
            "datamodule's hflip_p augmentation is supported, since the cached latents were computed on the "
            "untransformed image. Remove it, or train without teacher_cache"
        )
    for name, dataset in train_sets.items():
        for transform in _flatten(getattr(dataset, "transforms", None)):
            if isinstance(transform, RandomCrop) or (isinstance(transform, HorizontalFlip) and 0 < transform.p < 1):
                raise ValueError(
                    f"teacher cache: training set '{name}' has the random transform {transform!r} in its own "
                    "transforms; cached teacher latents need each sample's image to be the same every time "
                    "(use the datamodule's hflip_p for flips; remove random crops)"
                )


# ----------------------------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------------------------


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

    def load(self, set_name: str, path: str, image_size: Sequence[int]) -> tuple[Tensor, Tensor]:
        """The cached targets of one sample: for the image and for its horizontal mirror.

        Args:
            set_name: training-set name (as in the datamodule).
            path: the sample's ``path`` key.
            image_size: ``(H, W)`` of the sample's image as the dataset returns it now, checked against the cache.

        Returns:
            Two float32 tensors ``[C, ceil(H/f), ceil(W/f)]``: ``latent``, ``latent_flipped``.

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
        expected = (self.channels, math.ceil(height / self.scale), math.ceil(width / self.scale))
        out = []
        for suffix in ("latent", "latent_flipped"):
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
            out.append(tensor.float())
        return out[0], out[1]

    def lookup(self, set_name: str) -> TeacherCacheLookup:
        """The transform that adds one training set's cached targets to its samples."""
        self.entries(set_name)  # fail now for an unknown set
        return TeacherCacheLookup(self, set_name)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handles"] = {}  # safetensors handles do not pickle; each worker opens its own
        return state


class TeacherCacheLookup:
    """Transform: add ``teacher_latent`` and ``teacher_latent_flipped`` from the cache to a training sample.

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
        latent, flipped = self.cache.load(self.set_name, str(sample["path"]), tuple(sample["image"].shape[-2:]))
        return {**sample, LATENT_KEY: latent, FLIPPED_LATENT_KEY: flipped}

    def __repr__(self) -> str:
        return f"TeacherCacheLookup({str(self.cache.root)!r}, set_name={self.set_name!r})"


# ----------------------------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------------------------


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

    Both call :meth:`~d3epth.models.teacher.DiffusionDepthTeacher.one_step_latent_for_images`.

    Args:
        teacher: a frozen :class:`~d3epth.models.teacher.DiffusionDepthTeacher`.
        images: ``[B, 3, H, W]`` in [-1, 1].

    Returns:
        float32 ``[B, 4, ceil(H/f), ceil(W/f)]``.
    """
    return teacher.one_step_latent_for_images(images).float()


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

    Raises:
        TeacherCacheError: ``root`` holds a cache for another teacher or dtype, or something that is not a cache.
    """

    def __init__(self, root: str | Path, teacher: Mapping[str, Any], dtype: str, d3epth_version: str) -> None:
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
                "sets": {},
            }
        self.index = index

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
    ) -> Path:
        """Write one shard (atomically), then record its samples in the index (atomically).

        Args:
            set_name: a set registered with :meth:`begin_set`.
            paths: sample paths.
            sizes: ``(H, W)`` of each sample's image.
            latents: target of each image, ``[C, h, w]``.
            flipped: target of each mirrored image, ``[C, h, w]``.

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
        for path, latent, latent_flipped in zip(paths, latents, flipped, strict=True):
            tensors[f"{path}#latent"] = latent.detach().to("cpu", dtype).contiguous()
            tensors[f"{path}#latent_flipped"] = latent_flipped.detach().to("cpu", dtype).contiguous()
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
