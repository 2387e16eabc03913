"""Write tiny datasets in the real on-disk layouts (Hypersim preprocessed, Virtual KITTI 2, NYUv2, KITTI) for tests.

Plain numpy + PIL writes, independent of ``d3epth.data.synthetic``; every writer returns what it wrote (RGB uint8
arrays and stored uint16 depth values) so tests compare what the readers return against it. Used by the data tests
and by ``benchmarks/data_throughput.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

#: Marigold's VKITTI variations, and the scene split (train / val).
VKITTI_VARIATIONS = ("clone", "15-deg-left", "15-deg-right", "morning", "overcast", "sunset")
VKITTI_SCENES = {"train": ("Scene02", "Scene06"), "val": ("Scene01",)}


@dataclass
class Written:
    """One written sample: list-relative paths and the arrays stored on disk."""

    rgb_rel: str
    depth_rel: str
    rgb: np.ndarray  # uint8 [H,W,3]
    depth: np.ndarray  # uint16 [H,W], stored encoding
    extra: dict


def write_png16(path: Path, arr: np.ndarray) -> None:
    """Save a uint16 [H,W] array as a 16-bit grey PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert arr.dtype == np.uint16
    Image.fromarray(arr).save(path)


def write_rgb(path: Path, arr: np.ndarray) -> None:
    """Save a uint8 [H,W,3] array (PNG lossless; JPEG at quality 100 for .jpg)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        img.save(path, quality=100, subsampling=0)
    else:
        img.save(path)


def make_rgb(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth gradient plus noise, uint8 [H,W,3] (compresses like a photo, not like pure noise)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([xx / max(width - 1, 1), yy / max(height - 1, 1), 0.5 + 0.0 * xx], axis=-1) * 200.0
    noise = rng.normal(0.0, 12.0, size=(height, width, 3))
    return np.clip(base + noise + 20.0, 0, 255).astype(np.uint8)


def make_depth(height: int, width: int, rng: np.random.Generator, low: int, high: int) -> np.ndarray:
    """Random stored depth values, uint16 [H,W], uniform in [low, high)."""
    return rng.integers(low, high, size=(height, width)).astype(np.uint16)


DepthFn = Callable[[int, int, np.random.Generator], np.ndarray]


def write_hypersim(
    root: Path,
    counts: dict[str, int] | None = None,
    size: tuple[int, int] = (24, 32),
    seed: int = 0,
    filtered: bool = False,
    depth_fn: DepthFn | None = None,
) -> dict[str, list[Written]]:
    """Marigold's preprocessed Hypersim layout under ``root`` (uint16 mm, 0 = invalid).

    Args:
        root: the ``hypersim`` folder to write.
        counts: samples per split (default train 4, val 2).
        size: ``(H, W)``.
        seed: RNG seed.
        filtered: also write ``<root>/filename_list_<split>_filtered.txt`` holding every other sample.
        depth_fn: ``(H, W, rng) -> uint16`` stored values; default uniform 0.5-20 m with a 0-valued hole.
    """
    counts = counts or {"train": 4, "val": 2}
    rng = np.random.default_rng(seed)
    height, width = size
    out: dict[str, list[Written]] = {}
    for split, n in counts.items():
        written = []
        for i in range(n):
            scene = f"ai_00{1 + i // 2}_00{1 + i % 2}"
            rgb_rel = f"{scene}/rgb_cam_00_fr{i:04d}.png"
            depth_rel = f"{scene}/depth_plane_cam_00_fr{i:04d}.png"
            rgb = make_rgb(height, width, rng)
            if depth_fn is not None:
                depth = depth_fn(height, width, rng)
            else:
                depth = make_depth(height, width, rng, 500, 20000)
                depth[: height // 4, : width // 4] = 0  # pixels without geometry
            write_rgb(root / split / rgb_rel, rgb)
            write_png16(root / split / depth_rel, depth)
            written.append(Written(rgb_rel, depth_rel, rgb, depth, {}))
        lines = [f"{w.rgb_rel} {w.depth_rel}" for w in written]
        (root / split / f"filename_list_{split}.txt").write_text("\n".join(lines))
        if filtered:
            (root / f"filename_list_{split}_filtered.txt").write_text("\n".join(lines[::2]))
        out[split] = written
    return out


def write_vkitti2(
    root: Path,
    split: str = "train",
    frames: int = 1,
    size: tuple[int, int] = (24, 40),
    seed: int = 0,
    list_file: bool = True,
    intrinsics: bool = True,
    variations: tuple[str, ...] = ("clone", "morning"),
    extra_variations: tuple[str, ...] = (),
) -> list[Written]:
    """Virtual KITTI 2 in Marigold's layout (uint16 cm; sky rows 65535 at the top).

    Writes ``frames`` frames for each scene of the split x ``variations`` x 2 cameras, plus ``extra_variations``
    (e.g. ``fog``, which Marigold's scan excludes) that are not listed. Intrinsics rows use fx = fy = 725.0087,
    cx = (W - 1) / 2 + camera, cy = (H - 1) / 2 + frame (distinct per row so lookups can be checked).
    """
    rng = np.random.default_rng(seed)
    height, width = size
    written = []
    for scene in VKITTI_SCENES[split]:
        for variation in (*variations, *extra_variations):
            rows = ["frame cameraID K[0,0] K[1,1] K[0,2] K[1,2]"]
            for frame in range(frames):
                for cam in (0, 1):
                    rgb_rel = f"rgb/{scene}/{variation}/frames/rgb/Camera_{cam}/rgb_{frame:05d}.jpg"
                    depth_rel = f"depth/{scene}/{variation}/frames/depth/Camera_{cam}/depth_{frame:05d}.png"
                    rgb = make_rgb(height, width, rng)
                    depth = make_depth(height, width, rng, 100, 7000)  # 1-70 m
                    depth[: max(1, height // 6)] = 65535  # sky
                    write_rgb(root / rgb_rel, rgb)
                    write_png16(root / depth_rel, depth)
                    rows.append(f"{frame} {cam} 725.0087 725.0087 {(width - 1) / 2 + cam} {(height - 1) / 2 + frame}")
                    if variation in variations:
                        written.append(Written(rgb_rel, depth_rel, rgb, depth, {"frame": frame, "cam": cam}))
            if intrinsics:
                path = root / "textgt" / scene / variation / "intrinsic.txt"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("\n".join(rows) + "\n")
    if list_file:
        (root / f"vkitti_{split}.txt").write_text("\n".join(f"{w.rgb_rel} {w.depth_rel}" for w in written))
    return written


def write_nyu(root: Path, n: int = 3, size: tuple[int, int] = (24, 32), seed: int = 0) -> list[Written]:
    """NYUv2 in Marigold's layout: raw depth (with zero holes) and a different, hole-free filled depth (uint16 mm)."""
    rng = np.random.default_rng(seed)
    height, width = size
    written = []
    for i in range(n):
        base = f"test/kitchen_{4 + i:04d}"
        rgb = make_rgb(height, width, rng)
        depth = make_depth(height, width, rng, 500, 9000)
        depth[-2:, :] = 0  # Kinect holes
        filled = make_depth(height, width, rng, 500, 9000)
        names = (f"{base}/rgb_0001.png", f"{base}/depth_0001.png", f"{base}/filled_0001.png")
        write_rgb(root / names[0], rgb)
        write_png16(root / names[1], depth)
        write_png16(root / names[2], filled)
        written.append(Written(names[0], names[1], rgb, depth, {"filled_rel": names[2], "filled": filled}))
    (root / "filename_list_test.txt").write_text(
        "\n".join(" ".join((w.rgb_rel, w.depth_rel, w.extra["filled_rel"])) for w in written)
    )
    return written


def write_kitti(
    root: Path, n: int = 3, n_none: int = 1, size: tuple[int, int] = (24, 40), seed: int = 0
) -> list[Written]:
    """KITTI Eigen test layout: sparse uint16 depth (/256 m), plus ``n_none`` rows whose depth column is ``None``."""
    rng = np.random.default_rng(seed)
    height, width = size
    written, lines = [], []
    for i in range(n + n_none):
        frame = f"{69 + i:010d}.png"
        rgb_rel = f"2011_09_26/2011_09_26_drive_0002_sync/image_02/data/{frame}"
        depth_rel = f"2011_09_26_drive_0002_sync/proj_depth/groundtruth/image_02/{frame}"
        rgb = make_rgb(height, width, rng)
        write_rgb(root / rgb_rel, rgb)
        if i >= n:
            lines.append(f"{rgb_rel} None 721.5377")
            continue
        depth = make_depth(height, width, rng, 256, 80 * 256)
        depth[rng.random((height, width)) < 0.7] = 0  # sparse LiDAR
        write_png16(root / depth_rel, depth)
        written.append(Written(rgb_rel, depth_rel, rgb, depth, {}))
        lines.append(f"{rgb_rel} {depth_rel} 721.5377")
    (root / "eigen_test_files_with_gt.txt").write_text("\n".join(lines))
    return written
