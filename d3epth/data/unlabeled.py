"""Images without ground truth as a training source: a folder, a glob, a list file, or several of them.

Distillation pays where there are images but no depth: Depth Anything V2 (Yang et al., NeurIPS 2024) trains its
students only on teacher pseudo-labels of unlabeled real images, and D³epth's stage 1 needs no ground truth at all.
:class:`UnlabeledImageDataset` returns the sample dict of :mod:`d3epth.data.sample` with ``has_depth`` False,
``depth`` and ``depth_norm`` zeros and ``valid_mask`` all False (DESIGN.md §3), so it mixes per batch with the
labelled sets in :class:`~d3epth.data.DepthDataModule`; every task decides explicitly what to do with such a batch
(stage 1 distils it, stage 2 trains on the teacher's pseudo-label or skips it, GT-only tasks refuse the source).

Images of any size are centre-cropped to the aspect ratio of ``resize`` and resized to it (a crop, unlike the
stretch the labelled sets get, because unlabeled collections mix aspect ratios; no depth is distorted either way).

YAML::

    train:
      web_images:
        class_path: d3epth.data.UnlabeledImageDataset
        init_args: {images: /data/unlabeled, resize: [480, 640]}        # or "/data/**/*.jpg", or list.txt
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from d3epth.data.base import BaseDepthDataset, read_rgb
from d3epth.data.transforms import Transform
from d3epth.errors import DataError

#: File suffixes read as images (lower case).
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg")
#: Suffix of a list file (one image path per line, relative to the list's folder).
LIST_SUFFIX = ".txt"


def _is_glob(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[")


def centre_crop_to_aspect(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """The largest centred window of ``rgb`` [H,W,3] with aspect ratio ``width / height``."""
    h, w = rgb.shape[:2]
    if h * width > w * height:  # too tall
        new_h = max(1, round(w * height / width))
        top = (h - new_h) // 2
        return rgb[top : top + new_h]
    new_w = max(1, round(h * width / height))
    left = (w - new_w) // 2
    return rgb[:, left : left + new_w]


class UnlabeledImageDataset(BaseDepthDataset):
    """RGB images without depth (PNG/JPEG, any size), as training samples with ``has_depth`` False.

    Args:
        images: a folder (searched recursively for :data:`IMAGE_SUFFIXES`), a glob pattern (``**`` recurses), a
            ``.txt`` list file (one path per line, relative to the list's folder; ``#`` comments), or a list of these.
            Relative entries are taken from the working directory. Order: sorted within each entry, entries in turn;
            a file met twice is kept once.
        resize: ``[height, width]`` every image is centre-cropped (to this aspect ratio) and resized to. Required:
            unlabeled images come in any size, and a batch needs one.
        image_interpolation: RGB resize mode (see :class:`~d3epth.data.transforms.Resize`).
        transforms: extra transforms after the crop and resize (see :class:`~d3epth.data.base.BaseDepthDataset`).
        check: ``"none"``, ``"quick"`` (the first image decodes) or ``"full"`` (every image decodes).
        name: value of the ``dataset`` key.

    The ``path`` key of a sample is its file relative to the common folder of all images (what the teacher cache
    keys on).

    Raises:
        DataError: an entry matches no image, a list line names a missing file, or nothing at all is found.
    """

    default_name: ClassVar[str] = "unlabeled"
    columns: ClassVar[tuple[str, ...]] = ("rgb",)
    splits: ClassVar[tuple[str, ...]] = ("train",)
    has_depth: ClassVar[bool] = False

    def __init__(
        self,
        images: str | Path | Sequence[str | Path],
        resize: Sequence[int],
        image_interpolation: str = "bilinear",
        transforms: Transform | Sequence[Transform] | None = None,
        check: str = "quick",
        name: str | None = None,
    ) -> None:
        if resize is None:
            raise ValueError("UnlabeledImageDataset: set resize: [height, width] (unlabeled images come in any size)")
        self.images = [str(images)] if isinstance(images, str | Path) else [str(i) for i in images]
        if not self.images:
            raise ValueError("UnlabeledImageDataset: images is empty; give a folder, a glob or a list file")
        self._files = self._find_images()
        common = Path(_common_folder(self._files))
        super().__init__(
            common,
            "train",
            split_file=common,  # not read: the entries come from _read_list below
            min_depth=0.0,
            max_depth=1.0,
            resize=resize,
            image_interpolation=image_interpolation,
            transforms=transforms,
            check=check,
            name=name,
        )

    # ------------------------------------------------------------------ the file list
    def _find_images(self) -> list[Path]:
        files: list[Path] = []
        for entry in self.images:
            path = Path(entry).expanduser()
            if path.is_dir():
                found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            elif path.suffix.lower() == LIST_SUFFIX and path.is_file():
                found = self._read_image_list(path)
            elif _is_glob(entry):
                matches = glob.glob(str(path), recursive=True)
                found = sorted(Path(p) for p in matches if Path(p).suffix.lower() in IMAGE_SUFFIXES)
            elif path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                found = [path]
            else:
                raise DataError(
                    f"UnlabeledImageDataset: images entry {entry!r} is not a folder, a glob, a {LIST_SUFFIX} list or "
                    f"an image ({'/'.join(IMAGE_SUFFIXES)}) that exists"
                )
            if not found:
                raise DataError(f"UnlabeledImageDataset: images entry {entry!r} matches no {'/'.join(IMAGE_SUFFIXES)}")
            files.extend(found)
        return list(dict.fromkeys(p.resolve() for p in files))

    @staticmethod
    def _read_image_list(path: Path) -> list[Path]:
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise DataError(f"UnlabeledImageDataset: cannot read list file {path}: {err}") from err
        files, missing = [], []
        for lineno, line in enumerate(lines, start=1):
            name = line.strip()
            if not name or name.startswith("#"):
                continue
            file = path.parent / name
            if file.is_file():
                files.append(file)
            else:
                missing.append(f"{file} (line {lineno})")
        if missing:
            raise DataError(f"{path}: {len(missing)} listed image(s) missing, e.g. {', '.join(map(str, missing[:3]))}")
        return files

    def _read_list(self) -> list[dict[str, Any]]:
        return [
            {"rgb": file, "rel": file.relative_to(self.root).as_posix(), "where": str(file)} for file in self._files
        ]

    # ------------------------------------------------------------------ reading
    def _read_pair(self, entry: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """The cropped RGB and an all-zero raw depth (every pixel invalid by the range test)."""
        assert self.resize is not None
        rgb = centre_crop_to_aspect(read_rgb(Path(entry["rgb"])), *self.resize)
        return np.ascontiguousarray(rgb), np.zeros(rgb.shape[:2], dtype=np.uint16)

    def __repr__(self) -> str:
        return f"UnlabeledImageDataset(images={self.images}, n={len(self)}, resize={self.resize})"


def _common_folder(files: Sequence[Path]) -> str:
    """The deepest folder containing every file (their parent for a single file)."""
    return os.path.commonpath([str(p.parent) for p in files])
