"""ETH3D (454 DSLR frames) as read by Marigold: JPEG RGB and raw float32 depth with ``inf`` where unknown.

Layout (Marigold's ``eth3d.tar``; list ``data_split/eth3d_depth/eth3d_filename_list.txt``)::

    <root>/rgb/office/images/dslr_images/DSC_0219.JPG                                     8-bit RGB, 6048x4032
    <root>/depth/office_dslr_depth/office/ground_truth_depth/dslr_images/DSC_0219.JPG     raw float32, see below
    <root>/eth3d_filename_list.txt                                                        "rgb depth" per line

The depth "JPG" is not an image: it is the ETH3D ground-truth format, a headerless array of little-endian float32
depths in metres, row-major, of the RGB's size (4032 rows x 6048 columns at full resolution; Marigold
``src/dataset/eth3d_dataset.py`` ``HEIGHT, WIDTH = 4032, 6048``, eth3d.net "format of multi-view data"). Pixels
without ground truth hold ``inf``; they become invalid (depth 0), as Marigold's reader sets them to 0.

Evaluation (preset ``eth3d`` of :mod:`d3epth.metrics.benchmarks`): valid 1e-5 < d < inf, least-squares fit on a copy
at most 1024 px on its longer side, predictions at processing resolution 756 (Marigold ``script/depth/eval_old/
31_infer_eth3d.sh`` ``--processing_res 756``).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from d3epth.data.base import BenchmarkDepthDataset, read_rgb
from d3epth.data.storage import DataPath
from d3epth.errors import DataError

#: Full-resolution size (rows, columns) of an ETH3D DSLR depth map (Marigold ``ETH3DDataset.HEIGHT, WIDTH``).
FULL_SIZE: tuple[int, int] = (4032, 6048)


def read_eth3d_depth(path: DataPath, height: int, width: int) -> np.ndarray:
    """Read an ETH3D raw depth file: little-endian float32 [height, width] in metres, non-finite values -> 0.

    Raises:
        FileNotFoundError: missing file (``<path>: file not found``).
        DataError: the byte count is not ``height * width * 4`` (a file of another frame size or not ETH3D depth).
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    data = path.read_bytes()
    expected = height * width * 4
    if len(data) != expected:
        raise DataError(
            f"{path}: ETH3D depth has {len(data)} bytes, expected {expected} (float32 little-endian {height}x{width}, "
            "the size of its RGB image); check the list pairs each RGB with its own depth file"
        )
    depth = np.frombuffer(data, dtype="<f4").reshape(height, width).astype(np.float32)
    depth[~np.isfinite(depth)] = 0.0  # ETH3D marks unknown depth with inf (NaN treated alike)
    return depth


class ETH3DDataset(BenchmarkDepthDataset):
    """ETH3D in Marigold's evaluation layout, depth range 1e-5 < d < inf (``inf`` in the file = invalid).

    Args:
        root: folder holding ``rgb/`` and ``depth/`` (e.g. ``sample_data/eth3d``) or Marigold's ``eth3d.tar``.
        split: ``test`` (the 454-frame list, Marigold's only ETH3D split).
        split_file: list file; ``None`` = ``<root>/eth3d_filename_list.txt`` (with Marigold's tar, pass Marigold's
            ``data_split/eth3d_depth/eth3d_filename_list.txt``).
        min_depth, max_depth: valid range in metres (strict); ``None`` = 1e-5 and inf (Marigold's).
        resize: ``[height, width]`` or ``None`` (native; evaluation runs at native resolution).
        image_interpolation: RGB resize mode.
        transforms, check, name: see :class:`~d3epth.data.base.BenchmarkDepthDataset`.
    """

    default_name: ClassVar[str] = "eth3d"
    columns: ClassVar[tuple[str, ...]] = ("rgb", "depth")
    splits: ClassVar[tuple[str, ...]] = ("test",)
    default_split: ClassVar[str] = "test"
    default_range: ClassVar[tuple[float, float]] = (1e-5, math.inf)
    depth_scale: ClassVar[float] = 1.0

    def _default_split_file(self) -> DataPath:
        return self.root / "eth3d_filename_list.txt"

    def _read_pair(self, entry: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        rgb = read_rgb(entry["rgb"])
        return rgb, read_eth3d_depth(entry["depth"], rgb.shape[0], rgb.shape[1])
