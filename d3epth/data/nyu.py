"""NYUv2 labelled set as read by Marigold: PNGs with uint16 depth in millimetres, list "rgb depth filled".

Layout::

    <root>/test/kitchen_0004/rgb_0001.png      8-bit RGB
    <root>/test/kitchen_0004/depth_0001.png    uint16 mm, raw Kinect depth (0 = no measurement)
    <root>/test/kitchen_0004/filled_0001.png   uint16 mm, inpainted depth
    <root>/filename_list_test.txt              "rgb depth filled", paths relative to <root>

Ground truth is the **raw** depth (second column), as in Marigold's evaluation; the filled depth is only read on
request (``load_filled``) and is never used for the mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from d3epth.data.base import BaseDepthDataset, read_uint16_png
from d3epth.data.crops import CROPS
from d3epth.data.sample import Sample
from d3epth.data.storage import DataPath
from d3epth.data.transforms import Transform

#: Eigen et al. crop of a 480x640 NYU frame: rows 45:471, columns 41:601 (Marigold ``eigen_valid_mask``; defined in
#: :mod:`d3epth.data.crops`).
EIGEN_CROP_480x640: tuple[int, int, int, int] = CROPS["nyu_eigen"].bounds(480, 640)


class NYUv2Dataset(BaseDepthDataset):
    """NYUv2 (Marigold list format), depth range 1e-3 < d < 10 m.

    Args:
        root: folder holding the list and ``test/`` (e.g. ``sample_data/nyuv2``).
        split: ``test`` (654 frames) or ``train``.
        split_file: list file; ``None`` = ``<root>/filename_list_<split>.txt``.
        min_depth, max_depth: valid range in metres (strict).
        resize: ``[height, width]`` or ``None`` (native; evaluation runs at native resolution).
        image_interpolation: RGB resize mode.
        eigen_crop: AND the Eigen crop into ``valid_mask`` (rows 45:471, cols 41:601 of a 480x640 frame; scaled
            and rounded half up for other frame sizes, the same mask as the ``nyu`` metrics, see
            :class:`~d3epth.data.crops.EvalCrop`). Off by default: ``d3epth.metrics`` applies benchmark crops.
        load_filled: add ``depth_filled`` [1,H,W] (metres, the third column).
        transforms, check, name: see :class:`~d3epth.data.base.BaseDepthDataset`.
    """

    default_name: ClassVar[str] = "nyu"
    columns: ClassVar[tuple[str, ...]] = ("rgb", "depth", "filled")
    splits: ClassVar[tuple[str, ...]] = ("test", "train")
    depth_scale: ClassVar[float] = 1000.0

    def __init__(
        self,
        root: str | Path,
        split: str = "test",
        split_file: str | Path | None = None,
        min_depth: float = 1e-3,
        max_depth: float = 10.0,
        resize: Sequence[int] | None = None,
        image_interpolation: str = "bilinear",
        eigen_crop: bool = False,
        load_filled: bool = False,
        transforms: Transform | Sequence[Transform] | None = None,
        check: str = "quick",
        name: str | None = None,
    ) -> None:
        self.eigen_crop = eigen_crop
        self.load_filled = load_filled
        super().__init__(
            root,
            split,
            split_file=split_file,
            min_depth=min_depth,
            max_depth=max_depth,
            resize=resize,
            kb_crop=False,
            image_interpolation=image_interpolation,
            transforms=transforms,
            check=check,
            name=name,
        )

    def _default_split_file(self) -> DataPath:
        return self.root / f"filename_list_{self.split}.txt"

    def _file_columns(self) -> list[str]:
        return ["rgb", "depth", "filled"] if self.load_filled else ["rgb", "depth"]

    def _load_extra(self, entry: dict[str, Any], size: tuple[int, int]) -> Sample:
        if not self.load_filled:
            return {}
        raw = read_uint16_png(entry["filled"])
        if raw.shape != tuple(size):
            raise ValueError(
                f"{entry['filled']} is {raw.shape[0]}x{raw.shape[1]} but {entry['rgb']} is {size[0]}x{size[1]} "
                f"(listed at {entry['where']}); filled depth must have the RGB's size"
            )
        return {"depth_filled": self.depth_from_raw(raw)}

    def _eval_mask(self, sample: Sample) -> Sample:
        if not self.eigen_crop:
            return sample
        _, height, width = sample["valid_mask"].shape
        crop = CROPS["nyu_eigen"].mask(height, width, device=sample["valid_mask"].device)
        return sample | {"valid_mask": sample["valid_mask"] & crop}
