"""Convert raw Hypersim into Marigold's preprocessed layout (the library behind ``tools/prepare_hypersim.py``).

Reads ``<dataset-dir>/<scene>/images/scene_<cam>_{final,geometry}_hdf5/frame.NNNN.{color,depth_meters,
render_entity_id}.hdf5`` for the rows of ``metadata_images_split_scene_v1.csv`` that are in the public release and
writes, per split::

    <output-dir>/<split>/<scene>/rgb_<cam>_frNNNN.png          8-bit RGB, Hypersim's tone mapping
    <output-dir>/<split>/<scene>/depth_plane_<cam>_frNNNN.png  uint16 planar depth in mm, 0 = invalid
    <output-dir>/<split>/filename_list_<split>.txt             unfiltered "rgb depth" list
    <output-dir>/<split>/filename_meta_<split>.csv             csv columns + rgb/depth stats + invalid_ratio
    <output-dir>/filename_list_<split>_filtered.txt            Marigold's quality filter

as Marigold's ``script/depth/dataset_preprocess/hypersim/preprocess_hypersim.py`` and ``hypersim_util.py`` do
(raw layout: Roberts et al., "Hypersim", ICCV 2021, and the ``apple/ml-hypersim`` README).
Differences, all deliberate: the focal length comes from the actual image width (``(W/2)/tan(30°)``, 886.81 px at
1024), depths above 65.535 m saturate instead of wrapping around, frames with missing HDF5 files (a known Hypersim
defect) are reported and skipped instead of stopping the run, and the filtered list is written here too.

:func:`prepare_hypersim` converts a whole release and is resumable: a frame whose two PNGs already exist and decode
is not converted again. The pieces (:func:`tone_map`, :func:`focal_length`, :func:`distance_to_depth`,
:func:`convert_frame`, :func:`read_split_csv`) are usable on their own.
"""

from __future__ import annotations

import csv
import math
import multiprocessing
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
from PIL import Image
from tqdm.auto import tqdm

HFOV_DEG = 60.0
"""Hypersim's horizontal field of view in degrees (HS README)."""

MIN_DEPTH_RANGE = 0.5
"""Marigold's filter: minimum (max - min) of valid planar depth in metres (Marigold issue #158)."""

MIN_RGB_RANGE = 10
"""Marigold's filter: minimum (max - min) of the 8-bit RGB values."""

MAX_INVALID_RATIO = 0.03
"""Marigold's filter: maximum fraction of pixels without geometry (render_entity_id == -1)."""

CSV_NAME = "metadata_images_split_scene_v1.csv"
REQUIRED_COLUMNS = ("scene_name", "camera_name", "frame_id", "included_in_public_release", "split_partition_name")
STAT_COLUMNS = (
    "rgb_path",
    "rgb_mean",
    "rgb_std",
    "rgb_min",
    "rgb_max",
    "depth_path",
    "depth_mean",
    "depth_std",
    "depth_min",
    "depth_max",
    "invalid_ratio",
)
SPLITS = ("train", "val", "test")


# --------------------------------------------------------------------------------------------------------------------
# Reusable conversions
# --------------------------------------------------------------------------------------------------------------------
def tone_map(rgb: np.ndarray, entity_id: np.ndarray) -> np.ndarray:
    """Hypersim's tone mapping of linear HDR radiance (``scene_generate_images_tonemap.py``).

    The 90th percentile of the brightness 0.3R + 0.59G + 0.11B over valid pixels (entity id != -1) is scaled to
    0.8 after gamma 1/2.2: ``scale = 0.8**2.2 / p90`` (0 if p90 < 1e-4, 1 if no pixel is valid); the output is
    ``clip(max(scale * rgb, 0) ** (1/2.2), 0, 1)``.

    Args:
        rgb: float [H,W,3] linear radiance.
        entity_id: int [H,W]; -1 where no geometry was hit.

    Returns:
        float64 [H,W,3] in [0, 1].
    """
    rgb = np.asarray(rgb, dtype=np.float64)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or entity_id.shape != rgb.shape[:2]:
        raise ValueError(f"tone_map expects rgb [H,W,3] and entity_id [H,W], got {rgb.shape} and {entity_id.shape}")
    gamma = 1.0 / 2.2
    valid = entity_id != -1
    if not valid.any():
        scale = 1.0
    else:
        brightness = 0.3 * rgb[..., 0] + 0.59 * rgb[..., 1] + 0.11 * rgb[..., 2]
        p90 = np.percentile(brightness[valid], 90)
        scale = 0.0 if p90 < 1e-4 else 0.8 ** (1.0 / gamma) / p90
    return np.clip(np.power(np.maximum(scale * rgb, 0.0), gamma), 0.0, 1.0)


def focal_length(width: int, hfov_deg: float = HFOV_DEG) -> float:
    """Focal length in pixels of a centred pinhole with the given horizontal field of view: (W/2) / tan(hfov/2)."""
    if width <= 0:
        raise ValueError(f"image width must be positive, got {width}")
    return 0.5 * width / math.tan(math.radians(hfov_deg) / 2.0)


def distance_to_depth(distance: np.ndarray, focal: float) -> np.ndarray:
    """Convert Hypersim's ray distance to planar depth.

    Pixel (u, v) has image-plane coordinates x = u - W/2 + 0.5, y = v - H/2 + 0.5, z = f, and
    depth = distance * f / sqrt(x² + y² + f²).

    Args:
        distance: float [H,W], Euclidean distance to the optical centre in metres (NaN allowed).
        focal: Focal length in pixels.

    Returns:
        float64 [H,W] planar depth in metres.
    """
    distance = np.asarray(distance, dtype=np.float64)
    if distance.ndim != 2:
        raise ValueError(f"distance must be [H, W], got shape {distance.shape}")
    h, w = distance.shape
    x = np.arange(w, dtype=np.float64) - w / 2 + 0.5
    y = np.arange(h, dtype=np.float64) - h / 2 + 0.5
    norm = np.sqrt(x[None, :] ** 2 + y[:, None] ** 2 + focal**2)
    return distance * (focal / norm)


# --------------------------------------------------------------------------------------------------------------------
# Per-frame conversion
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class FrameResult:
    """Outcome of one CSV row: output paths and Marigold's stats, or the missing input files."""

    row_index: int
    rgb_path: str = ""
    depth_path: str = ""
    stats: dict[str, float] = field(default_factory=dict)
    depth_range: float = 0.0
    rgb_range: float = 0.0
    missing: list[str] = field(default_factory=list)
    resumed: bool = False


def raw_paths(dataset_dir: Path, scene: str, camera: str, frame_id: int) -> tuple[Path, Path, Path]:
    """Paths of the colour, ray-distance and entity-id HDF5 files of one Hypersim frame."""
    images = dataset_dir / scene / "images"
    geometry = images / f"scene_{camera}_geometry_hdf5"
    return (
        images / f"scene_{camera}_final_hdf5" / f"frame.{frame_id:04d}.color.hdf5",
        geometry / f"frame.{frame_id:04d}.depth_meters.hdf5",
        geometry / f"frame.{frame_id:04d}.render_entity_id.hdf5",
    )


def read_hdf5(path: Path) -> np.ndarray:
    """The array under key ``"dataset"`` of a Hypersim HDF5 file; a clear error names a corrupt file."""
    try:
        with h5py.File(path, "r") as f:
            if "dataset" not in f:
                raise ValueError(f"Hypersim HDF5 file {path} has no 'dataset' key (keys: {list(f.keys())})")
            return np.asarray(f["dataset"])
    except OSError as e:
        raise ValueError(f"cannot read Hypersim HDF5 file {path} (corrupt or not HDF5): {e}") from e


def _stats(rgb_int: np.ndarray, depth_mm: np.ndarray, invalid_ratio: float) -> tuple[dict[str, float], float, float]:
    """Marigold's meta stats (over all pixels, invalid zeros included) plus the valid depth range and RGB range."""
    depth = depth_mm / 1000.0
    valid = depth_mm > 0
    stats = {
        "rgb_mean": float(rgb_int.mean()),
        "rgb_std": float(rgb_int.std()),
        "rgb_min": float(rgb_int.min()),
        "rgb_max": float(rgb_int.max()),
        "depth_mean": float(depth.mean()),
        "depth_std": float(depth.std()),
        "depth_min": float(depth.min()),
        "depth_max": float(depth.max()),
        "invalid_ratio": float(invalid_ratio),
    }
    depth_range = float(depth[valid].max() - depth[valid].min()) if valid.any() else 0.0
    return stats, depth_range, float(int(rgb_int.max()) - int(rgb_int.min()))


def _readable_outputs(rgb_file: Path, depth_file: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """Both output PNGs decoded, if they exist, decode and agree in size; else None (the frame is redone)."""
    if not (rgb_file.is_file() and depth_file.is_file()):
        return None
    try:
        with Image.open(rgb_file) as im:
            rgb = np.asarray(im.convert("RGB"))
        with Image.open(depth_file) as im:
            depth = np.asarray(im)
    except (OSError, ValueError):
        return None
    if rgb.shape[:2] != depth.shape or depth.ndim != 2:
        return None
    return rgb, depth.astype(np.uint16)


def _save_png_atomic(path: Path, image: Image.Image) -> None:
    """Write a PNG under a temporary name and rename it, so an interrupted run never leaves a truncated file."""
    tmp = path.with_name(path.name + ".tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)


def convert_frame(
    dataset_dir: str | os.PathLike[str],
    split_dir: str | os.PathLike[str],
    row_index: int,
    scene: str,
    camera: str,
    frame_id: int,
    overwrite: bool = False,
) -> FrameResult:
    """Convert one raw Hypersim frame to Marigold's PNG pair (or reuse the pair if it already exists).

    Args:
        dataset_dir: Raw Hypersim root (holds the ``ai_VVV_NNN`` scene folders).
        split_dir: Output folder of the frame's split.
        row_index: Row of the frame in the split CSV (kept as the meta CSV index, as pandas writes it).
        scene: ``scene_name``.
        camera: ``camera_name`` (``cam_00``).
        frame_id: ``frame_id``.
        overwrite: Convert even if readable outputs exist.

    Returns:
        The frame's result; ``missing`` lists absent input files (the frame is then skipped).

    Raises:
        ValueError: An input HDF5 file is corrupt or has unexpected shapes (the message names the file).
    """
    dataset_dir, split_dir = Path(dataset_dir), Path(split_dir)
    rgb_rel = f"{scene}/rgb_{camera}_fr{frame_id:04d}.png"
    depth_rel = f"{scene}/depth_plane_{camera}_fr{frame_id:04d}.png"
    result = FrameResult(row_index, rgb_rel, depth_rel)
    inputs = raw_paths(dataset_dir, scene, camera, frame_id)
    result.missing = [str(p) for p in inputs if not p.is_file()]
    if result.missing:
        return result

    rgb_file, depth_file = split_dir / rgb_rel, split_dir / depth_rel
    existing = None if overwrite else _readable_outputs(rgb_file, depth_file)
    if existing is not None:
        rgb_int, depth_mm = existing
        # Re-read the entity ids (one small HDF5): the depth PNG's zeros also hold NaN / Inf distances and depths
        # under 0.5 mm, so counting them would give another invalid_ratio, and another filtered list, on resume.
        entity = read_hdf5(inputs[2])
        invalid_ratio = np.count_nonzero(entity == -1) / entity.size
        result.stats, result.depth_range, result.rgb_range = _stats(rgb_int, depth_mm, invalid_ratio)
        result.resumed = True
        return result

    color_path, dist_path, entity_path = inputs
    rgb = read_hdf5(color_path).astype(np.float64)
    distance = read_hdf5(dist_path).astype(np.float64)
    entity = read_hdf5(entity_path).astype(np.int64)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"{color_path}: expected colour [H, W, 3], got shape {rgb.shape}")
    for path, arr in ((dist_path, distance), (entity_path, entity)):
        if arr.shape != rgb.shape[:2]:
            raise ValueError(f"{path}: shape {arr.shape} does not match the colour image {rgb.shape[:2]}")

    rgb_int = (tone_map(rgb, entity) * 255).astype(np.uint8)  # truncation, as Marigold's astype(np.uint8)
    depth = distance_to_depth(distance, focal_length(distance.shape[1]))
    valid = entity != -1
    invalid_ratio = np.count_nonzero(~valid) / valid.size  # (size - valid) / size, as Marigold
    depth[~valid | ~np.isfinite(depth)] = 0.0
    depth_mm = np.clip(depth * 1000.0, 0, 65535).astype(np.uint16)  # truncation, as Marigold's astype(np.uint16)

    rgb_file.parent.mkdir(parents=True, exist_ok=True)
    _save_png_atomic(rgb_file, Image.fromarray(rgb_int))
    _save_png_atomic(depth_file, Image.fromarray(depth_mm))
    result.stats, result.depth_range, result.rgb_range = _stats(rgb_int, depth_mm, invalid_ratio)
    return result


def _convert_task(task: tuple) -> FrameResult:
    return convert_frame(*task)


# --------------------------------------------------------------------------------------------------------------------
# Whole dataset
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class SplitSummary:
    """Counts of one split: converted (incl. resumed), resumed, kept by the filter, skipped for missing files."""

    converted: int = 0
    resumed: int = 0
    filtered: int = 0
    missing: list[str] = field(default_factory=list)


def read_split_csv(path: str | os.PathLike[str]) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of Hypersim's split CSV, checking the columns Marigold needs."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Hypersim split CSV not found: {path} (expected {CSV_NAME} with columns {', '.join(REQUIRED_COLUMNS)})"
        )
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = list(reader.fieldnames or [])
        rows = list(reader)
    absent = [c for c in REQUIRED_COLUMNS if c not in header]
    if absent:
        raise ValueError(f"{path}: missing column(s) {absent}; found {header}")
    return header, rows


def _is_true(value: str) -> bool:
    return value.strip().lower() in ("true", "1", "yes")


def prepare_hypersim(
    dataset_dir: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    split_csv: str | os.PathLike[str] | None = None,
    splits: Sequence[str] = SPLITS,
    workers: int = 1,
    min_depth_range: float = MIN_DEPTH_RANGE,
    min_rgb_range: float = MIN_RGB_RANGE,
    max_invalid_ratio: float = MAX_INVALID_RATIO,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, SplitSummary]:
    """Convert raw Hypersim to Marigold's layout and write the unfiltered, meta and filtered lists.

    Args:
        dataset_dir: Raw Hypersim root with the ``ai_VVV_NNN`` folders.
        output_dir: Destination root (gets ``train/``, ``val/``, ``test/`` and the filtered lists).
        split_csv: ``metadata_images_split_scene_v1.csv``; default ``<dataset_dir>/metadata_images_split_scene_v1.csv``.
        splits: Splits to convert.
        workers: Processes converting frames in parallel.
        min_depth_range: Filter: minimum valid depth range (metres).
        min_rgb_range: Filter: minimum 8-bit RGB range.
        max_invalid_ratio: Filter: maximum invalid-pixel fraction.
        overwrite: Convert frames again even if their PNGs exist.
        progress: Show tqdm bars.

    Returns:
        A summary per split.

    Raises:
        FileNotFoundError: ``dataset_dir`` or the CSV does not exist.
        ValueError: The CSV lacks required columns, a split name is unknown, or an HDF5 file is corrupt.
    """
    dataset_dir, output_dir = Path(dataset_dir), Path(output_dir)
    if not dataset_dir.is_dir():
        raise FileNotFoundError(f"Hypersim dataset directory not found: {dataset_dir}")
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}; expected a subset of {SPLITS}")
    header, rows = read_split_csv(split_csv if split_csv is not None else dataset_dir / CSV_NAME)
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    summaries: dict[str, SplitSummary] = {}
    for split in splits:
        split_dir = output_dir / split
        split_dir.mkdir(parents=True, exist_ok=True)
        selected = [
            (i, r)
            for i, r in enumerate(rows)
            if _is_true(r["included_in_public_release"]) and r["split_partition_name"] == split
        ]
        tasks = []
        for i, r in selected:
            try:
                frame_id = int(r["frame_id"])
            except ValueError as e:
                raise ValueError(f"row {i + 2} of the split CSV: frame_id {r['frame_id']!r} is not an integer") from e
            tasks.append((dataset_dir, split_dir, i, r["scene_name"], r["camera_name"], frame_id, overwrite))
        bar = tqdm(total=len(tasks), desc=f"hypersim {split}", unit="frame", disable=not progress, leave=False)
        if workers > 1 and len(tasks) > 1:
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                results = []
                for res in pool.map(_convert_task, tasks, chunksize=max(1, len(tasks) // (workers * 16))):
                    results.append(res)
                    bar.update()
        else:
            results = []
            for t in tasks:
                results.append(_convert_task(t))
                bar.update()
        bar.close()

        summary = SplitSummary()
        kept, meta_rows, filtered = [], [], []
        for res in results:
            if res.missing:
                row = rows[res.row_index]
                msg = (
                    f"{row['scene_name']} {row['camera_name']} frame {row['frame_id']}: missing "
                    f"{', '.join(res.missing)}"
                )
                summary.missing.append(msg)
                tqdm.write(f"[prepare_hypersim] skipping {msg}", file=sys.stderr)
                continue
            summary.converted += 1
            summary.resumed += int(res.resumed)
            kept.append(f"{res.rgb_path} {res.depth_path}")
            stats = {**res.stats, "rgb_path": res.rgb_path, "depth_path": res.depth_path}
            meta_rows.append(
                [res.row_index, *(rows[res.row_index][c] for c in header), *(stats[c] for c in STAT_COLUMNS)]
            )
            if (
                res.depth_range >= min_depth_range
                and res.rgb_range >= min_rgb_range
                and res.stats["invalid_ratio"] <= max_invalid_ratio
            ):
                filtered.append(kept[-1])
        summary.filtered = len(filtered)
        # Marigold's lists are joined with "\n" and have no final newline.
        (split_dir / f"filename_list_{split}.txt").write_text("\n".join(kept))
        (output_dir / f"filename_list_{split}_filtered.txt").write_text("\n".join(filtered))
        with open(split_dir / f"filename_meta_{split}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["", *header, *STAT_COLUMNS])  # leading unnamed index column, as pandas writes it
            writer.writerows(meta_rows)
        summaries[split] = summary
    return summaries
