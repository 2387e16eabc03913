"""KITTI Eigen split with the official annotated depth (``proj_depth/groundtruth``), as read by Marigold.

Layout::

    <root>/2011_09_26/2011_09_26_drive_0002_sync/image_02/data/0000000069.png             8-bit RGB
    <root>/2011_09_26_drive_0002_sync/proj_depth/groundtruth/image_02/0000000069.png      uint16, /256 = metres
    <root>/eigen_test_files_with_gt.txt        "rgb depth focal"; depth "None" = no ground truth (row dropped)

The depth is sparse (projected LiDAR): 0 marks pixels without a measurement.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from d3epth.data.base import BaseDepthDataset
from d3epth.data.crops import CROPS, EvalCrop
from d3epth.data.sample import Sample
from d3epth.data.storage import DataPath
from d3epth.data.transforms import Transform

#: Evaluation crops of the KB-cropped frame by ``eval_crop`` name (defined in :mod:`d3epth.data.crops`).
EVAL_CROPS: dict[str, EvalCrop] = {"eigen": CROPS["kitti_eigen"], "garg": CROPS["kitti_garg"]}

#: Default list file per split.
SPLIT_FILES: dict[str, str] = {
    "test": "eigen_test_files_with_gt.txt",
    "val": "eigen_val_from_train_800.txt",
}


class KITTIDataset(BaseDepthDataset):
    """KITTI Eigen test (652 frames with ground truth), depth range 1e-5 < d < 80 m, KB crop on by default.

    Args:
        root: KITTI root (e.g. ``sample_data/kitti``).
        split: ``test`` (``eigen_test_files_with_gt.txt``) or ``val`` (``eigen_val_from_train_800.txt``).
        split_file: list file; ``None`` = the split's default under ``root``.
        min_depth, max_depth: valid range in metres (strict).
        kb_crop: KITTI benchmark crop 352x1216 (bottom rows, horizontally centred); fails on smaller frames.
        resize: ``[height, width]`` or ``None``.
        image_interpolation: RGB resize mode.
        eval_crop: ``"eigen"`` or ``"garg"`` to AND that crop into ``valid_mask`` (computed on the KB-cropped frame
            as Marigold does), or ``None`` (default: ``d3epth.metrics`` applies benchmark crops).
        transforms, check, name: see :class:`~d3epth.data.base.BaseDepthDataset`.
    """

    default_name: ClassVar[str] = "kitti"
    columns: ClassVar[tuple[str, ...]] = ("rgb", "depth", "focal")
    splits: ClassVar[tuple[str, ...]] = ("test", "val")
    depth_scale: ClassVar[float] = 256.0

    def __init__(
        self,
        root: str | Path,
        split: str = "test",
        split_file: str | Path | None = None,
        min_depth: float = 1e-5,
        max_depth: float = 80.0,
        kb_crop: bool = True,
        resize: Sequence[int] | None = None,
        image_interpolation: str = "bilinear",
        eval_crop: str | None = None,
        transforms: Transform | Sequence[Transform] | None = None,
        check: str = "quick",
        name: str | None = None,
    ) -> None:
        if eval_crop is not None and eval_crop not in EVAL_CROPS:
            raise ValueError(f"KITTIDataset: eval_crop must be one of {sorted(EVAL_CROPS)} or null, got {eval_crop!r}")
        self.eval_crop = eval_crop
        super().__init__(
            root,
            split,
            split_file=split_file,
            min_depth=min_depth,
            max_depth=max_depth,
            resize=resize,
            kb_crop=kb_crop,
            image_interpolation=image_interpolation,
            transforms=transforms,
            check=check,
            name=name,
        )

    def _default_split_file(self) -> DataPath:
        return self.root / SPLIT_FILES[self.split]

    def _parse_line(self, parts: list[str], where: str) -> dict[str, Any] | None:
        rgb, depth, focal = parts
        if depth == "None":  # frames without annotated ground truth (45 of the 697 Eigen test rows)
            return None
        try:
            focal_px = float(focal)
        except ValueError as err:
            raise ValueError(f"{where}: third column (focal length in pixels) must be a number, got {focal!r}") from err
        return {"rgb": self.data_dir / rgb, "depth": self.data_dir / depth, "focal": focal_px, "rel": rgb}

    def _eval_mask(self, sample: Sample) -> Sample:
        if self.eval_crop is None:
            return sample
        _, height, width = sample["valid_mask"].shape
        crop = EVAL_CROPS[self.eval_crop].mask(height, width, device=sample["valid_mask"].device)
        return sample | {"valid_mask": sample["valid_mask"] & crop}
