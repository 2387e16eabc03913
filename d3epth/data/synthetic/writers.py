"""Writers of the sample data in the on-disk layouts of the real datasets, and the split-list reader.

* :func:`write_hypersim_raw`: raw Hypersim (``ai_VVV_NNN/images/scene_cam_XX_{final,geometry}_hdf5/frame.IIII.*.hdf5``,
  payload under key ``"dataset"``) plus ``metadata_images_split_scene_v1.csv`` (``apple/ml-hypersim`` README).
* :func:`write_vkitti2`: Virtual KITTI 2 in Marigold's layout (``rgb/``, ``depth/`` in centimetres, ``textgt/``,
  ``vkitti_{train,val}.txt``; Marigold ``src/dataset/vkitti_dataset.py``, ``data_split/vkitti_depth/``).
* :func:`write_nyuv2`: NYUv2 as Marigold reads it (RGB PNGs, raw and filled depth as uint16 PNGs in millimetres,
  ``filename_list_test.txt``; Marigold ``src/dataset/nyu_dataset.py``).
* :func:`write_kitti`: KITTI Eigen test with sparse annotated depth (``proj_depth/groundtruth``, /256) and
  ``eigen_test_files_with_gt.txt`` (Marigold ``src/dataset/kitti_dataset.py``, ``data_split/kitti_depth/``).
"""

from __future__ import annotations

import csv
import functools
import multiprocessing
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from PIL import Image
from scipy import ndimage
from tqdm.auto import tqdm

from d3epth.data.synthetic.geometry import (
    KITTI_CAMERA,
    NYU_CAMERA,
    VKITTI_CAMERA,
    CameraPose,
)
from d3epth.data.synthetic.indoor import render_hypersim_frame
from d3epth.data.synthetic.render import RenderedFrame, _noise
from d3epth.data.synthetic.street import (
    _street_cached,
    _street_pose,
    render_street_frame,
)
from d3epth.data.vkitti2 import SCENES as VKITTI_SCENES
from d3epth.data.vkitti2 import VARIATIONS as VKITTI_VARIATIONS

HYPERSIM_CSV_COLUMNS = (
    "scene_name",
    "camera_name",
    "frame_id",
    "included_in_public_release",
    "exclude_reason",
    "split_partition_name",
)
"""Columns of Hypersim's ``metadata_images_split_scene_v1.csv`` (the ones Marigold reads, plus ``exclude_reason``)."""


# --------------------------------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------------------------------
def _map(fn: Callable[[Any], Any], tasks: Sequence[Any], workers: int, desc: str, progress: bool) -> list[Any]:
    """Run ``fn`` over ``tasks`` in order, in a process pool when ``workers > 1``, with a tqdm bar."""
    bar = functools.partial(tqdm, total=len(tasks), desc=desc, disable=not progress, unit="frame", leave=False)
    if workers <= 1 or len(tasks) <= 1:
        return [fn(t) for t in bar(tasks)]
    # Fork keeps start-up cheap (no re-import per worker); the workers only use numpy/h5py/PIL.
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
    chunk = max(1, len(tasks) // (workers * 16))
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        return list(bar(pool.map(fn, tasks, chunksize=chunk)))


def _check_size(name: str, width: int, height: int) -> None:
    if width < 8 or height < 8:
        raise ValueError(f"{name} resolution must be at least 8x8, got {width}x{height}")


def _save_png16(path: Path, arr: np.ndarray) -> None:
    """Save a uint16 [H,W] array as a 16-bit greyscale PNG."""
    Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint16)).save(path)


def _write_h5(path: Path, arr: np.ndarray) -> None:
    """Write ``arr`` under key ``"dataset"`` as Hypersim does (gzip, deterministic bytes)."""
    with h5py.File(path, "w") as f:
        f.create_dataset("dataset", data=arr, compression="gzip", compression_opts=1)


def hypersim_scene_names(n_train: int, n_val: int, n_test: int) -> dict[str, list[str]]:
    """Disjoint Hypersim-style scene names ``ai_VVV_NNN`` for each split (10 scenes per volume)."""
    names: dict[str, list[str]] = {}
    i = 0
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        names[split] = []
        for _ in range(n):
            names[split].append(f"ai_{i // 10 + 1:03d}_{i % 10 + 1:03d}")
            i += 1
    return names


def _hypersim_task(task: tuple[Any, ...]) -> None:
    """Worker: render one Hypersim frame and write its three HDF5 files (colour skipped for 'missing' frames)."""
    root, seed, split, si, scene, ci, fi, n_cam, n_fr, width, height, drop_color = task
    frame = render_hypersim_frame(seed, split, si, ci, fi, n_cam, n_fr, width, height)
    img_dir = Path(root) / scene / "images"
    final = img_dir / f"scene_cam_{ci:02d}_final_hdf5"
    geom = img_dir / f"scene_cam_{ci:02d}_geometry_hdf5"
    final.mkdir(parents=True, exist_ok=True)
    geom.mkdir(parents=True, exist_ok=True)
    if not drop_color:
        # Hypersim stores colour as float16 HDR radiance; depth here is float32 so 1 mm survives the round trip.
        _write_h5(final / f"frame.{fi:04d}.color.hdf5", frame.radiance.astype(np.float16))
    dist = np.where(frame.entity_id >= 0, frame.distance, np.nan).astype(np.float32)  # Hypersim: NaN where no geometry
    _write_h5(geom / f"frame.{fi:04d}.depth_meters.hdf5", dist)
    _write_h5(geom / f"frame.{fi:04d}.render_entity_id.hdf5", frame.entity_id.astype(np.int32))


def write_hypersim_raw(
    out_dir: str | os.PathLike[str],
    seed: int = 0,
    scenes: tuple[int, int, int] = (8, 2, 2),
    cameras_per_scene: int = 2,
    frames_per_camera: int = 8,
    width: int = 128,
    height: int = 96,
    missing_frames: int = 0,
    workers: int = 1,
    progress: bool = True,
) -> Path:
    """Write procedural indoor frames in the raw Hypersim layout with its split CSV.

    Per scene, one extra CSV row (camera 0, the frame after the last) is marked
    ``included_in_public_release = False`` and has no files, as unreleased Hypersim frames do.

    Args:
        out_dir: Destination (e.g. ``sample_data/hypersim_raw``).
        seed: Base seed.
        scenes: Number of scenes in (train, val, test).
        cameras_per_scene: Camera trajectories per scene (``cam_00``, ``cam_01`` ...).
        frames_per_camera: Frames per trajectory.
        width: Image width (Hypersim: 1024).
        height: Image height (Hypersim: 768).
        missing_frames: Number of released train frames whose ``color.hdf5`` is left out, imitating the known
            Hypersim defect of missing files.
        workers: Processes used for rendering.
        progress: Show a tqdm bar.

    Returns:
        Path of the written ``metadata_images_split_scene_v1.csv``.
    """
    _check_size("Hypersim", width, height)
    if min(scenes) < 0 or cameras_per_scene < 1 or frames_per_camera < 1:
        raise ValueError(
            f"need scenes >= 0, cameras >= 1, frames >= 1; got {scenes}, {cameras_per_scene}, {frames_per_camera}"
        )
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    names = hypersim_scene_names(*scenes)
    rows: list[tuple[str, str, int, bool, str, str]] = []
    tasks = []
    dropped = 0
    for split in ("train", "val", "test"):
        for si, scene in enumerate(names[split]):
            for ci in range(cameras_per_scene):
                for fi in range(frames_per_camera):
                    drop = split == "train" and dropped < missing_frames
                    dropped += int(drop)
                    tasks.append(
                        (
                            str(root),
                            seed,
                            split,
                            si,
                            scene,
                            ci,
                            fi,
                            cameras_per_scene,
                            frames_per_camera,
                            width,
                            height,
                            drop,
                        )
                    )
                    rows.append((scene, f"cam_{ci:02d}", fi, True, "", split))
            rows.append((scene, "cam_00", frames_per_camera, False, "not released (synthetic sample)", split))
    _map(_hypersim_task, tasks, workers, "hypersim raw", progress)
    csv_path = root / "metadata_images_split_scene_v1.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(HYPERSIM_CSV_COLUMNS)
        for scene, cam, fi, inc, reason, split in rows:
            writer.writerow([scene, cam, fi, "True" if inc else "False", reason, split])
    return csv_path


def _vkitti_task(task: tuple[Any, ...]) -> None:
    """Worker: render one Virtual KITTI 2 view and write its JPEG and uint16-centimetre depth PNG."""
    root, seed, split, si, scene, variation, cam, fi, width, height = task
    frame = render_street_frame(seed, "vkitti2", split, si, fi, VKITTI_CAMERA.scaled(width, height), variation, cam)
    rgb_dir = Path(root) / "rgb" / scene / variation / "frames" / "rgb" / cam
    dep_dir = Path(root) / "depth" / scene / variation / "frames" / "depth" / cam
    rgb_dir.mkdir(parents=True, exist_ok=True)
    dep_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(frame.rgb).save(rgb_dir / f"rgb_{fi:05d}.jpg", quality=95)
    # Centimetres; the sky (no geometry) and anything beyond the range saturate at 65535 = 655.35 m as in VKITTI 2.
    cm = np.where(frame.entity_id >= 0, np.round(frame.depth * 100.0), 65535.0)
    _save_png16(dep_dir / f"depth_{fi:05d}.png", np.clip(cm, 0, 65535).astype(np.uint16))


def write_vkitti2(
    out_dir: str | os.PathLike[str],
    seed: int = 0,
    frames_per_sequence: int = 2,
    width: int = 416,
    height: int = 128,
    variations: Sequence[str] = VKITTI_VARIATIONS,
    workers: int = 1,
    progress: bool = True,
) -> tuple[Path, Path]:
    """Write procedural street frames in Virtual KITTI 2's layout plus Marigold's two list files.

    Train = Scenes 02/06/18/20, val = Scene01, each × ``variations`` × Camera_0/1 × ``frames_per_sequence``
    (all variations of a scene share geometry and trajectory, as in VKITTI 2). ``textgt/<scene>/<variation>/
    intrinsic.txt`` holds the intrinsics scaled to ``width`` x ``height``.

    Args:
        out_dir: Destination root (e.g. ``sample_data/vkitti2``), gets ``rgb/``, ``depth/``, ``textgt/``.
        seed: Base seed.
        frames_per_sequence: Frames per scene × variation × camera.
        width: Image width (VKITTI 2: 1242).
        height: Image height (VKITTI 2: 375).
        variations: Subset of :data:`VKITTI_VARIATIONS`.
        workers: Processes used for rendering.
        progress: Show a tqdm bar.

    Returns:
        Paths of ``vkitti_train.txt`` and ``vkitti_val.txt``.
    """
    _check_size("VKITTI", width, height)
    unknown = [v for v in variations if v not in VKITTI_VARIATIONS]
    if unknown or frames_per_sequence < 1:
        raise ValueError(
            f"variations must be from {VKITTI_VARIATIONS} and frames >= 1; got {list(variations)}, "
            f"{frames_per_sequence}"
        )
    root = Path(out_dir)
    cam = VKITTI_CAMERA.scaled(width, height)
    tasks, lists = [], {"train": [], "val": []}
    for split, scenes in VKITTI_SCENES.items():
        for si, scene in enumerate(scenes):
            for variation in variations:
                intr = root / "textgt" / scene / variation / "intrinsic.txt"
                intr.parent.mkdir(parents=True, exist_ok=True)
                lines = ["frame cameraID K[0,0] K[1,1] K[0,2] K[1,2]"]
                for fi in range(frames_per_sequence):
                    for c in (0, 1):
                        lines.append(f"{fi} {c} {cam.fx:.4f} {cam.fy:.4f} {cam.cx:.4f} {cam.cy:.4f}")
                intr.write_text("\n".join(lines) + "\n")
                for camera in ("Camera_0", "Camera_1"):
                    for fi in range(frames_per_sequence):
                        tasks.append((str(root), seed, split, si, scene, variation, camera, fi, width, height))
                        lists[split].append(
                            f"rgb/{scene}/{variation}/frames/rgb/{camera}/rgb_{fi:05d}.jpg "
                            f"depth/{scene}/{variation}/frames/depth/{camera}/depth_{fi:05d}.png"
                        )
    _map(_vkitti_task, tasks, workers, "vkitti2", progress)
    paths = []
    for split in ("train", "val"):
        path = root / f"vkitti_{split}.txt"
        path.write_text("\n".join(lists[split]))  # Marigold's lists have no final newline
        paths.append(path)
    return paths[0], paths[1]


_NYU_SCENES = ("kitchen", "bedroom", "living_room", "office", "bathroom", "dining_room", "classroom", "study")


def _nyu_task(task: tuple[Any, ...]) -> None:
    """Worker: render one NYUv2-like frame; write RGB, raw depth with Kinect-like holes and a hole-filled depth."""
    root, seed, si, fi_in_scene, n_frames, scene, index, width, height = task
    cam = NYU_CAMERA.scaled(width, height)
    frame = render_hypersim_frame(seed, "test", si, 0, fi_in_scene, 1, n_frames, width, height, "nyuv2", cam)
    depth = np.where(frame.entity_id >= 0, frame.depth, 0.0)
    rng = np.random.default_rng([seed, si, fi_in_scene])
    raw = depth.copy()
    raw[raw > 10.0] = 0.0  # beyond the Kinect's range
    # Holes at depth discontinuities (the projector's shadow) and a few random dropout blobs.
    edges = ndimage.maximum_filter(depth, size=3) - ndimage.minimum_filter(depth, size=3) > 0.25
    raw[ndimage.binary_dilation(edges, iterations=max(1, width // 160))] = 0.0
    # Irregular dropout patches (specular or dark surfaces): thresholded smooth noise.
    yy, xx = np.mgrid[:height, :width] / max(width, height)
    blobs = _noise(xx * 4.0, yy * 4.0, 1.0, int(rng.integers(1 << 30)))
    raw[blobs > np.quantile(blobs, 1.0 - rng.uniform(0.005, 0.03))] = 0.0
    # "Filled" map: every hole takes the value of its nearest measured pixel.
    valid = raw > 0
    if valid.any():
        idx = ndimage.distance_transform_edt(~valid, return_distances=False, return_indices=True)
        filled = raw[idx[0], idx[1]]
    else:
        filled = raw
    out = Path(root) / "test" / scene
    out.mkdir(parents=True, exist_ok=True)
    Image.fromarray(frame.rgb).save(out / f"rgb_{index:04d}.png")
    _save_png16(out / f"depth_{index:04d}.png", np.round(np.clip(raw * 1000.0, 0, 65535)).astype(np.uint16))
    _save_png16(out / f"filled_{index:04d}.png", np.round(np.clip(filled * 1000.0, 0, 65535)).astype(np.uint16))


def write_nyuv2(
    out_dir: str | os.PathLike[str],
    seed: int = 0,
    num_frames: int = 8,
    width: int = 320,
    height: int = 240,
    frames_per_scene: int = 2,
    workers: int = 1,
    progress: bool = True,
) -> Path:
    """Write NYUv2-like indoor test frames: ``test/<scene>/{rgb,depth,filled}_NNNN.png`` (depth uint16 mm).

    Raw depth has holes (0) at depth edges, in random blobs, beyond 10 m and where nothing is hit; the filled
    map closes them with the nearest measured value. Intrinsics are NYUv2's Kinect scaled to the size.

    Args:
        out_dir: Destination root (e.g. ``sample_data/nyuv2``).
        seed: Base seed.
        num_frames: Number of frames.
        width: Image width (NYUv2: 640).
        height: Image height (NYUv2: 480).
        frames_per_scene: Frames per scene (scenes are named ``kitchen_0004``-style).
        workers: Processes used for rendering.
        progress: Show a tqdm bar.

    Returns:
        Path of ``filename_list_test.txt``.
    """
    _check_size("NYUv2", width, height)
    if num_frames < 1 or frames_per_scene < 1:
        raise ValueError(f"num_frames and frames_per_scene must be >= 1, got {num_frames}, {frames_per_scene}")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    tasks, lines = [], []
    for k in range(num_frames):
        si, fi = divmod(k, frames_per_scene)
        scene = f"{_NYU_SCENES[si % len(_NYU_SCENES)]}_{4 + 3 * si:04d}"
        index = k + 1
        tasks.append((str(root), seed, si, fi, frames_per_scene, scene, index, width, height))
        lines.append(
            f"test/{scene}/rgb_{index:04d}.png test/{scene}/depth_{index:04d}.png test/{scene}/filled_{index:04d}.png"
        )
    _map(_nyu_task, tasks, workers, "nyuv2", progress)
    path = root / "filename_list_test.txt"
    path.write_text("\n".join(lines))
    return path


_KITTI_DRIVES = (
    "2011_09_26_drive_0002_sync",
    "2011_09_26_drive_0009_sync",
    "2011_09_26_drive_0013_sync",
    "2011_09_26_drive_0020_sync",
    "2011_09_26_drive_0023_sync",
    "2011_09_26_drive_0027_sync",
    "2011_09_28_drive_0002_sync",
    "2011_09_29_drive_0071_sync",
    "2011_09_30_drive_0016_sync",
    "2011_10_03_drive_0047_sync",
)


def lidar_mask(frame: RenderedFrame, pose: CameraPose, rng: np.random.Generator, keep: float = 0.35) -> np.ndarray:
    """Pixels a Velodyne HDL-64-like scanner would measure: 64 beams from +2 to -24.8 degrees, random dropout.

    Args:
        frame: Rendered view (its world hit points are used).
        pose: Camera pose; the scanner sits 0.08 m above the camera.
        rng: Random generator for the dropout.
        keep: Fraction of in-beam pixels kept (KITTI's ground truth is sparse even after accumulation).

    Returns:
        bool [H,W], True where a depth value is recorded.
    """
    h, w = frame.depth.shape
    p = frame.points
    lidar = np.asarray(pose.position).reshape(3, 1) + np.array([[0.0], [0.0], [0.08]])
    q = p - lidar
    elev = np.degrees(np.arctan2(q[2], np.hypot(q[0], q[1])))
    beams = np.linspace(2.0, -24.8, 64)
    spacing = abs(beams[1] - beams[0])
    nearest = np.clip(np.round((2.0 - elev) / spacing), 0, 63)
    on_beam = np.abs(elev - (2.0 - nearest * spacing)) < 0.35 * spacing
    on_beam &= (elev <= 2.0 + 0.35 * spacing) & (elev >= -24.8 - 0.35 * spacing)
    mask = on_beam.reshape(h, w) & np.isfinite(frame.depth) & (frame.depth < 100.0) & (frame.entity_id >= 0)
    return mask & (rng.random((h, w)) < keep)


def _kitti_task(task: tuple[Any, ...]) -> None:
    """Worker: render one KITTI-like frame; write the RGB PNG and (unless ``with_gt`` is False) sparse GT."""
    root, seed, si, fi, drive, frame_id, width, height, with_gt = task
    cam = KITTI_CAMERA.scaled(width, height)
    frame = render_street_frame(seed, "kitti", "test", si, fi, cam, "clone", None)
    date = drive[:10]
    rgb_dir = Path(root) / date / drive / "image_02" / "data"
    rgb_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(frame.rgb).save(rgb_dir / f"{frame_id:010d}.png")
    if with_gt:
        _, layout = _street_cached(seed, "kitti", "test", si)
        mask = lidar_mask(frame, _street_pose(layout, fi, 0.0, None), np.random.default_rng([seed, si, fi]))
        gt = np.where(mask, np.round(frame.depth * 256.0), 0.0)
        gt_dir = Path(root) / drive / "proj_depth" / "groundtruth" / "image_02"
        gt_dir.mkdir(parents=True, exist_ok=True)
        _save_png16(gt_dir / f"{frame_id:010d}.png", np.clip(gt, 0, 65535).astype(np.uint16))


def write_kitti(
    out_dir: str | os.PathLike[str],
    seed: int = 0,
    num_frames: int = 8,
    width: int = 416,
    height: int = 128,
    frames_per_drive: int = 2,
    num_without_gt: int = 1,
    workers: int = 1,
    progress: bool = True,
) -> Path:
    """Write KITTI-like Eigen-test frames: RGB PNGs, sparse LiDAR-like uint16 (/256 m) ground truth, the list.

    The list ``eigen_test_files_with_gt.txt`` has "rgb depth focal" rows, the focal scaled to ``width``; the last
    ``num_without_gt`` rows have depth ``None`` and no ground-truth file, as 45 rows of the real list do.

    Args:
        out_dir: Destination root (e.g. ``sample_data/kitti``).
        seed: Base seed.
        num_frames: Number of frames (rows).
        width: Image width (KITTI: ~1242).
        height: Image height (KITTI: ~375).
        frames_per_drive: Consecutive frames per drive (scene).
        num_without_gt: Rows whose depth is ``None``.
        workers: Processes used for rendering.
        progress: Show a tqdm bar.

    Returns:
        Path of ``eigen_test_files_with_gt.txt``.
    """
    _check_size("KITTI", width, height)
    if num_frames < 1 or frames_per_drive < 1 or not 0 <= num_without_gt <= num_frames:
        raise ValueError(
            f"need num_frames >= 1, frames_per_drive >= 1, 0 <= num_without_gt <= num_frames; got "
            f"{num_frames}, {frames_per_drive}, {num_without_gt}"
        )
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    cam = KITTI_CAMERA.scaled(width, height)
    tasks, lines = [], []
    for k in range(num_frames):
        si, fi = divmod(k, frames_per_drive)
        drive = _KITTI_DRIVES[si % len(_KITTI_DRIVES)]
        if si >= len(_KITTI_DRIVES):  # more drives than names: keep them distinct
            drive = drive.replace("_sync", f"{si // len(_KITTI_DRIVES)}_sync")
        frame_id = 69 + 10 * fi
        with_gt = k < num_frames - num_without_gt
        tasks.append((str(root), seed, si, fi, drive, frame_id, width, height, with_gt))
        depth = f"{drive}/proj_depth/groundtruth/image_02/{frame_id:010d}.png" if with_gt else "None"
        lines.append(f"{drive[:10]}/{drive}/image_02/data/{frame_id:010d}.png {depth} {cam.fx:.4f}")
    _map(_kitti_task, tasks, workers, "kitti", progress)
    path = root / "eigen_test_files_with_gt.txt"
    path.write_text("\n".join(lines))
    return path


def iter_split_rows(path: str | os.PathLike[str]) -> Iterable[list[str]]:
    """Whitespace-split rows of a Marigold-style list file, skipping blank lines."""
    with open(path) as f:
        for line in f:
            if line.strip():
                yield line.split()
