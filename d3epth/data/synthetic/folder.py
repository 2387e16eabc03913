"""A sample "own data" folder in the layout :class:`~d3epth.data.folder.FolderDepthDataset` reads.

::

    <root>/train/rgb/room00_f00.png     8-bit RGB
    <root>/train/depth/room00_f00.png   depth: uint16 millimetres (depth_scale 1000), or .npy / .tiff float metres
    <root>/val/rgb/...  <root>/val/depth/...

The frames are the procedural indoor rooms of :mod:`d3epth.data.synthetic.indoor` (exact planar depth); pixels that
hit nothing are 0 (no depth). The rooms come from the NYUv2 stream of train/val (the NYUv2-like sample data uses
its test stream), so they are not frames of the other sample datasets.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from d3epth.data.synthetic.indoor import render_hypersim_frame

#: Depth encodings :func:`write_own_folder` writes.
OWN_DEPTH_FORMATS: tuple[str, ...] = ("png", "npy", "tiff")


def write_own_folder(
    root: str | os.PathLike[str],
    train_frames: int = 6,
    val_frames: int = 2,
    width: int = 64,
    height: int = 48,
    seed: int = 0,
    depth_format: str = "png",
) -> dict[str, list[str]]:
    """Write ``train/`` and ``val/`` RGB + depth folders paired by stem; returns the stems per split.

    Args:
        root: output folder.
        train_frames: training frames (4 frames per room).
        val_frames: validation frames (rooms of their own).
        width: frame width in pixels.
        height: frame height in pixels.
        seed: base seed (same seed, same bytes).
        depth_format: ``"png"`` (uint16 mm), ``"npy"`` (float32 m) or ``"tiff"`` (float32 m).
    """
    if depth_format not in OWN_DEPTH_FORMATS:
        raise ValueError(f"depth_format must be one of {OWN_DEPTH_FORMATS}, got {depth_format!r}")
    root = Path(root)
    stems: dict[str, list[str]] = {}
    for split, n in (("train", train_frames), ("val", val_frames)):
        (root / split / "rgb").mkdir(parents=True, exist_ok=True)
        (root / split / "depth").mkdir(parents=True, exist_ok=True)
        stems[split] = []
        for i in range(n):
            room, frame_index = divmod(i, 4)
            frame = render_hypersim_frame(seed, split, room, 0, frame_index, 1, 4, width, height, "nyuv2")
            depth = np.where((frame.entity_id >= 0) & np.isfinite(frame.depth), frame.depth, 0.0).astype(np.float32)
            stem = f"room{room:02d}_f{frame_index:02d}"
            Image.fromarray(frame.rgb).save(root / split / "rgb" / f"{stem}.png")
            target = root / split / "depth" / stem
            if depth_format == "png":
                mm = np.round(np.clip(depth * 1000.0, 0, 65535)).astype(np.uint16)
                Image.fromarray(mm).save(target.with_suffix(".png"))
            elif depth_format == "npy":
                np.save(target.with_suffix(".npy"), depth)
            else:
                Image.fromarray(depth, mode="F").save(target.with_suffix(".tiff"))
            stems[split].append(stem)
    return stems
