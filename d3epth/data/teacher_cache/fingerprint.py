"""What identifies a teacher cache: the teacher's weight fingerprint and each training set's signature.

:func:`teacher_fingerprint` hashes the teacher, :func:`dataset_signature` records what decides the images a set
returns, and :func:`check_cacheable` refuses a training setup whose images would not be the ones cached.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from d3epth.data.base import BaseDepthDataset
from d3epth.data.transforms import Compose, HorizontalFlip, RandomCrop, Transform


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


def content_fingerprint(dataset: BaseDepthDataset) -> str:
    """SHA-256 over the names and RGB bytes of the first, middle and last listed samples (three file reads).

    Entries are keyed by relative path, so another root whose files share the names (another scene set, another
    seed of generated data) would otherwise be served these targets; a moved copy of the same files still matches.
    """
    entries = dataset.entries
    digest = hashlib.sha256(f"{len(entries)}|".encode())
    for index in sorted({0, len(entries) // 2, len(entries) - 1}):
        entry = entries[index]
        digest.update(f"{entry['rel']}|".encode())
        if "rgb" in entry:
            digest.update(entry["rgb"].read_bytes())
    return f"sha256:{digest.hexdigest()}"


def dataset_signature(dataset: Dataset) -> dict[str, Any]:
    """What decides the images a dataset returns: its class, deterministic geometry and a fingerprint of its files.

    Recorded per training set in the index and compared when the cache is used, so a cache written at another
    ``resize`` / interpolation / crop, or for other files of the same names (:func:`content_fingerprint`), cannot
    silently serve latents of a different image.
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
            content=content_fingerprint(dataset),
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
