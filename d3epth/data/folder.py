"""Your own data: RGB images and depth maps in two folders, paired by file stem (or listed in a two-column file).

Layout (names are examples; any stems work)::

    <root>/rgb/kitchen_001.jpg        8-bit RGB (png, jpg, jpeg, bmp, webp)
    <root>/depth/kitchen_001.png      depth: 16-bit PNG (value / depth_scale = metres; 0 = no depth),
                                      or .npy / float TIFF (metres; 0, NaN and ±Inf = no depth)
    <root>/mask/kitchen_001.png       optional: any image, non-zero = valid (ANDed with the depth range)

With ``recursive: true`` sub-folders are searched too and pairs match on the relative path without suffix
(``rgb/a/001.jpg`` pairs with ``depth/a/001.png``). With ``list_file`` the pairs are read from a text file instead,
one ``RGB DEPTH`` line each, paths relative to ``root`` (``#`` starts a comment), like the Marigold split lists.

``depth_scale`` divides stored integer depth: 1000 for millimetres (Hypersim, NYUv2, most RGB-D cameras), 256 for
KITTI-style LiDAR maps, 100 for Virtual KITTI 2's centimetres. Float files (``.npy``, 32-bit TIFF) hold metres.
Valid pixels: ``min_depth < depth < max_depth`` (strict), finite, and the mask where one is given.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from d3epth.data.base import (
    MAX_REPORTED,
    UINT16_MODES,
    BaseDepthDataset,
    _open_checked,
    load_npy,
    read_rgb,
    read_uint16_png,
)
from d3epth.data.storage import DataPath, data_root
from d3epth.data.transforms import Transform
from d3epth.errors import DataError, MissingFileError

#: Suffixes read as RGB images.
RGB_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp"})
#: Suffixes read as depth maps.
DEPTH_SUFFIXES: frozenset[str] = frozenset({".png", ".npy", ".tif", ".tiff"})
#: Suffixes read as masks.
MASK_SUFFIXES: frozenset[str] = frozenset({".png", ".bmp", ".tif", ".tiff", ".npy"})


def read_depth_file(path: DataPath, depth_scale: float) -> np.ndarray:
    """Depth in metres, float32 [H,W], from a 16-bit PNG/TIFF (÷ ``depth_scale``), a ``.npy`` or a float TIFF.

    Non-finite values become 0 (no depth), so that they never pass as "beyond max_depth".

    Raises:
        DataError: unknown suffix, unreadable file, wrong shape or dtype.
    """
    suffix = path.suffix.lower()
    if suffix not in DEPTH_SUFFIXES:
        raise DataError(f"{path}: unknown depth file type {suffix!r}; expected one of {sorted(DEPTH_SUFFIXES)}")
    if suffix == ".png":
        depth = read_uint16_png(path).astype(np.float32) / np.float32(depth_scale)
    elif suffix == ".npy":
        array = load_npy(path, "depth")
        if array.ndim == 3 and 1 in (array.shape[0], array.shape[-1]):
            array = array.reshape(array.shape[1:] if array.shape[0] == 1 else array.shape[:-1])
        if array.ndim != 2 or not np.issubdtype(array.dtype, np.number):
            raise DataError(f"{path}: depth .npy is {array.dtype} {list(array.shape)}; expected a numeric [H,W] array")
        depth = array.astype(np.float32)
    else:
        img = _open_checked(path)
        if img.mode in UINT16_MODES:
            depth = np.asarray(img).astype(np.float32) / np.float32(depth_scale)
        elif img.mode == "F":
            depth = np.asarray(img, dtype=np.float32)
        else:
            raise DataError(f"{path}: depth TIFF has PIL mode {img.mode!r}; expected 32-bit float or 16-bit integer")
    return np.where(np.isfinite(depth), depth, np.float32(0.0)).astype(np.float32)


def read_mask_file(path: DataPath) -> np.ndarray:
    """A validity mask, bool [H,W]: non-zero pixels of an image or ``.npy`` array are valid."""
    if path.suffix.lower() == ".npy":
        return np.squeeze(load_npy(path, "mask")) != 0
    return np.asarray(_open_checked(path).convert("L")) > 0


def _files(folder: DataPath, recursive: bool) -> Iterator[DataPath]:
    """The files in ``folder`` (and its sub-folders when ``recursive``), a folder or an archive member alike."""
    for child in folder.iterdir():
        if child.is_file():
            yield child
        elif recursive and child.is_dir():
            yield from _files(child, recursive)


def _index(folder: DataPath, suffixes: frozenset[str], recursive: bool, what: str) -> dict[str, DataPath]:
    """Files of ``folder`` by stem (or relative path without suffix when ``recursive``)."""
    if not folder.is_dir():
        raise MissingFileError(f"FolderDepthDataset: {what} folder {folder} does not exist")
    files = sorted(_files(folder, recursive))
    found: dict[str, DataPath] = {}
    for path in files:
        if path.suffix.lower() not in suffixes:
            continue
        key = PurePosixPath(path.relative_to(folder)).with_suffix("").as_posix()
        if key in found:
            raise DataError(f"FolderDepthDataset: {found[key]} and {path} share the stem {key!r}; keep one of them")
        found[key] = path
    return found


def _listed(keys: Sequence[str]) -> str:
    more = f" and {len(keys) - MAX_REPORTED} more" if len(keys) > MAX_REPORTED else ""
    return ", ".join(keys[:MAX_REPORTED]) + more


class FolderDepthDataset(BaseDepthDataset):
    """RGB + depth (+ mask) files of your own, paired by stem or by a list file (see the module docstring).

    Args:
        root: the folder holding ``rgb_dir``, ``depth_dir`` (and ``mask_dir``), or the list file's paths.
        rgb_dir: RGB folder, relative to ``root`` (or absolute).
        depth_dir: depth folder, relative to ``root`` (or absolute).
        mask_dir: optional mask folder with the same stems; a missing mask for some RGB is an error.
        list_file: two-column ``RGB DEPTH`` list (paths relative to ``root``) used instead of pairing folders.
        recursive: search sub-folders and pair on relative paths.
        depth_scale: stored integer value / ``depth_scale`` = metres (1000: mm, 256: KITTI, 100: cm).
        min_depth, max_depth: valid range in metres (strict).
        resize: ``[height, width]`` after loading, or ``None`` (native; all images of a batch must then agree).
        split: a name for this set (only used in messages).
        image_interpolation, transforms, check, name: see :class:`~d3epth.data.base.BaseDepthDataset`.
    """

    default_name: ClassVar[str] = "folder"
    columns: ClassVar[tuple[str, ...]] = ("rgb", "depth")
    splits: ClassVar[tuple[str, ...]] = ("all", "train", "val", "test")

    def __init__(
        self,
        root: str | Path,
        rgb_dir: str = "rgb",
        depth_dir: str = "depth",
        mask_dir: str | None = None,
        list_file: str | Path | None = None,
        recursive: bool = False,
        depth_scale: float = 1000.0,
        min_depth: float = 1e-3,
        max_depth: float = 80.0,
        resize: Sequence[int] | None = None,
        split: str = "all",
        image_interpolation: str = "bilinear",
        transforms: Transform | Sequence[Transform] | None = None,
        check: str = "quick",
        name: str | None = None,
    ) -> None:
        if not depth_scale > 0:
            raise DataError(f"FolderDepthDataset: depth_scale must be > 0 (1000: mm, 256: KITTI), got {depth_scale}")
        self.depth_scale = float(depth_scale)  # shadows the class default: this dataset's own encoding
        self.rgb_dir, self.depth_dir, self.mask_dir = rgb_dir, depth_dir, mask_dir
        self.recursive = bool(recursive)
        super().__init__(
            root,
            split if split in self.splits else "all",
            split_file=(data_root(root) / str(list_file)) if list_file is not None else None,
            min_depth=min_depth,
            max_depth=max_depth,
            resize=resize,
            image_interpolation=image_interpolation,
            transforms=transforms,
            check=check,
            name=name,
        )
        self.split = split

    # ------------------------------------------------------------------ pairing
    def _default_split_file(self) -> DataPath:
        return self.root / self.rgb_dir  # no list: the pairs come from the folders (see _read_list)

    def _read_list(self) -> list[dict[str, Any]]:
        if self.split_file != self._default_split_file():
            entries = super()._read_list()
        else:
            entries = self._pair_folders()
        if self.mask_dir is not None:
            masks = _index(self.root / self.mask_dir, MASK_SUFFIXES, self.recursive, "mask_dir")
            lacking = [e["rel"] for e in entries if e.get("mask_key", e["rel"]) not in masks]
            if lacking:
                raise DataError(
                    f"FolderDepthDataset: {len(lacking)} sample(s) have no mask of the same stem in "
                    f"{self.root / self.mask_dir}: {_listed(lacking)}; add the masks or drop mask_dir"
                )
            for entry in entries:
                entry["mask"] = masks[entry.pop("mask_key", entry["rel"])]
        return entries

    def _parse_line(self, parts: list[str], where: str) -> dict[str, Any] | None:
        """A list line ``RGB DEPTH``; its mask (if any) is matched on the RGB file's stem.

        The sample's name is the RGB path without its suffix (``rgb/b/001``): a stem alone would give ``rgb/a/001.png``
        and ``rgb/b/001.png`` one name, and the teacher cache, keyed by name, one target.
        """
        rgb = PurePosixPath(parts[0])
        return {
            "rgb": self.root / parts[0],
            "depth": self.root / parts[1],
            "rel": rgb.with_suffix("").as_posix(),
            "mask_key": rgb.stem,
        }

    def _pair_folders(self) -> list[dict[str, Any]]:
        rgb_dir, depth_dir = self.root / self.rgb_dir, self.root / self.depth_dir
        rgbs = _index(rgb_dir, RGB_SUFFIXES, self.recursive, "rgb_dir")
        depths = _index(depth_dir, DEPTH_SUFFIXES, self.recursive, "depth_dir")
        no_depth = [key for key in rgbs if key not in depths]
        no_rgb = [key for key in depths if key not in rgbs]
        if no_depth or no_rgb:
            parts = []
            if no_depth:
                parts.append(f"{len(no_depth)} RGB file(s) without depth in {depth_dir}: {_listed(no_depth)}")
            if no_rgb:
                parts.append(f"{len(no_rgb)} depth file(s) without RGB in {rgb_dir}: {_listed(no_rgb)}")
            raise DataError(
                f"FolderDepthDataset: unmatched stems: {'; '.join(parts)}; give every RGB a depth file of the same "
                "stem (or use list_file)"
            )
        if not rgbs:
            raise DataError(
                f"FolderDepthDataset: no RGB images ({', '.join(sorted(RGB_SUFFIXES))}) in {rgb_dir}"
                + ("" if self.recursive else " (set recursive: true to search sub-folders)")
            )
        return [
            {"rgb": rgbs[key], "depth": depths[key], "rel": key, "where": str(rgbs[key].relative_to(self.root))}
            for key in sorted(rgbs)
        ]

    def _file_columns(self) -> list[str]:
        return ["rgb", "depth", "mask"] if self.mask_dir is not None else ["rgb", "depth"]

    # ------------------------------------------------------------------ reading
    def _read_pair(self, entry: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """RGB uint8 [H,W,3] and depth in metres float32 [H,W], 0 where the mask (if any) says invalid."""
        rgb = read_rgb(entry["rgb"])
        depth = read_depth_file(entry["depth"], self.depth_scale)
        if rgb.shape[:2] != depth.shape:
            raise DataError(
                f"{entry['rgb']} is {rgb.shape[0]}x{rgb.shape[1]} but its depth {entry['depth']} is "
                f"{depth.shape[0]}x{depth.shape[1]}; RGB and depth must have the same size"
            )
        if "mask" in entry:
            mask = read_mask_file(entry["mask"])
            if mask.shape != depth.shape:
                raise DataError(
                    f"{entry['mask']} is {mask.shape[0]}x{mask.shape[1]} but {entry['rgb']} is "
                    f"{depth.shape[0]}x{depth.shape[1]}; masks must have the RGB's size"
                )
            depth = np.where(mask, depth, np.float32(0.0))  # 0 is never inside (min_depth, max_depth)
        return rgb, depth

    def depth_from_raw(self, raw: np.ndarray) -> Tensor:
        """Depth read by :meth:`_read_pair` is already in metres: float32 [1,H,W]."""
        return torch.from_numpy(np.ascontiguousarray(raw, dtype=np.float32))[None]
