"""Writers of the zero-shot evaluation sets ETH3D, ScanNet and DIODE in Marigold's evaluation layouts.

* :func:`write_eth3d`: ``rgb/<scene>/images/dslr_images/DSC_NNNN.JPG`` and the raw float32 depth
  ``depth/<scene>_dslr_depth/<scene>/ground_truth_depth/dslr_images/DSC_NNNN.JPG`` (headerless little-endian
  float32, ``inf`` where unknown; Marigold ``src/dataset/eth3d_dataset.py``), list ``eth3d_filename_list.txt``.
* :func:`write_scannet`: ``sceneXXXX_YY/color/NNNNNN.jpg`` and ``sceneXXXX_YY/depth/NNNNNN.png`` (uint16 mm),
  list ``scannet_val_sampled_list_800_1.txt`` (Marigold ``src/dataset/scannet_dataset.py``).
* :func:`write_diode`: ``{indoors,outdoor}/scene_S/scan_C/<id>.png`` with ``<id>_depth.npy`` (float32 [H,W,1], m)
  and ``<id>_depth_mask.npy``, lists ``diode_val_{all,indoor,outdoor}_filename_list.txt`` (Marigold
  ``src/dataset/diode_dataset.py``).

Indoor frames come from :func:`~d3epth.data.synthetic.indoor.render_hypersim_frame`, outdoor ones from
:func:`~d3epth.data.synthetic.street.render_street_frame`, each in its own random stream (``scene_rng``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from d3epth.data.synthetic.geometry import PinholeCamera
from d3epth.data.synthetic.indoor import render_hypersim_frame
from d3epth.data.synthetic.render import RenderedFrame
from d3epth.data.synthetic.street import render_street_frame
from d3epth.data.synthetic.writers import _check_size, _map, _save_png16

__all__ = ["DIODE_CAMERA", "ETH3D_CAMERA", "SCANNET_CAMERA", "write_diode", "write_eth3d", "write_scannet"]

#: ETH3D-like DSLR at 6048x4032 (focal chosen for a ~83 degree field of view; approximate, sample data only).
ETH3D_CAMERA = PinholeCamera(6048, 4032, 3410.0, 3410.0, 3023.5, 2015.5)
#: ScanNet-like colour camera at 640x480 (approximate focal, sample data only).
SCANNET_CAMERA = PinholeCamera(640, 480, 577.87, 577.87, 319.5, 239.5)
#: DIODE-like camera at 1024x768 (approximate focal, sample data only).
DIODE_CAMERA = PinholeCamera(1024, 768, 886.81, 886.81, 511.5, 383.5)

_ETH3D_SCENES = ("office", "kicker", "courtyard", "facade", "pipes", "terrace", "relief", "electro")


def _frame(seed: int, dataset: str, index: int, outdoor: bool, camera: PinholeCamera) -> RenderedFrame:
    """Frame ``index`` of an evaluation set: an indoor room or, when ``outdoor``, a street, in ``dataset``'s stream."""
    if outdoor:
        return render_street_frame(seed, dataset, "test", index, 0, camera, "clone", None)
    return render_hypersim_frame(seed, "test", index, 0, 0, 1, 1, camera.width, camera.height, dataset, camera)


def _holes(shape: tuple[int, int], rng: np.random.Generator, fraction: float) -> np.ndarray:
    """Bool [H,W]: a few small rectangles (scanner occlusions / dropouts) covering about ``fraction`` of the frame."""
    height, width = shape
    holes = np.zeros(shape, dtype=bool)
    for _ in range(4):
        h, w = max(1, int(height * fraction**0.5 / 2)), max(1, int(width * fraction**0.5 / 2))
        top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        holes[top : top + h, left : left + w] = True
    return holes


def _eth3d_task(task: tuple[Any, ...]) -> None:
    root, seed, index, scene, width, height = task
    frame = _frame(seed, "eth3d", index, index % 2 == 1, ETH3D_CAMERA.scaled(width, height))
    rng = np.random.default_rng([seed, 5, index])
    known = (frame.entity_id >= 0) & np.isfinite(frame.depth) & ~_holes(frame.depth.shape, rng, 0.05)
    depth = np.where(known, frame.depth, np.inf).astype("<f4")  # ETH3D: inf where the laser scan has no depth
    name = f"DSC_{219 + index:04d}.JPG"
    rgb_path = Path(root) / "rgb" / scene / "images" / "dslr_images" / name
    depth_path = Path(root) / "depth" / f"{scene}_dslr_depth" / scene / "ground_truth_depth" / "dslr_images" / name
    rgb_path.parent.mkdir(parents=True, exist_ok=True)
    depth_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(frame.rgb).save(rgb_path, format="JPEG", quality=95)
    depth_path.write_bytes(depth.tobytes())  # row-major, no header


def write_eth3d(
    out_dir: str | os.PathLike[str],
    seed: int = 0,
    num_frames: int = 4,
    width: int = 96,
    height: int = 64,
    workers: int = 1,
    progress: bool = True,
) -> Path:
    """Write ETH3D-like frames (alternating indoor / outdoor) in Marigold's ``eth3d.tar`` layout.

    Args:
        out_dir: Destination root (e.g. ``sample_data/eth3d``).
        seed: Base seed.
        num_frames: Number of frames, one scene each.
        width: Image width (ETH3D: 6048).
        height: Image height (ETH3D: 4032).
        workers: Processes used for rendering.
        progress: Show a tqdm bar.

    Returns:
        Path of ``eth3d_filename_list.txt``.
    """
    _check_size("ETH3D", width, height)
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    tasks, lines = [], []
    for index in range(num_frames):
        scene = _ETH3D_SCENES[index % len(_ETH3D_SCENES)] + (f"_{index // len(_ETH3D_SCENES)}" if index >= 8 else "")
        tasks.append((str(root), seed, index, scene, width, height))
        name = f"DSC_{219 + index:04d}.JPG"
        depth = f"depth/{scene}_dslr_depth/{scene}/ground_truth_depth/dslr_images/{name}"
        lines.append(f"rgb/{scene}/images/dslr_images/{name} {depth}")
    _map(_eth3d_task, tasks, workers, "eth3d", progress)
    path = root / "eth3d_filename_list.txt"
    path.write_text("\n".join(lines))  # Marigold's lists have no final newline
    return path


def _scannet_task(task: tuple[Any, ...]) -> None:
    root, seed, index, scene, frame_id, width, height = task
    frame = _frame(seed, "scannet", index, False, SCANNET_CAMERA.scaled(width, height))
    rng = np.random.default_rng([seed, 6, index])
    depth = np.where(frame.entity_id >= 0, frame.depth, 0.0)
    depth[(depth > 10.0) | _holes(depth.shape, rng, 0.03)] = 0.0  # structure-sensor range and dropouts
    color, dep = Path(root) / scene / "color", Path(root) / scene / "depth"
    color.mkdir(parents=True, exist_ok=True)
    dep.mkdir(parents=True, exist_ok=True)
    Image.fromarray(frame.rgb).save(color / f"{frame_id:06d}.jpg", quality=95)
    _save_png16(dep / f"{frame_id:06d}.png", np.round(np.clip(depth * 1000.0, 0, 65535)).astype(np.uint16))


def write_scannet(
    out_dir: str | os.PathLike[str],
    seed: int = 0,
    num_frames: int = 4,
    width: int = 160,
    height: int = 120,
    workers: int = 1,
    progress: bool = True,
) -> Path:
    """Write ScanNet-like indoor frames in Marigold's ``scannet_val_sampled_800_1.tar`` layout (depth uint16 mm).

    Args:
        out_dir: Destination root (e.g. ``sample_data/scannet``).
        seed: Base seed.
        num_frames: Number of frames, one scene each.
        width: Image width (Marigold's ScanNet sample: 640).
        height: Image height (480).
        workers: Processes used for rendering.
        progress: Show a tqdm bar.

    Returns:
        Path of ``scannet_val_sampled_list_800_1.txt``.
    """
    _check_size("ScanNet", width, height)
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    tasks, lines = [], []
    for index in range(num_frames):
        scene, frame_id = f"scene{406 + index:04d}_{index % 3:02d}", 300 + 100 * index
        tasks.append((str(root), seed, index, scene, frame_id, width, height))
        lines.append(f"{scene}/color/{frame_id:06d}.jpg {scene}/depth/{frame_id:06d}.png")
    _map(_scannet_task, tasks, workers, "scannet", progress)
    path = root / "scannet_val_sampled_list_800_1.txt"
    path.write_text("\n".join(lines))
    return path


def _diode_task(task: tuple[Any, ...]) -> None:
    root, seed, index, rel, outdoor, width, height = task
    frame = _frame(seed, "diode", index, outdoor, DIODE_CAMERA.scaled(width, height))
    rng = np.random.default_rng([seed, 7, index])
    # The scanner measures up to ~350 m outdoors and within the room indoors; no return from the sky.
    hit = (frame.entity_id >= 0) & np.isfinite(frame.depth) & (frame.depth < 350.0)
    mask = hit & ~_holes(frame.depth.shape, rng, 0.04)
    depth = np.where(mask, frame.depth, 0.0).astype(np.float32)[..., None]  # DIODE: [H,W,1], 0 where masked
    base = Path(root) / rel
    base.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(frame.rgb).save(base.with_suffix(".png"))
    np.save(f"{base}_depth.npy", depth)
    np.save(f"{base}_depth_mask.npy", mask.astype(np.float32))  # DIODE stores the mask as float 0/1


def write_diode(
    out_dir: str | os.PathLike[str],
    seed: int = 0,
    num_indoor: int = 2,
    num_outdoor: int = 2,
    width: int = 128,
    height: int = 96,
    workers: int = 1,
    progress: bool = True,
) -> Path:
    """Write DIODE-like validation frames in Marigold's ``diode_val.tar`` layout with its three lists.

    Args:
        out_dir: Destination root (e.g. ``sample_data/diode``).
        seed: Base seed.
        num_indoor: Indoor frames (``indoors/...``).
        num_outdoor: Outdoor frames (``outdoor/...``).
        width: Image width (DIODE: 1024).
        height: Image height (DIODE: 768).
        workers: Processes used for rendering.
        progress: Show a tqdm bar.

    Returns:
        Path of ``diode_val_all_filename_list.txt``.
    """
    _check_size("DIODE", width, height)
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    tasks, lines = [], {"indoor": [], "outdoor": []}
    for index in range(num_indoor + num_outdoor):
        outdoor = index >= num_indoor
        kind, folder = ("outdoor", "outdoor") if outdoor else ("indoors", "indoors")
        scene, scan = 21 + index // 2, 189 + index
        rel = f"{folder}/scene_{scene:05d}/scan_{scan:05d}/{scene:05d}_{scan:05d}_{kind}_{10 * index:03d}_010"
        tasks.append((str(root), seed, index, rel, outdoor, width, height))
        lines["outdoor" if outdoor else "indoor"].append(f"{rel}.png {rel}_depth.npy {rel}_depth_mask.npy")
    _map(_diode_task, tasks, workers, "diode", progress)
    for name, rows in (("all", lines["indoor"] + lines["outdoor"]), *lines.items()):
        (root / f"diode_val_{name}_filename_list.txt").write_text("\n".join(rows))
    return root / "diode_val_all_filename_list.txt"
