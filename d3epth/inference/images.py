"""Image files in, depth files out: what ``tools/predict.py`` reads and writes.

Inputs: :func:`collect_inputs` expands files, folders (optionally recursive, structure mirrored in the output names)
and glob patterns; :func:`read_image` decodes any size and mode to RGB ``[3,H,W]`` in [−1, 1] (RGBA / LA / palette
transparency dropped, greyscale replicated, 16-bit greyscale scaled by 1/65535, camera EXIF orientation applied);
:class:`ImageFiles` decodes them in DataLoader workers, and :func:`same_size_batches` groups consecutive same-size
images into batches.

Outputs (:func:`write_outputs`), per image ``NAME``, in Marigold's layout::

    DIR/depth_bw/NAME_pred.png               uint16 PNG: relative depth min-max normalised per image to [0, 1] × 65535
                                             (0 = nearest, 65535 = farthest; scale and shift unknown)
    DIR/depth_colored/NAME_pred_colored.png  the same map coloured ("Spectral": near = red, far = blue)
    DIR/depth_npy/NAME_pred.npy              optional: float32 [H,W], the same normalised map before quantisation
"""

from __future__ import annotations

import glob
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from diffusers.pipelines.marigold.marigold_image_processing import MarigoldImageProcessor
from PIL import Image, ImageOps
from torch.utils.data import Dataset

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageFiles",
    "InputImage",
    "collect_inputs",
    "normalise",
    "read_image",
    "same_size_batches",
    "to_uint16",
    "write_outputs",
]

#: File suffixes read from folders (explicitly named files are tried whatever their suffix).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class InputImage(NamedTuple):
    """One image to process: its path and the output name (relative to ``DIR/depth_*``, without suffix)."""

    path: Path
    name: str


def collect_inputs(inputs: list[str], recursive: bool = False) -> list[InputImage]:
    """Expand files, folders and globs into a list of images with unique output names.

    Raises:
        FileNotFoundError: a path that does not exist, or a folder / glob with no image in it.
        ValueError: two inputs that would write the same output name.
    """
    found: list[InputImage] = []
    for item in inputs:
        path = Path(item).expanduser()
        if glob.has_magic(item) and not path.exists():
            matches = sorted(Path(m) for m in glob.glob(str(path), recursive=True))
            files = [m for m in matches if m.is_file() and m.suffix.lower() in IMAGE_SUFFIXES]
            if not files:
                raise FileNotFoundError(f"no image matches the pattern {item!r}")
            found += [InputImage(f, f.stem) for f in files]
        elif path.is_dir():
            pattern = "**/*" if recursive else "*"
            files = sorted(f for f in path.glob(pattern) if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                where = " (or its sub-folders)" if recursive else " (use --recursive for sub-folders)"
                raise FileNotFoundError(f"no image ({', '.join(IMAGE_SUFFIXES)}) in folder {path}{where}")
            found += [InputImage(f, f.relative_to(path).with_suffix("").as_posix()) for f in files]
        elif path.is_file():
            found.append(InputImage(path, path.stem))
        else:
            raise FileNotFoundError(f"input not found: {path}")
    seen: dict[str, Path] = {}
    unique: list[InputImage] = []
    for image in found:
        if image.name in seen:
            if seen[image.name].resolve() == image.path.resolve():
                continue  # the same file named twice
            raise ValueError(
                f"{seen[image.name]} and {image.path} would both be written as {image.name!r}; "
                "run them separately or pass their common folder (with --recursive)"
            )
        seen[image.name] = image.path
        unique.append(image)
    return unique


def read_image(path: Path) -> torch.Tensor:
    """Read an image file as RGB ``[3,H,W]`` float32 in [−1, 1].

    Alpha is dropped, greyscale replicated, 16-bit greyscale scaled by 1/65535 (32-bit integer greyscale, as Pillow
    reads some 16-bit PNGs, likewise), float greyscale taken as [0, 1]; EXIF orientation is applied, so the result is
    the image as viewers show it.

    Raises:
        ValueError: the file cannot be decoded (naming the file and the reason).
    """
    try:
        with Image.open(path) as opened:
            opened.load()  # decode now: truncated files fail here, not later
            image = ImageOps.exif_transpose(opened)
    except Exception as err:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ... for broken files
        raise ValueError(f"cannot read image {path}: {type(err).__name__}: {err}") from err
    if image.width == 0 or image.height == 0:
        raise ValueError(f"cannot read image {path}: it is empty ({image.width}x{image.height})")
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        grey = np.asarray(image, dtype=np.float32) / 65535.0
        rgb = np.repeat(np.clip(grey, 0.0, 1.0)[..., None], 3, axis=-1)
    elif image.mode == "F":
        grey = np.asarray(image, dtype=np.float32)
        rgb = np.repeat(np.clip(grey, 0.0, 1.0)[..., None], 3, axis=-1)
    else:
        if image.mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")
        rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1) * 2.0 - 1.0


class ImageFiles(Dataset):
    """Decodes images in DataLoader workers; a broken file yields its error message instead of raising."""

    def __init__(self, images: list[InputImage]) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            return index, read_image(self.images[index].path), None
        except ValueError as err:
            return index, None, str(err)


def same_size_batches(
    loader: Iterator[tuple[int, torch.Tensor | None, str | None]], batch_size: int
) -> Iterator[tuple[list[int], list[torch.Tensor], list[tuple[int, str]]]]:
    """Group consecutive same-size images into batches; an unreadable image comes alone, after the batch before it.

    Args:
        loader: ``(index, image [3,H,W] or None, error message or None)`` items, as :class:`ImageFiles` yields them.
        batch_size: maximum images per batch.

    Yields:
        ``(indices, images, errors)``: either a batch of same-size images (``errors`` empty) or one unreadable image
        (``indices`` and ``images`` empty, ``errors`` = ``[(index, message)]``).
    """
    indices: list[int] = []
    tensors: list[torch.Tensor] = []
    for index, image, error in loader:
        if error is not None:
            if tensors:
                yield indices, tensors, []
            yield [], [], [(index, error)]
            indices, tensors = [], []
            continue
        assert image is not None
        if tensors and (image.shape != tensors[0].shape or len(tensors) == batch_size):
            yield indices, tensors, []
            indices, tensors = [], []
        indices.append(index)
        tensors.append(image)
    if tensors:
        yield indices, tensors, []


def normalise(depth: torch.Tensor) -> np.ndarray:
    """Min-max normalise one depth map ``[H,W]`` to [0, 1] (float32); a constant map becomes 0."""
    depth = depth.float()
    lo, hi = depth.min(), depth.max()
    scaled = (depth - lo) / (hi - lo) if hi > lo else torch.zeros_like(depth)
    return scaled.clamp(0.0, 1.0).cpu().numpy().astype(np.float32)


def to_uint16(depth01: np.ndarray) -> np.ndarray:
    """[0, 1] → uint16 × 65535, rounded (error ≤ 0.5/65535; reading back is ``png / 65535``)."""
    return np.round(depth01 * 65535.0).astype(np.uint16)


def write_outputs(out: Path, name: str, depth: torch.Tensor, npy: bool, color: bool, color_map: str) -> None:
    """Write the 16-bit PNG, the colourised PNG and (optionally) the .npy of one prediction ``[H,W]``."""
    depth01 = normalise(depth)
    targets = {"depth_bw": f"{name}_pred.png"}
    if color:
        targets["depth_colored"] = f"{name}_pred_colored.png"
    if npy:
        targets["depth_npy"] = f"{name}_pred.npy"
    for folder, file in targets.items():
        (out / folder / file).parent.mkdir(parents=True, exist_ok=True)
    # diffusers' export_depth_to_16bit_png does the same (× 65535) but fails on Pillow >= 13 ("Invalid mode for data
    # type"); a uint16 array becomes an "I;16" image by itself.
    Image.fromarray(to_uint16(depth01)).save(out / "depth_bw" / targets["depth_bw"])
    if color:
        (colored,) = MarigoldImageProcessor.visualize_depth(torch.from_numpy(depth01), color_map=color_map)
        colored.save(out / "depth_colored" / targets["depth_colored"])
    if npy:
        np.save(out / "depth_npy" / targets["depth_npy"], depth01)
