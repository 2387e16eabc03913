"""DIODE validation set (771 frames: 325 indoor, 446 outdoor) as read by Marigold: PNG RGB, ``.npy`` depth and mask.

Layout (Marigold's ``diode_val.tar``; lists ``data_split/diode_depth/diode_val_{all,indoor,outdoor}_filename_list
.txt``)::

    <root>/indoors/scene_00021/scan_00189/00021_00189_indoors_200_010.png               8-bit RGB, 1024x768
    <root>/indoors/scene_00021/scan_00189/00021_00189_indoors_200_010_depth.npy         float32 [H,W,1], metres
    <root>/indoors/scene_00021/scan_00189/00021_00189_indoors_200_010_depth_mask.npy    [H,W], nonzero = valid
    <root>/diode_val_all_filename_list.txt                                               "rgb depth mask" per line

The shipped mask is the valid mask (Marigold ``src/dataset/diode_dataset.py`` reads it with ``.astype(bool)`` as
``valid_mask_raw``; only pixels of finite positive depth are kept besides). Marigold's range 0.6-350 m (its
``min_depth``/``max_depth``) does not mask the ground truth: its ``eval.py`` only clips the aligned prediction to it,
which the ``diode`` evaluation preset does. Evaluation: preset ``diode``, predictions at processing resolution 640.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from d3epth.data.base import BenchmarkDepthDataset, load_npy, read_rgb
from d3epth.data.storage import DataPath
from d3epth.errors import DataError

#: Default list file per split (Marigold's file names).
SPLIT_FILES: dict[str, str] = {
    "val": "diode_val_all_filename_list.txt",
    "val_indoor": "diode_val_indoor_filename_list.txt",
    "val_outdoor": "diode_val_outdoor_filename_list.txt",
}


def read_npy(path: DataPath, what: str) -> np.ndarray:
    """Load a ``.npy`` raster (:func:`~d3epth.data.base.load_npy`) with the trailing singleton channel squeezed: [H,W].

    Raises:
        FileNotFoundError: missing file (``<path>: file not found``).
        DataError: not a readable ``.npy`` file, or not one raster of shape [H,W] / [H,W,1].
    """
    array = load_npy(path, what)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise DataError(f"{path}: {what} has shape {array.shape}; expected [H, W] or [H, W, 1]")
    return array


class DIODEDataset(BenchmarkDepthDataset):
    """DIODE validation in Marigold's layout: ``.npy`` depth in metres, the shipped mask as the valid mask.

    Args:
        root: folder holding ``indoors/`` and ``outdoor/`` (e.g. ``sample_data/diode``) or Marigold's ``diode_val.tar``.
        split: ``val`` (all 771), ``val_indoor`` (325) or ``val_outdoor`` (446).
        split_file: list file; ``None`` = the split's Marigold list under ``root``.
        min_depth, max_depth: valid range in metres (strict); ``None`` = 0 and ``inf`` (Marigold scores the shipped
            mask alone; its 0.6-350 m range clips predictions, preset ``diode``).
        resize: ``[height, width]`` or ``None``.
        image_interpolation: RGB resize mode.
        transforms, check, name: see :class:`~d3epth.data.base.BenchmarkDepthDataset`.
    """

    default_name: ClassVar[str] = "diode"
    columns: ClassVar[tuple[str, ...]] = ("rgb", "depth", "mask")
    splits: ClassVar[tuple[str, ...]] = tuple(SPLIT_FILES)
    default_split: ClassVar[str] = "val"
    default_range: ClassVar[tuple[float, float]] = (0.0, math.inf)
    depth_scale: ClassVar[float] = 1.0

    def _default_split_file(self) -> DataPath:
        return self.root / SPLIT_FILES[self.split]

    def _read_pair(self, entry: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        rgb = read_rgb(entry["rgb"])
        depth = read_npy(entry["depth"], "depth").astype(np.float32)
        if depth.shape != rgb.shape[:2]:
            raise DataError(
                f"{entry['rgb']} is {rgb.shape[0]}x{rgb.shape[1]} but its depth {entry['depth']} is "
                f"{depth.shape[0]}x{depth.shape[1]} (listed at {entry['where']}); RGB and depth must have the same size"
            )
        depth[~np.isfinite(depth)] = 0.0  # DIODE has none; a NaN must not pass as a value (invalid instead)
        return rgb, depth

    def _read_mask(self, entry: dict[str, Any], size: tuple[int, int]) -> np.ndarray | None:
        mask = read_npy(entry["mask"], "depth mask")
        if mask.shape != tuple(size):
            raise DataError(
                f"{entry['mask']} is {mask.shape[0]}x{mask.shape[1]} but its depth is {size[0]}x{size[1]} "
                f"(listed at {entry['where']}); the mask must have the depth's size"
            )
        return mask.astype(bool)
