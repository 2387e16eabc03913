"""Virtual KITTI 2 in Marigold's layout: extracted ``rgb`` and ``depth`` tars side by side, plus ``textgt``.

Layout::

    <root>/rgb/Scene02/clone/frames/rgb/Camera_0/rgb_00000.jpg           8-bit JPEG, 375x1242
    <root>/depth/Scene02/clone/frames/depth/Camera_0/depth_00000.png     uint16 centimetres; sky = 65535 (655.35 m)
    <root>/textgt/Scene02/clone/intrinsic.txt                            "frame cameraID K[0,0] K[1,1] K[0,2] K[1,2]"
    <root>/vkitti_train.txt, vkitti_val.txt                              Marigold lists, paths relative to <root>

Without a list file the split is found by scanning the folders with Marigold's rule: train = Scenes 02/06/18/20,
val = Scene01, variations clone, 15-deg-left, 15-deg-right, morning, overcast, sunset (no fog, rain, 30-deg-*),
both cameras.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from torch import Tensor

from d3epth.data.base import BaseDepthDataset, pinhole
from d3epth.data.storage import DataPath
from d3epth.data.transforms import Transform

#: Marigold's scene split.
SCENES: dict[str, tuple[str, ...]] = {"train": ("Scene02", "Scene06", "Scene18", "Scene20"), "val": ("Scene01",)}
#: Marigold's variations (fog, rain and the 30-degree ones are excluded).
VARIATIONS: tuple[str, ...] = ("clone", "15-deg-left", "15-deg-right", "morning", "overcast", "sunset")
#: Stored value of sky pixels (655.35 m).
SKY_VALUE = 65535

_FRAME_RE = re.compile(r"(Scene\d+)/([^/]+)/frames/rgb/Camera_(\d+)/rgb_(\d+)\.\w+$")


def read_intrinsics_file(path: DataPath) -> dict[tuple[int, int], tuple[float, float, float, float]]:
    """Parse a VKITTI 2 ``intrinsic.txt``: ``{(frame, camera): (fx, fy, cx, cy)}``.

    Raises:
        ValueError: a row that is not ``frame cameraID fx fy cx cy`` (names the file and line).
    """
    table: dict[tuple[int, int], tuple[float, float, float, float]] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts or parts[0] == "frame":  # header
            continue
        try:
            if len(parts) != 6:
                raise ValueError(f"{len(parts)} columns")
            frame, cam = int(parts[0]), int(parts[1])
            fx, fy, cx, cy = (float(p) for p in parts[2:])
        except ValueError as err:
            raise ValueError(
                f"{path}:{lineno}: expected 'frame cameraID K[0,0] K[1,1] K[0,2] K[1,2]', got {line.strip()!r} ({err})"
            ) from err
        table[(frame, cam)] = (fx, fy, cx, cy)
    return table


class VirtualKITTI2Dataset(BaseDepthDataset):
    """Virtual KITTI 2, depth = stored centimetres / 100, valid 1e-5 < d < 80 m and not sky; KB crop by default.

    Sky (stored 65535 = 655.35 m) is invalid whatever ``max_depth`` is, and its ``depth_norm`` is +1 (far plane), as
    in Marigold. ``intrinsics`` come from ``textgt/<scene>/<variation>/intrinsic.txt`` when those files exist for every
    listed frame (otherwise the key is left out for the whole dataset, with a warning if only some exist).

    Args:
        root: folder holding ``rgb/`` and ``depth/`` (e.g. ``sample_data/vkitti2``).
        split: ``train`` or ``val``.
        split_file: list file; ``None`` = ``<root>/vkitti_<split>.txt``, or a folder scan when that does not exist.
        min_depth, max_depth: valid range in metres (strict).
        kb_crop: KITTI benchmark crop 352x1216 (bottom rows, centred); turn off for smaller generated frames.
        resize: ``[height, width]`` after the crop, or ``None`` (Marigold trains VKITTI at 352x1216).
        image_interpolation: RGB resize mode.
        intrinsics: add the ``intrinsics`` key when the intrinsic files exist.
        transforms, check, name: see :class:`~d3epth.data.base.BaseDepthDataset`.
    """

    default_name: ClassVar[str] = "vkitti2"
    columns: ClassVar[tuple[str, ...]] = ("rgb", "depth")
    splits: ClassVar[tuple[str, ...]] = ("train", "val")
    depth_scale: ClassVar[float] = 100.0

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        split_file: str | Path | None = None,
        min_depth: float = 1e-5,
        max_depth: float = 80.0,
        kb_crop: bool = True,
        resize: Sequence[int] | None = None,
        image_interpolation: str = "bilinear",
        intrinsics: bool = True,
        transforms: Transform | Sequence[Transform] | None = None,
        check: str = "quick",
        name: str | None = None,
    ) -> None:
        self.with_intrinsics = intrinsics
        self._scan_if_missing = split_file is None
        self._k_tables: dict[DataPath, dict[tuple[int, int], tuple[float, float, float, float]]] | None = None
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
        return self.root / f"vkitti_{self.split}.txt"

    def _read_list(self) -> list[dict[str, Any]]:
        if self.split_file.is_file() or not self._scan_if_missing:
            return super()._read_list()
        return self._scan()

    def _scan(self) -> list[dict[str, Any]]:
        """List the split's frames from the folders (Marigold's scene/variation rule), sorted."""
        entries = []
        for scene in SCENES[self.split]:
            for variation in VARIATIONS:
                for cam_dir in sorted((self.root / "rgb" / scene / variation / "frames" / "rgb").glob("Camera_*")):
                    for rgb in sorted(cam_dir.glob("rgb_*.jpg")):
                        rel = rgb.relative_to(self.root).as_posix()
                        depth_rel = rel.replace("rgb/", "depth/", 1).replace("/frames/rgb/", "/frames/depth/")
                        depth_rel = re.sub(r"rgb_(\d+)\.jpg$", r"depth_\1.png", depth_rel)
                        entries.append(
                            {
                                "rgb": rgb,
                                "depth": self.root / depth_rel,
                                "rel": rel,
                                "where": f"folder scan of {cam_dir}",
                            }
                        )
        if not entries:
            raise FileNotFoundError(
                f"VirtualKITTI2Dataset: no list file {self.split_file} and no frames found by scanning "
                f"{self.root}/rgb/<{'|'.join(SCENES[self.split])}>/<variation>/frames/rgb/Camera_N/rgb_NNNNN.jpg"
            )
        return entries

    def _after_list(self) -> None:
        if not self.with_intrinsics:
            return
        needed: dict[DataPath, list[dict[str, Any]]] = {}
        for entry in self.entries:
            match = _FRAME_RE.search(str(entry["rel"]))
            if match is None:
                return  # path not in the VKITTI naming scheme: intrinsics unknown
            scene, variation, cam, frame = match.groups()
            entry["frame_cam"] = (int(frame), int(cam))
            path = self.root / "textgt" / scene / variation / "intrinsic.txt"
            entry["k_file"] = path
            needed.setdefault(path, []).append(entry)
        present = [p for p in needed if p.is_file()]
        if len(present) < len(needed):
            if present:
                missing = [str(p) for p in needed if not p.is_file()]
                warnings.warn(
                    f"VirtualKITTI2Dataset: {len(missing)} of {len(needed)} intrinsic.txt files missing "
                    f"(e.g. {missing[0]}); samples get no 'intrinsics' key",
                    stacklevel=3,
                )
            return
        tables = {path: read_intrinsics_file(path) for path in needed}
        for path, entries in needed.items():
            for entry in entries:
                if entry["frame_cam"] not in tables[path]:
                    frame, cam = entry["frame_cam"]
                    raise ValueError(f"{path}: no row for frame {frame}, camera {cam} (needed by {entry['rgb']})")
        self._k_tables = tables

    def _extra_invalid(self, raw: np.ndarray) -> np.ndarray | None:
        return raw == SKY_VALUE

    def _intrinsics(self, entry: dict[str, Any], height: int, width: int) -> Tensor | None:
        if self._k_tables is None:
            return None
        return pinhole(*self._k_tables[entry["k_file"]][entry["frame_cam"]])
