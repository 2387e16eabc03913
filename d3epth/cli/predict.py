"""The body of ``tools/predict.py``: depth for image files with any d3epth model, written as PNGs and .npy files.

Usage::

    python tools/predict.py INPUT [INPUT ...] --model SOURCE --out DIR [--batch-size 4] [--processing-resolution N]
                            [--device auto|cpu|cuda[:i]] [--precision auto|fp32|bf16|fp16] [--compile] [--npy]
                            [--skip-errors]

INPUT: image files, folders (images directly inside; ``--recursive`` for sub-folders, whose structure is mirrored)
or glob patterns (quote them: ``'photos/**/*.jpg'``). Any size and mode: RGBA / LA / palette transparency is dropped,
greyscale is replicated to RGB, 16-bit greyscale PNGs are scaled by 1/65535, camera EXIF orientation is applied.
SOURCE: anything :func:`d3epth.inference.load_predictor` loads — a task checkpoint of any stage, an exported
student directory, a diffusers Marigold / E2E-FT directory (``--num-steps``, ``--ensemble-size``, ``--seed``).

Outputs, per image ``NAME`` (Marigold's layout)::

    DIR/depth_bw/NAME_pred.png               uint16 PNG: relative depth min-max normalised per image to [0, 1],
                                             × 65535 (the Marigold / diffusers convention; 0 = nearest, 65535 =
                                             farthest). It is *relative* depth: scale and shift are unknown.
    DIR/depth_colored/NAME_pred_colored.png  the same map coloured with "Spectral" (near = red, far = blue), as Marigold
    DIR/depth_npy/NAME_pred.npy              --npy: float32 [H,W], the same normalised map before quantisation

With ``--align-to PATH`` (sparse metric depth: one file for one image, or a folder of files named by image stem;
16-bit PNG ÷ ``--align-scale``, default 256 as KITTI, or ``.npy`` metres; 0 / non-finite = no point), scale and shift
are fitted per image by least squares (``--align-space``: depth, or disparity for disparity models; default the model's
kind) and metric depth is also written (:mod:`d3epth.inference.metric`)::

    DIR/depth_metric/NAME_metric.npy         float32 [H,W], metres
    DIR/depth_metric/NAME_metric_mm.png      uint16, millimetres

Every output has the input image's size. Images are batched (``--batch-size``) when consecutive images share a
processing size; otherwise they run one by one. Exit code: 0, 1 if an image could not be read (first one fails the
run unless ``--skip-errors``, which warns and goes on), 2 for bad arguments, missing inputs or an unloadable model.
Reading and writing live in :mod:`d3epth.inference.images`; this tool parses arguments, runs the loop and reports.

Speed: students run in their inference form (:mod:`d3epth.inference.acceleration`): BatchNorms folded into their
convolutions, channels_last, and by default (``--precision auto``) bf16 weights where the CPU (AVX512-BF16 / AMX) or
GPU supports bf16 natively, else fp32. Eager PyTorch is the default; ``--compile`` (``torch.compile``, dynamic
shapes, frozen weights, element-wise operations fused into the convolutions) is faster per image but pays its
compilation on the first one (see the README, "Inference speed", for the measurements behind both choices).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from d3epth.cli.common import fail, one_line_errors

#: ``--precision`` choices (:data:`d3epth.inference.acceleration.PRECISIONS`, not imported: it pulls in torch models).
_PRECISIONS = ("auto", "fp32", "bf16", "fp16")


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
        "--precision",
        choices=_PRECISIONS,
        default="auto",
        help="autocast dtype of the model; auto (default) = bf16 where the device computes bf16 natively (CPU: "
        "AVX512-BF16 or AMX; CUDA: compute capability 8.0+), else fp32; fp16 only when asked",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="students: run through torch.compile (dynamic shapes; the first image pays tens of seconds of "
        "compilation, worth it for long runs only)",
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
    parser.add_argument(
        "--align-to",
        metavar="PATH",
        help="sparse metric depth (a file, or a folder matched by image stem: 16-bit .png or .npy in metres; "
        "0 = no point): fit scale and shift per image and also write metric depth to DIR/depth_metric/",
    )
    parser.add_argument(
        "--align-scale", type=float, default=256.0, help="16-bit --align-to PNGs: value / scale = metres (256, KITTI)"
    )
    parser.add_argument(
        "--align-space",
        choices=("auto", "depth", "disparity"),
        default="auto",
        help="least-squares space of the fit; auto = the model's kind (depth for d3epth and Marigold models)",
    )
    parser.add_argument("--align-min-points", type=int, default=10, help="fewest sparse points a fit accepts")
    return parser


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return device


def _write_metric(
    out: Path,
    name: str,
    prediction: torch.Tensor,
    size: tuple[int, int],
    sparse: Path,
    args: argparse.Namespace,
    space: str,
) -> None:
    """Fit the prediction [h,w] (resized to the image's ``size``) to the sparse file; write metric depth."""
    from d3epth.errors import DataError
    from d3epth.inference.metric import fit_metric_depth, read_sparse_depth, write_metric
    from d3epth.inference.sizing import resize_bilinear

    points = read_sparse_depth(sparse, args.align_scale)
    if tuple(points.shape) != tuple(size):
        raise DataError(
            f"--align-to {sparse} is {points.shape[0]}x{points.shape[1]} but image {name} is {size[0]}x{size[1]}; "
            "sparse depth must have the image's size"
        )
    full = resize_bilinear(prediction.float().cpu()[None, None], size)[0, 0]
    try:
        fit = fit_metric_depth(full, points, space, args.align_min_points)
    except DataError as err:
        raise DataError(f"--align-to {sparse} (image {name}): {err}") from err
    write_metric(out, name, fit.depth)


@one_line_errors
def main(argv: list[str]) -> int:
    """Parse arguments, load the model, predict and write outputs. Returns the exit code (see the module docstring)."""
    args = build_parser().parse_args(argv)
    from tqdm import tqdm  # heavy: with d3epth.inference, imported after parsing (see d3epth.cli)

    from d3epth.inference import ImageFiles, collect_inputs, load_predictor, same_size_batches, write_outputs
    from d3epth.inference.acceleration import accelerate_predictor

    if args.batch_size < 1:
        return fail(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.processing_resolution is not None and args.processing_resolution < 0:
        return fail(f"--processing-resolution must be >= 0, got {args.processing_resolution}")
    images = collect_inputs(args.inputs, args.recursive)
    sparse_files = None
    if args.align_to is not None:
        from d3epth.inference.metric import match_sparse

        if args.align_scale <= 0:
            return fail(f"--align-scale must be > 0 (256: KITTI, 1000: mm), got {args.align_scale}")
        sparse_files = match_sparse([image.name for image in images], Path(args.align_to).expanduser())
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
    accelerate_predictor(predictor, args.precision, compile=args.compile)
    out = Path(args.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)

    # Images are decoded straight at the processing size (and predictions written back at the input size strip by
    # strip), so memory follows the processing resolution, not the photo: the model then runs at native size.
    resolution = predictor.processing_resolution if args.processing_resolution is None else args.processing_resolution
    loader = torch.utils.data.DataLoader(
        ImageFiles(images, predictor.size_rule(resolution)),
        batch_size=None,
        shuffle=False,
        num_workers=max(args.num_workers, 0),
    )
    failures: list[str] = []
    progress = tqdm(total=len(images), unit="img", desc=predictor.name, disable=args.quiet, file=sys.stderr)
    try:
        for indices, decoded, errors in same_size_batches(iter(loader), args.batch_size):
            for _, message in errors:
                if not args.skip_errors:
                    progress.close()
                    return fail(f"{message} (use --skip-errors to go on without it)", code=1)
                failures.append(message)
                tqdm.write(f"warning: skipped: {message}", file=sys.stderr)
                progress.update(1)
            if not decoded:
                continue
            batch = torch.stack([item.image for item in decoded]).to(device)
            depth = predictor.predict(batch, processing_resolution=0).float()
            for index, item, prediction in zip(indices, decoded, depth, strict=True):
                name = images[index].name
                write_outputs(
                    out,
                    name,
                    prediction[0],
                    args.npy,
                    not args.no_color,
                    args.color_map,
                    item.size,
                    antialias=predictor.output_antialias,
                )
                if sparse_files is not None:
                    space = predictor.kind if args.align_space == "auto" else args.align_space
                    _write_metric(out, name, prediction[0], item.size, sparse_files[index], args, space)
            progress.update(len(indices))
    finally:
        progress.close()
    written = len(images) - len(failures)
    print(f"wrote depth for {written} image(s) to {out}", file=sys.stderr)
    if failures:
        return fail(f"{len(failures)} image(s) could not be read and were skipped", code=1)
    return 0
