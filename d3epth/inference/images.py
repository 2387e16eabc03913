"""Image files in, depth files out: what ``tools/predict.py`` reads and writes.

Inputs: :func:`collect_inputs` expands files, folders (optionally recursive, structure mirrored in the output names)
and glob patterns; :func:`decode_image` decodes any size and mode to RGB ``[3,h,w]`` in [−1, 1] (RGBA / LA / palette
transparency dropped, greyscale replicated, 16-bit greyscale scaled by 1/65535, camera EXIF orientation applied),
reduced to the model's processing size while decoding; :class:`ImageFiles` decodes them in DataLoader workers, and
:func:`same_size_batches` groups consecutive same-size images into batches. Predictions are written back at each
image's own size strip by strip, so memory follows the processing resolution, not the image.

Outputs (:func:`write_outputs`), per image ``NAME``, in Marigold's layout::

    DIR/depth_bw/NAME_pred.png               uint16 PNG: relative depth min-max normalised per image to [0, 1] × 65535
                                             (0 = nearest, 65535 = farthest; scale and shift unknown)
    DIR/depth_colored/NAME_pred_colored.png  the same map coloured ("Spectral": near = red, far = blue)
    DIR/depth_npy/NAME_pred.npy              optional: float32 [H,W], the same normalised map before quantisation
"""

from __future__ import annotations

import glob
import math
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from diffusers.pipelines.marigold.marigold_image_processing import MarigoldImageProcessor
from numpy.lib.format import open_memmap
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from d3epth.errors import DataError
from d3epth.inference.sizing import SizeRule, resize_bilinear

__all__ = [
    "IMAGE_SUFFIXES",
    "DecodedImage",
    "ImageFiles",
    "InputImage",
    "collect_inputs",
    "decode_image",
    "normalise",
    "read_image",
    "same_size_batches",
    "to_uint16",
    "write_outputs",
]

#: Output rows resized and written at a time (a 6000-pixel-wide strip of float32: 6 MB).
ROWS_PER_STRIP = 256
#: EXIF tag of the camera orientation (values 5-8 rotate by 90°).
_ORIENTATION = 0x0112

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


class DecodedImage(NamedTuple):
    """One decoded input: the image at its processing size and the size of the file as displayed.

    Attributes:
        image: float32 RGB ``[3,h,w]`` in [−1, 1], ``(h, w)`` the processing size (the file's own without a rule).
        size: ``(H, W)`` pixels of the file after its EXIF orientation: the size of every output.
    """

    image: torch.Tensor
    size: tuple[int, int]


def read_image(path: Path, size_rule: SizeRule | None = None) -> torch.Tensor:
    """Read an image file as RGB ``[3,h,w]`` float32 in [−1, 1] (:func:`decode_image`'s image)."""
    return decode_image(path, size_rule).image


def decode_image(path: Path, size_rule: SizeRule | None = None) -> DecodedImage:
    """Decode an image file as RGB in [−1, 1], resized to ``size_rule(H, W)`` on the way so memory follows that size.

    Alpha is dropped, greyscale replicated, 16-bit greyscale scaled by 1/65535 (32-bit integer greyscale, as Pillow
    reads some 16-bit PNGs, likewise), float greyscale taken as [0, 1]; EXIF orientation is applied, so the result is
    the image as viewers show it. With a rule, a JPEG is decoded straight at 1/2, 1/4 or 1/8 scale (libjpeg's DCT
    scaling, never below 4× the target) and an 8-bit image is shrunk to the target while still uint8 (Pillow's
    antialiased bilinear); only then is it converted to float (enlarging, and float or 16-bit images, go through
    :func:`~d3epth.inference.sizing.resize_bilinear`), so a 24-megapixel photo is never held at full size in float.

    Args:
        path: the image file.
        size_rule: ``(H, W) -> (h, w)`` processing size of the displayed ``H × W`` image; ``None`` = keep ``H × W``.

    Raises:
        DataError: the file cannot be decoded, is empty, or holds NaN / Inf pixels (naming the file and the reason).
    """
    try:
        with Image.open(path) as opened:
            swapped = opened.getexif().get(_ORIENTATION, 1) in (5, 6, 7, 8)  # rotated by 90°: sides swap
            width, height = opened.size[::-1] if swapped else opened.size
            target = size_rule(height, width) if size_rule is not None and width and height else (height, width)
            if target != (height, width) and opened.format == "JPEG":
                # DCT scaling gives ceil(side / scale) pixels, the last one partial: asking for 4x the target keeps
                # that edge error under 1/8 of a processing pixel, at a few MB of uint8. PIL sizes are (W, H).
                request = tuple(4 * side for side in (target if swapped else target[::-1]))
                opened.draft(opened.mode, request)
            opened.load()  # decode now: truncated files fail here, not later
            image = ImageOps.exif_transpose(opened)
    except Exception as err:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ... for broken files
        raise DataError(f"cannot read image {path}: {type(err).__name__}: {err}") from err
    if image.width == 0 or image.height == 0:
        raise DataError(f"cannot read image {path}: it is empty ({image.width}x{image.height})")
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        grey = np.asarray(image, dtype=np.float32)
        if image.mode == "F" and not np.isfinite(grey).all():
            bad = int(grey.size - np.isfinite(grey).sum())
            raise DataError(f"cannot read image {path}: {bad} pixel value(s) are NaN or Inf; depth needs finite pixels")
        grey = np.clip(grey if image.mode == "F" else grey / 65535.0, 0.0, 1.0)
        # One channel is resized, then replicated (a view): three full-size float planes are never made.
        work = resize_bilinear(torch.from_numpy(grey)[None, None], target)[0].expand(3, -1, -1)
    else:
        if image.mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")
        image = image.convert("RGB")
        if target[0] < image.height and target[1] < image.width:
            # Shrink while uint8: Pillow's antialiased bilinear (what resize_bilinear matches), box-reducing first
            # down to 3x the target, which Pillow documents as indistinguishable from resampling the whole image.
            image = image.resize(target[::-1], Image.Resampling.BILINEAR, reducing_gap=3.0)
        pixels = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)  # uint8 [3,h,w]
        work = resize_bilinear((pixels.float() / 255.0)[None], target)[0]  # enlarging, or nothing left to do
    return DecodedImage((work * 2.0 - 1.0).contiguous(), (height, width))


class ImageFiles(Dataset):
    """Decodes images in DataLoader workers; a broken file yields its error message instead of raising.

    Args:
        images: the inputs.
        size_rule: processing size of each image (see :func:`decode_image`); must pickle for worker processes.
    """

    def __init__(self, images: list[InputImage], size_rule: SizeRule | None = None) -> None:
        self.images = images
        self.size_rule = size_rule

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[int, DecodedImage | None, str | None]:
        try:
            return index, decode_image(self.images[index].path, self.size_rule), None
        except DataError as err:
            return index, None, str(err)


def same_size_batches(
    loader: Iterator[tuple[int, DecodedImage | None, str | None]], batch_size: int
) -> Iterator[tuple[list[int], list[DecodedImage], list[tuple[int, str]]]]:
    """Group consecutive images of one processing size into batches; an unreadable image comes alone, in order.

    Args:
        loader: ``(index, decoded image or None, error message or None)`` items, as :class:`ImageFiles` yields them.
        batch_size: maximum images per batch.

    Yields:
        ``(indices, images, errors)``: either a batch of same-size images (``errors`` empty) or one unreadable image
        (``indices`` and ``images`` empty, ``errors`` = ``[(index, message)]``).
    """
    indices: list[int] = []
    decoded: list[DecodedImage] = []
    for index, image, error in loader:
        if error is not None:
            if decoded:
                yield indices, decoded, []
            yield [], [], [(index, error)]
            indices, decoded = [], []
            continue
        assert image is not None
        if decoded and (image.image.shape != decoded[0].image.shape or len(decoded) == batch_size):
            yield indices, decoded, []
            indices, decoded = [], []
        indices.append(index)
        decoded.append(image)
    if decoded:
        yield indices, decoded, []


def normalise(depth: torch.Tensor, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Min-max normalise a depth map ``[H,W]`` to [0, 1] (float32); a constant map becomes 0, a NaN / Inf pixel 0.

    ``lo`` / ``hi`` default to the minimum and maximum of the map's finite pixels (given: the range of the whole map
    this is a strip of), so that one non-finite pixel does not blank the whole map.
    """
    depth = depth.float()
    if lo is None or hi is None:
        low, high = finite_range(depth)
        lo, hi = (low if lo is None else lo), (high if hi is None else hi)
    scaled = (depth - lo) / (hi - lo) if hi > lo else torch.zeros_like(depth)
    scaled = torch.where(torch.isfinite(depth), scaled.clamp(0.0, 1.0), 0.0)
    return scaled.cpu().numpy().astype(np.float32)


def finite_range(depth: torch.Tensor) -> tuple[float, float]:
    """``(min, max)`` over the finite values of ``depth``; ``(inf, -inf)`` when there are none."""
    finite = depth[torch.isfinite(depth)]
    if finite.numel() == 0:
        return math.inf, -math.inf
    return float(finite.min()), float(finite.max())


def to_uint16(depth01: np.ndarray) -> np.ndarray:
    """[0, 1] → uint16 × 65535, rounded (error ≤ 0.5/65535; reading back is ``png / 65535``)."""
    return np.round(depth01 * 65535.0).astype(np.uint16)


def write_outputs(
    out: Path,
    name: str,
    depth: torch.Tensor,
    npy: bool,
    color: bool,
    color_map: str,
    size: tuple[int, int] | None = None,
    antialias: bool = True,
) -> None:
    """Write the 16-bit PNG, the colourised PNG and (optionally) the .npy of one prediction ``[h,w]`` at ``size``.

    The prediction is resized to ``size`` = ``(H, W)`` (default: its own) with
    :func:`~d3epth.inference.sizing.resize_bilinear` and min-max normalised over the whole resized map, as if it had
    been resized at once; but when only enlarging it is resized, normalised and written :data:`ROWS_PER_STRIP` rows at
    a time (twice: once for the range, once to write), so no full-size float map is ever held — only the uint16 and
    RGB images being encoded (and the ``.npy``, written through a memory map). ``antialias=False`` shrinks without
    antialiasing, as Marigold's pipeline resizes its predictions back (``DepthPredictor.output_antialias``).
    """
    size = tuple(depth.shape[-2:]) if size is None else (int(size[0]), int(size[1]))
    targets = {"depth_bw": f"{name}_pred.png"}
    if color:
        targets["depth_colored"] = f"{name}_pred_colored.png"
    if npy:
        targets["depth_npy"] = f"{name}_pred.npy"
    for folder, file in targets.items():
        (out / folder / file).parent.mkdir(parents=True, exist_ok=True)
    lo, hi = math.inf, -math.inf
    for _, strip in _resized_strips(depth, size, antialias):
        low, high = finite_range(strip)
        lo, hi = min(lo, low), max(hi, high)
    height, width = size
    bw = Image.new("I;16", (width, height))
    colored = Image.new("RGB", (width, height)) if color else None
    array = open_memmap(out / "depth_npy" / targets["depth_npy"], "w+", np.float32, size) if npy else None
    for top, strip in _resized_strips(depth, size, antialias):
        depth01 = normalise(strip, lo, hi)
        # diffusers' export_depth_to_16bit_png does the same (× 65535) but fails on Pillow >= 13 ("Invalid mode for
        # data type"); a uint16 array becomes an "I;16" image by itself.
        bw.paste(Image.fromarray(to_uint16(depth01)), (0, top))
        if colored is not None:
            (rgb,) = MarigoldImageProcessor.visualize_depth(torch.from_numpy(depth01), color_map=color_map)
            colored.paste(rgb, (0, top))
        if array is not None:
            array[top : top + depth01.shape[0]] = depth01
    bw.save(out / "depth_bw" / targets["depth_bw"])
    if colored is not None:
        colored.save(out / "depth_colored" / targets["depth_colored"])
    if array is not None:
        array.flush()
        del array  # closes the memory map


def _resized_strips(
    depth: torch.Tensor, size: tuple[int, int], antialias: bool = True
) -> Iterator[tuple[int, torch.Tensor]]:
    """``(top row, rows [n,W])`` of ``depth`` ``[h,w]`` resized to ``size`` = ``(H, W)``, top to bottom.

    Enlarging (``H >= h`` and ``W >= w``) is bilinear with half-pixel centres, computed strip by strip exactly as
    ``F.interpolate`` does for the whole map: each output row blends its two source rows, then torch resizes the
    columns (an ``n → n`` row resize is the identity). Any other resize (antialiased shrinking) is done at once.
    """
    depth = depth.detach().float().cpu()
    (h, w), (height, width) = depth.shape[-2:], size
    if height < h or width < w or (height, width) == (h, w):
        yield 0, resize_bilinear(depth[None, None], size, antialias)[0, 0]
        return
    for top in range(0, height, ROWS_PER_STRIP):
        rows = torch.arange(top, min(top + ROWS_PER_STRIP, height), dtype=torch.float32)
        source = ((rows + 0.5) * (h / height) - 0.5).clamp(min=0.0)  # align_corners=False source row
        first = source.floor().long().clamp(max=h - 1)
        weight = (source - first)[:, None]
        blended = depth[first] * (1.0 - weight) + depth[(first + 1).clamp(max=h - 1)] * weight
        yield top, resize_bilinear(blended[None, None], (len(rows), width))[0, 0]
