"""A contact sheet of generated sample data: per dataset, RGB next to colourised depth, read back from disk.

``tools/make_sample_data.py`` writes ``<out>/contact_sheet.png`` with :func:`make_contact_sheet` after generating the
datasets (:mod:`d3epth.data.synthetic.writers`), so a person can see at a glance that every layout was written and
reads back (frames are taken from each dataset's split list and decoded with the dataset's depth encoding). Depth
is coloured by :func:`d3epth.utils.visualize.colorize` (Marigold's "Spectral", near = red, each frame stretched to
its own 2–98 % range), invalid pixels black.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from d3epth.data.synthetic.writers import iter_split_rows

__all__ = ["DATASETS", "make_contact_sheet"]

#: The generated sample datasets, in the order of the sheet's rows.
DATASETS = ("hypersim", "vkitti2", "nyuv2", "kitti", "eth3d", "scannet", "diode")
#: Evaluation sets whose encodings (raw float32, ``.npy`` + mask) are decoded by their d3epth reader for the sheet.
_READER_DATASETS = {"eth3d": "ETH3DDataset", "scannet": "ScanNetDataset", "diode": "DIODEDataset"}


def _colorize_depth(depth: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """uint8 ``[H,W,3]`` colours of depth ``[H,W]`` (metres) with validity ``[H,W]``, via :func:`colorize`."""
    # Imported here: the visualiser loads diffusers, which the sample-data writers (forked workers) do not need.
    import torch

    from d3epth.utils.visualize import colorize

    values = torch.from_numpy(np.ascontiguousarray(depth, dtype=np.float32))[None, None]
    mask = torch.from_numpy(np.ascontiguousarray(valid, dtype=bool))[None, None]
    rgb = colorize(values, mask)[0].permute(1, 2, 0)  # [H,W,3] in [0, 1], black where invalid
    return (rgb * 255).to(torch.uint8).numpy()  # truncation, as diffusers' colormap(bytes=True)


def _read_png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def _dilate_sparse(depth: np.ndarray, valid: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Grow sparse LiDAR points into small squares so they are visible in a thumbnail."""
    grown = ndimage.grey_dilation(np.where(valid, -depth, -np.inf), size=(size, size))
    return -grown, np.isfinite(grown)


def _reader_samples(root: Path, class_name: str, n: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Up to ``n`` (rgb, depth in metres, valid) triples read through the dataset's reader; none if it is absent."""
    from d3epth import data  # torch: imported here, as in _colorize_depth

    if not root.is_dir():
        return []
    try:
        dataset = getattr(data, class_name)(root, check="none")
    except FileNotFoundError:  # no list file: the set was not generated
        return []
    picked = []
    for i in range(0, len(dataset), max(1, len(dataset) // max(n, 1)))[:n]:
        sample = dataset.load(i)
        rgb = ((sample["image"].permute(1, 2, 0) + 1.0) * 127.5).round().clamp(0, 255).byte().numpy()
        picked.append((rgb, sample["depth"][0].double().numpy(), sample["valid_mask"][0].numpy()))
    return picked


def _samples(out: Path, dataset: str, n: int, tile_height: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Up to ``n`` (rgb, depth in metres, valid) triples of a generated dataset, read back from disk via its list."""
    if dataset in _READER_DATASETS:
        return _reader_samples(out / dataset, _READER_DATASETS[dataset], n)
    rows: list[tuple[Path, Path]] = []
    if dataset == "hypersim":
        root = out / "hypersim"
        lst = root / "filename_list_train_filtered.txt"
        if not lst.is_file() or not lst.read_text().strip():
            lst = root / "train" / "filename_list_train.txt"
        if lst.is_file():
            rows = [(root / "train" / r[0], root / "train" / r[1]) for r in iter_split_rows(lst)]
        scale, far = 1000.0, None
    elif dataset == "vkitti2":
        root = out / "vkitti2"
        lst = root / "vkitti_train.txt"
        if lst.is_file():
            rows = [(root / r[0], root / r[1]) for r in iter_split_rows(lst)]
        scale, far = 100.0, 655.0
    elif dataset == "nyuv2":
        root = out / "nyuv2"
        lst = root / "filename_list_test.txt"
        if lst.is_file():
            rows = [(root / r[0], root / r[1]) for r in iter_split_rows(lst)]
        scale, far = 1000.0, None
    else:
        root = out / "kitti"
        lst = root / "eigen_test_files_with_gt.txt"
        if lst.is_file():
            rows = [(root / r[0], root / r[1]) for r in iter_split_rows(lst) if r[1] != "None"]
        scale, far = 256.0, None
    # Spread the picks over the list (scenes, variations) rather than consecutive frames of one sequence.
    rows = rows[:: max(1, len(rows) // max(n, 1))][:n]
    picked = []
    for rgb_path, depth_path in rows:
        rgb = _read_png(rgb_path)[..., :3]
        depth = _read_png(depth_path).astype(np.float64) / scale
        valid = depth > 0
        if far is not None:
            valid &= depth < far  # VKITTI sky is stored at 655.35 m
        shrink = round(rgb.shape[0] / tile_height)
        if dataset == "kitti" and shrink > 1:  # keep sparse points visible after downscaling
            depth, valid = _dilate_sparse(depth, valid, shrink)
        picked.append((rgb, depth, valid))
    return picked


def make_contact_sheet(
    out: str | os.PathLike[str], frames: int = 3, tile_height: int = 128, max_width: int = 1800
) -> Path:
    """Write ``<out>/contact_sheet.png``: per dataset, (RGB | colourised depth) pairs read back from disk.

    Args:
        out: Sample-data root.
        frames: Frames per dataset.
        tile_height: Height of each thumbnail in pixels.
        max_width: Pairs wrap onto a new row beyond this width.

    Returns:
        Path of the PNG.
    """
    out = Path(out)
    rows = []
    for dataset in DATASETS:
        samples = _samples(out, dataset, frames, tile_height)
        if not samples:
            continue
        pairs = []
        for rgb, depth, valid in samples:
            colored = _colorize_depth(depth, valid)
            pair = np.concatenate([rgb, np.full((rgb.shape[0], 2, 3), 255, np.uint8), colored], 1)
            w = round(pair.shape[1] * tile_height / pair.shape[0])
            pairs.append(np.asarray(Image.fromarray(pair).resize((w, tile_height), Image.Resampling.NEAREST)))
        label = Image.new("RGB", (90, tile_height), (255, 255, 255))
        ImageDraw.Draw(label).text((4, tile_height // 2 - 6), dataset, fill=(0, 0, 0))
        line: list[np.ndarray] = [np.asarray(label)]
        for pair in pairs:
            if len(line) > 1 and sum(t.shape[1] for t in line) + pair.shape[1] > max_width:
                rows.append(np.concatenate(line, axis=1))
                line = [np.full((tile_height, 90, 3), 255, np.uint8)]
            line += [pair, np.full((tile_height, 8, 3), 255, np.uint8)]
        rows.append(np.concatenate(line, axis=1))
    if not rows:
        raise FileNotFoundError(f"no generated dataset found under {out} to put on a contact sheet")
    width = max(r.shape[1] for r in rows)
    padded = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    path = out / "contact_sheet.png"
    Image.fromarray(np.concatenate(padded, axis=0)).save(path)
    return path
