"""Hypersim in Marigold's preprocessed layout: 8-bit tone-mapped RGB PNGs and uint16 planar depth in millimetres.

Layout (written by Marigold's ``preprocess_hypersim.py`` or ``tools/prepare_hypersim.py``)::

    <root>/train/ai_001_001/rgb_cam_00_fr0000.png           8-bit RGB
    <root>/train/ai_001_001/depth_plane_cam_00_fr0000.png   uint16, planar depth in mm, 0 = invalid
    <root>/train/filename_list_train.txt                    unfiltered list, "rgb depth" per line
    <root>/filename_list_train_filtered.txt                 Marigold's filtered list (used when present)

List paths are relative to ``<root>/<split>/``, so Marigold's own ``data_split/hypersim_depth/*.txt`` files work as
``split_file``. The root may also be one split's folder itself, as Marigold's README packs it (``tar -cf
hypersim_processed_train.tar .`` inside ``processed/train``): without a ``<root>/<split>/`` folder, the scenes and the
split's list are read from ``<root>/`` directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from torch import Tensor

from d3epth.data.base import BaseDepthDataset, focal_from_fov, pinhole
from d3epth.data.storage import DataPath
from d3epth.data.transforms import Transform


class HypersimDataset(BaseDepthDataset):
    """One split of Hypersim (Marigold preprocessed PNGs).

    Depth = stored value / 1000 (m); 0 marks pixels without geometry and is invalid by the range test. The default
    range 1e-5 < d < 65 m follows E2E-FT (the uint16-mm encoding tops out at 65.535 m). ``intrinsics``: Hypersim
    renders with a 60° horizontal field of view and square pixels, so ``f = (W / 2) / tan(30°)`` (886.81 px at
    W = 1024), principal point at the image centre; per-scene tilt-shift deviations are ignored, as in Marigold.

    Args:
        root: folder (or ``.tar``) holding ``train/``, ``val/``, ``test/`` (e.g. ``sample_data/hypersim``), or one
            split's folder / tar itself (Marigold's ``hypersim_processed_train.tar``).
        split: ``train``, ``val`` or ``test``.
        split_file: list file; ``None`` = ``<root>/filename_list_<split>_filtered.txt`` if present, else
            ``<split folder>/filename_list_<split>.txt``.
        min_depth, max_depth: valid range in metres (strict).
        resize: ``[height, width]`` (Marigold trains at ``[480, 640]``) or ``None``.
        image_interpolation: RGB resize mode (Marigold: ``nearest-exact``; default ``bilinear`` with antialiasing).
        intrinsics: add the ``intrinsics`` key.
        transforms, check, name: see :class:`~d3epth.data.base.BaseDepthDataset`.
    """

    default_name: ClassVar[str] = "hypersim"
    columns: ClassVar[tuple[str, ...]] = ("rgb", "depth")
    splits: ClassVar[tuple[str, ...]] = ("train", "val", "test")
    depth_scale: ClassVar[float] = 1000.0
    #: Horizontal field of view of every Hypersim camera, degrees.
    fov_deg: ClassVar[float] = 60.0

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        split_file: str | Path | None = None,
        min_depth: float = 1e-5,
        max_depth: float = 65.0,
        resize: Sequence[int] | None = None,
        image_interpolation: str = "bilinear",
        intrinsics: bool = True,
        transforms: Transform | Sequence[Transform] | None = None,
        check: str = "quick",
        name: str | None = None,
    ) -> None:
        self.with_intrinsics = intrinsics
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
        filtered = self.root / f"filename_list_{self.split}_filtered.txt"
        return filtered if filtered.is_file() else self._data_dir() / f"filename_list_{self.split}.txt"

    def _data_dir(self) -> DataPath:
        split_dir = self.root / self.split
        return split_dir if split_dir.is_dir() else self.root  # a root that is the split's folder (Marigold's tar)

    def _intrinsics(self, entry: dict[str, Any], height: int, width: int) -> Tensor | None:
        if not self.with_intrinsics:
            return None
        f = focal_from_fov(width, self.fov_deg)
        return pinhole(f, f, (width - 1) / 2.0, (height - 1) / 2.0)
