"""ScanNet (800 frames sampled from the 312 validation scenes) as read by Marigold: JPEG RGB, uint16 depth in mm.

Layout (Marigold's ``scannet_val_sampled_800_1.tar``; list ``data_split/scannet_depth/
scannet_val_sampled_list_800_1.txt``)::

    <root>/scene0406_02/color/000300.jpg             8-bit RGB
    <root>/scene0406_02/depth/000300.png             uint16 millimetres, 0 = no measurement
    <root>/scannet_val_sampled_list_800_1.txt        "rgb depth" per line

Depth = stored value / 1000 (Marigold ``src/dataset/scannet_dataset.py``), valid 1e-3 < d < 10 m (its
``min_depth``/``max_depth``); evaluated at native resolution with full-resolution alignment (preset ``scannet``).
"""

from __future__ import annotations

from typing import ClassVar

from d3epth.data.base import BenchmarkDepthDataset
from d3epth.data.storage import DataPath

#: Default list file per split (Marigold's file name).
SPLIT_FILES: dict[str, str] = {"test": "scannet_val_sampled_list_800_1.txt"}


class ScanNetDataset(BenchmarkDepthDataset):
    """ScanNet validation sample in Marigold's layout, depth = mm / 1000, valid 1e-3 < d < 10 m.

    Args:
        root: folder holding the ``sceneXXXX_XX/`` folders (e.g. ``sample_data/scannet``) or Marigold's tar.
        split: ``test`` (Marigold's 800-frame validation sample, its ScanNet benchmark).
        split_file: list file; ``None`` = ``<root>/scannet_val_sampled_list_800_1.txt``.
        min_depth, max_depth: valid range in metres (strict); ``None`` = 1e-3 and 10 (Marigold's).
        resize: ``[height, width]`` or ``None``.
        image_interpolation: RGB resize mode.
        transforms, check, name: see :class:`~d3epth.data.base.BenchmarkDepthDataset`.
    """

    default_name: ClassVar[str] = "scannet"
    columns: ClassVar[tuple[str, ...]] = ("rgb", "depth")
    splits: ClassVar[tuple[str, ...]] = tuple(SPLIT_FILES)
    default_split: ClassVar[str] = "test"
    default_range: ClassVar[tuple[float, float]] = (1e-3, 10.0)
    depth_scale: ClassVar[float] = 1000.0

    def _default_split_file(self) -> DataPath:
        return self.root / SPLIT_FILES[self.split]
