"""Predict depth for image files with any d3epth model and write 16-bit PNGs, colourised PNGs and (optionally) .npy.

Usage::

    python tools/predict.py INPUT [INPUT ...] --model SOURCE --out DIR [--batch-size 4] [--processing-resolution N]
                            [--device auto|cpu|cuda[:i]] [--precision fp32|bf16|fp16] [--npy] [--skip-errors]

INPUT: image files, folders (images directly inside; ``--recursive`` for sub-folders, whose structure is mirrored)
or glob patterns (quote them: ``'photos/**/*.jpg'``). Any size and mode: RGBA / LA / palette transparency is dropped,
greyscale is replicated to RGB, 16-bit greyscale PNGs are scaled by 1/65535, camera EXIF orientation is applied.
SOURCE: anything :func:`d3epth.tasks.predictor.load_predictor` loads — a task checkpoint of any stage, an exported
student directory, a diffusers Marigold / E2E-FT directory (``--num-steps``, ``--ensemble-size``, ``--seed``).

Outputs, per image ``NAME`` (Marigold's layout)::

    DIR/depth_bw/NAME_pred.png               uint16 PNG: relative depth min-max normalised per image to [0, 1],
                                             × 65535 (the Marigold / diffusers convention; 0 = nearest, 65535 =
                                             farthest). It is *relative* depth: scale and shift are unknown.
    DIR/depth_colored/NAME_pred_colored.png  the same map coloured with "Spectral" (near = red, far = blue), as Marigold
    DIR/depth_npy/NAME_pred.npy              --npy: float32 [H, W], the same normalised map before quantisation

Every output has the input image's size. Images are batched (``--batch-size``) when consecutive images share a size;
otherwise they run one by one. Exit code: 0, 1 if an image could not be read (first one fails the run unless
``--skip-errors``, which warns and goes on), 2 for bad arguments, missing inputs or an unloadable model.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, ImageOps

#: File suffixes read from folders (explicitly named files are tried whatever their suffix).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
_PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


# ----------------------------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------------------------


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
    """Read an image file as RGB ``[3, H, W]`` float32 in [−1, 1].

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


class _ImageFiles(torch.utils.data.Dataset):
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


# ----------------------------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------------------------


def normalise(depth: torch.Tensor) -> np.ndarray:
    """Min-max normalise one depth map ``[H, W]`` to [0, 1] (float32); a constant map becomes 0."""
    depth = depth.float()
    lo, hi = depth.min(), depth.max()
    scaled = (depth - lo) / (hi - lo) if hi > lo else torch.zeros_like(depth)
    return scaled.clamp(0.0, 1.0).cpu().numpy().astype(np.float32)


def to_uint16(depth01: np.ndarray) -> np.ndarray:
    """[0, 1] → uint16 × 65535, rounded (error ≤ 0.5/65535; reading back is ``png / 65535``)."""
    return np.round(depth01 * 65535.0).astype(np.uint16)


def write_outputs(out: Path, name: str, depth: torch.Tensor, npy: bool, color: bool, color_map: str) -> None:
    """Write the 16-bit PNG, the colourised PNG and (optionally) the .npy of one prediction ``[H, W]``."""
    from diffusers.pipelines.marigold.marigold_image_processing import MarigoldImageProcessor

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


# ----------------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``tools/predict.py``."""
    parser = argparse.ArgumentParser(
        prog="tools/predict.py",
        description=(
            "Predict relative depth for images with a d3epth model (task checkpoint, exported student, or diffusers "
            "Marigold / E2E-FT directory). Writes DIR/depth_bw/NAME_pred.png (uint16, per-image min-max normalised "
            "relative depth x 65535, larger = farther), DIR/depth_colored/NAME_pred_colored.png (Spectral) and, with "
            "--npy, DIR/depth_npy/NAME_pred.npy (float32, same normalised map), all at the input size."
        ),
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or (quoted) glob patterns")
    parser.add_argument("-m", "--model", required=True, metavar="SOURCE", help="checkpoint or model directory")
    parser.add_argument("-o", "--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--batch-size", type=int, default=1, help="images per forward pass (same-size images only)")
    parser.add_argument(
        "--processing-resolution",
        type=int,
        default=None,
        metavar="N",
        help="resize the longer side to about N (students: both sides rounded to the model's multiple, e.g. 32; "
        "diffusion models: Marigold's resizing) and resize the prediction back; 0 = native; default: the model's "
        "own default (a Marigold directory's model_index.json), else native",
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--precision", choices=sorted(_PRECISIONS), default="fp32", help="autocast dtype for the model (default fp32)"
    )
    parser.add_argument("--num-steps", type=int, default=1, help="diffusion models: DDIM steps (default 1, E2E-FT)")
    parser.add_argument("--ensemble-size", type=int, default=1, help="diffusion models: ensemble members per image")
    parser.add_argument("--seed", type=int, default=0, help="diffusion models: seed of the ensemble's initial noise")
    parser.add_argument("--teacher", metavar="SRC", help="stage-1 / stage-2 (vae) checkpoints: teacher source override")
    parser.add_argument("--npy", action="store_true", help="also write float32 .npy maps")
    parser.add_argument("--no-color", action="store_true", help="do not write colourised PNGs")
    parser.add_argument("--color-map", default="Spectral", help="colour map of the colourised PNGs (default Spectral)")
    parser.add_argument("--recursive", action="store_true", help="also read images in sub-folders of INPUT folders")
    parser.add_argument("--skip-errors", action="store_true", help="warn about unreadable images and go on")
    parser.add_argument("--num-workers", type=int, default=2, help="image decoding worker processes (0 = main)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _batches(
    loader: Iterator[tuple[int, torch.Tensor | None, str | None]], batch_size: int
) -> Iterator[tuple[list[int], list[torch.Tensor], list[tuple[int, str]]]]:
    """Group consecutive same-size images into batches; an unreadable image comes alone, after the batch before it."""
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


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return device


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, load the model, predict and write outputs. Returns the exit code (see the module docstring)."""
    args = build_parser().parse_args(argv)
    from tqdm import tqdm

    from d3epth.tasks.predictor import load_predictor

    def error(message: str, code: int = 2) -> int:
        print(f"error: {message}", file=sys.stderr)
        return code

    if args.batch_size < 1:
        return error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.processing_resolution is not None and args.processing_resolution < 0:
        return error(f"--processing-resolution must be >= 0, got {args.processing_resolution}")
    try:
        images = collect_inputs(args.inputs, args.recursive)
        device = _device(args.device)
        predictor = load_predictor(
            args.model,
            device,
            num_steps=args.num_steps,
            ensemble_size=args.ensemble_size,
            processing_resolution=args.processing_resolution,
            seed=args.seed,
            teacher=args.teacher,
        )
    except (FileNotFoundError, ValueError) as err:
        return error(str(err))
    out = Path(args.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)

    loader = torch.utils.data.DataLoader(
        _ImageFiles(images), batch_size=None, shuffle=False, num_workers=max(args.num_workers, 0)
    )
    dtype = _PRECISIONS[args.precision]
    failures: list[str] = []
    progress = tqdm(total=len(images), unit="img", desc=predictor.name, disable=args.quiet, file=sys.stderr)
    try:
        for indices, tensors, errors in _batches(iter(loader), args.batch_size):
            for _, message in errors:
                if not args.skip_errors:
                    progress.close()
                    return error(f"{message} (use --skip-errors to go on without it)", code=1)
                failures.append(message)
                tqdm.write(f"warning: skipped: {message}", file=sys.stderr)
                progress.update(1)
            if not tensors:
                continue
            batch = torch.stack(tensors).to(device)
            autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
            with autocast:
                depth = predictor.predict(batch).float()
            for index, prediction in zip(indices, depth, strict=True):
                write_outputs(out, images[index].name, prediction[0], args.npy, not args.no_color, args.color_map)
            progress.update(len(indices))
    finally:
        progress.close()
    written = len(images) - len(failures)
    print(f"wrote depth for {written} image(s) to {out}", file=sys.stderr)
    if failures:
        return error(f"{len(failures)} image(s) could not be read and were skipped", code=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
