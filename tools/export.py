"""Export a trained model: a student as safetensors + config (+ ONNX), a teacher as a diffusers directory.

Usage::

    python tools/export.py SOURCE --out DIR [--onnx [--opset 17]] [--teacher SRC] [--overwrite]

SOURCE is one of

* a stage-1 (``LatentDistillationTask``), stage-2 or baseline (``PixelRefinementTask``) checkpoint, or an already
  exported student directory → ``DIR/model.safetensors`` + ``DIR/config.json`` (``DepthStudent`` arguments, heads,
  pixel decoder, input "RGB in [-1, 1]", output "affine-invariant depth", d3epth version). Students whose depth is
  decoded by the teacher's VAE (stage 1, stage 2 with ``pixel_decoder: vae``) also get ``DIR/vae/`` (the teacher's
  ``AutoencoderKL`` in diffusers layout), so the export needs no teacher UNet. Load it back with
  ``d3epth.models.export.load_student(DIR)`` (no Lightning). ``--onnx`` adds ``DIR/model.onnx`` (dynamic batch,
  height and width), checked with onnxruntime against PyTorch at sizes other than the export size;
* a ``TeacherTask`` checkpoint or a diffusers Marigold / E2E-FT directory → a diffusers directory that
  ``diffusers.MarigoldDepthPipeline.from_pretrained(DIR)`` loads (checked after writing unless ``--no-check``).

Examples::

    python tools/export.py lightning_logs/stage2/version_0/checkpoints/last.ckpt --out exported/student --onnx
    python tools/export.py lightning_logs/teacher/version_0/checkpoints/last.ckpt --out exported/teacher
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import warnings
from pathlib import Path

import torch

#: ONNX parity tolerance: max |onnxruntime − PyTorch| ≤ ONNX_RTOL × (max − min of the PyTorch output), at least
#: ONNX_ATOL. float32 kernels differ in summation order; 1e-4 of the output range is far below what a depth map shows.
ONNX_RTOL = 1e-4
ONNX_ATOL = 1e-6
#: What an export writes; ``--overwrite`` removes these (and nothing else) from the output directory first.
ARTEFACTS = (
    "config.json",
    "model.safetensors",
    "model.onnx",
    "model_index.json",
    "empty_text_embedding.safetensors",
    "vae",
    "unet",
    "scheduler",
    "text_encoder",
    "tokenizer",
)


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``tools/export.py``."""
    parser = argparse.ArgumentParser(
        prog="tools/export.py",
        description=(
            "Export a d3epth student (stage-1 / stage-2 / baseline checkpoint) as model.safetensors + config.json "
            "(+ ONNX), or a teacher (TeacherTask checkpoint or diffusers directory) as a diffusers Marigold directory."
        ),
    )
    parser.add_argument("source", help="task checkpoint (.ckpt), exported student directory or diffusers directory")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument(
        "--onnx", action="store_true", help="students: also write DIR/model.onnx (needs pip install -e '.[onnx]')"
    )
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17; default 17)")
    parser.add_argument(
        "--onnx-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="image size the ONNX graph is traced at (default: one that needs internal padding, e.g. 69x103 for a "
        "stride-32 backbone, so the padding path is in the graph); the graph accepts any size",
    )
    parser.add_argument(
        "--teacher",
        metavar="SRC",
        help="stage-1 / stage-2 (vae) checkpoints: teacher source to use instead of the one stored in the checkpoint",
    )
    parser.add_argument(
        "--default-denoising-steps", type=int, default=1, help="teachers: model_index.json default steps (default 1)"
    )
    parser.add_argument(
        "--default-processing-resolution",
        type=int,
        default=None,
        help="teachers: model_index.json default processing resolution (default: the VAE's sample size)",
    )
    parser.add_argument("--no-check", action="store_true", help="teachers: skip loading the result with diffusers")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty output directory")
    return parser


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _source_kind(source: Path) -> str:
    """``"student"``, ``"exported"`` or ``"teacher"`` for a source path; raises for anything else."""
    from d3epth.models.export import is_exported_student
    from d3epth.tasks.base import TASK_KEY, load_task_checkpoint

    if not source.exists():
        raise FileNotFoundError(f"source not found: {source}")
    if source.is_dir():
        if is_exported_student(source):
            return "exported"
        if all((source / sub).is_dir() for sub in ("unet", "vae", "scheduler")):
            return "teacher"
        raise ValueError(
            f"{source} is neither an exported d3epth student (config.json + model.safetensors) nor a diffusers "
            "Marigold / E2E-FT directory (unet/, vae/, scheduler/)"
        )
    accepted = ("LatentDistillationTask", "PixelRefinementTask", "TeacherTask")
    checkpoint = load_task_checkpoint(source, accepted, "export source")
    return "teacher" if checkpoint[TASK_KEY] == "TeacherTask" else "student"


def export_onnx(model: torch.nn.Module, path: Path, size: tuple[int, int], opset: int) -> None:
    """Trace ``model`` (image ``[B,3,H,W]`` → depth ``[B,1,H,W]``) to ONNX with dynamic batch, height and width.

    The TorchScript exporter (``dynamo=False``) records the student's integer size arithmetic as graph ops, so the
    graph pads and crops correctly at any size; Python branches are frozen at the traced size, hence ``size`` should be
    one that needs padding (then the pad is in the graph, and a zero pad is harmless at other sizes).
    """
    import onnx

    image = torch.rand(1, 3, *size) * 2 - 1
    axes = {0: "batch", 2: "height", 3: "width"}
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer warns about every Python-level shape comparison; the module docstring above says why it is fine.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            model,
            (image,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=["image"],
            output_names=["depth"],
            dynamic_axes={"image": axes, "depth": axes},
        )
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    for key, value in {
        "input": "image: float32 [B,3,H,W] RGB in [-1,1], any H and W",
        "output": "depth: float32 [B,1,H,W] affine-invariant (relative) depth, larger = farther",
        "producer": "d3epth tools/export.py",
    }.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(graph, str(path))


def check_onnx(model: torch.nn.Module, path: Path, sizes: list[tuple[int, int, int]]) -> tuple[float, float]:
    """Run the ONNX file with onnxruntime and PyTorch on random images of ``(B, H, W)`` sizes.

    Returns:
        ``(max_abs_diff, tolerance)`` over all sizes, the tolerance being ``ONNX_RTOL × output range`` (see above).
    """
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    worst, tolerance = 0.0, float("inf")
    for batch, height, width in sizes:
        image = torch.rand(batch, 3, height, width, generator=generator) * 2 - 1
        with torch.no_grad():
            reference = model(image)
        (output,) = session.run(["depth"], {"image": image.numpy()})
        if tuple(output.shape) != tuple(reference.shape):
            raise RuntimeError(
                f"ONNX output shape {output.shape} != PyTorch {tuple(reference.shape)} at {height}x{width}"
            )
        diff = float((torch.from_numpy(output) - reference).abs().max())
        span = float(reference.max() - reference.min())
        worst = max(worst, diff)
        tolerance = min(tolerance, max(ONNX_RTOL * span, ONNX_ATOL))
    return worst, tolerance


def export_student(args: argparse.Namespace, source: Path, kind: str, out: Path) -> int:
    """Student (checkpoint or exported directory) → ``out`` (+ ONNX)."""
    from d3epth.models.export import CONFIG_FILE, ONNX_FILE, load_student, read_export_config, save_student
    from d3epth.tasks.predictor import load_task, student_model_from_task

    if kind == "exported":
        model = load_student(source)
        config = read_export_config(source)
        kwargs, info = config["student"], {**config.get("source", {}), "exported_from": str(source)}
    else:
        task = load_task(source, teacher=args.teacher, purpose="export source")
        model, kwargs = student_model_from_task(task)
        info = {"checkpoint": str(source.resolve()), "task": type(task).__name__}
    if kind != "exported" or out.resolve() != source.resolve():
        save_student(out, model.student, kwargs, model.vae, source=info)
    print(f"student ({model.pixel_decoder} pixel decoder) written to {out}")

    if args.onnx:
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError:
            return _error("ONNX export needs the onnx extra: pip install -e '.[onnx]' (onnx and onnxruntime)")
        multiple = model.size_multiple
        size = tuple(args.onnx_size) if args.onnx_size else (2 * multiple + 5, 3 * multiple + 7)
        path = out / ONNX_FILE
        export_onnx(model.eval(), path, size, args.opset)
        # Check at sizes other than the traced one: an exact multiple (no padding), an odd one, batch 2.
        check_sizes = [(1, 2 * multiple, 3 * multiple), (2, multiple + 3, 2 * multiple + 11)]
        diff, tolerance = check_onnx(model, path, check_sizes)
        ok = diff <= tolerance
        sizes_text = ", ".join(f"{b}x3x{h}x{w}" for b, h, w in check_sizes)
        print(
            f"ONNX written to {path} (opset {args.opset}, traced at 1x3x{size[0]}x{size[1]}, dynamic batch/height/"
            f"width); onnxruntime vs PyTorch at {sizes_text}: max abs diff {diff:.3g}, tolerance {tolerance:.3g} "
            f"({ONNX_RTOL:g} x output range) -> {'OK' if ok else 'FAILED'}"
        )
        config_path = out / CONFIG_FILE
        config = json.loads(config_path.read_text())
        config["onnx"] = {
            "file": ONNX_FILE,
            "opset": args.opset,
            "dynamic_axes": ["batch", "height", "width"],
            "check": {"sizes": [list(s) for s in check_sizes], "max_abs_diff": diff, "tolerance": tolerance},
        }
        config_path.write_text(json.dumps(config, indent=2) + "\n")
        if not ok:
            print(f"error: ONNX output differs from PyTorch by {diff:.3g} > {tolerance:.3g}", file=sys.stderr)
            return 1
    return 0


def export_teacher(args: argparse.Namespace, source: Path, out: Path) -> int:
    """Teacher (``TeacherTask`` checkpoint or diffusers directory) → diffusers Marigold directory ``out``."""
    from d3epth.tasks.teacher import load_teacher

    if args.onnx:
        return _error("--onnx exports students; a teacher is exported as a diffusers directory (drop --onnx)")
    teacher = load_teacher(source, purpose="export source")
    teacher.save_pretrained(
        out,
        default_denoising_steps=args.default_denoising_steps,
        default_processing_resolution=args.default_processing_resolution,
    )
    print(f"teacher written to {out} (diffusers MarigoldDepthPipeline layout)")
    if not args.no_check:
        from diffusers import MarigoldDepthPipeline

        pipeline = MarigoldDepthPipeline.from_pretrained(out, local_files_only=True)
        print(
            f"check: MarigoldDepthPipeline.from_pretrained loads it (scheduler {type(pipeline.scheduler).__name__}, "
            f"timestep_spacing={pipeline.scheduler.config.timestep_spacing}, "
            f"default steps {pipeline.default_denoising_steps}, "
            f"processing resolution {pipeline.default_processing_resolution})"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and export. Returns the exit code (0 ok, 1 ONNX check failed, 2 bad input)."""
    args = build_parser().parse_args(argv)
    if args.opset < 17:
        return _error(f"--opset must be >= 17, got {args.opset}")
    source, out = Path(args.source).expanduser(), Path(args.out).expanduser()
    try:
        kind = _source_kind(source)
    except (FileNotFoundError, ValueError) as err:
        return _error(str(err))
    same = kind == "exported" and out.exists() and out.resolve() == source.resolve()
    if out.exists() and not out.is_dir():
        return _error(f"output {out} exists and is not a directory")
    if out.exists() and not same and any(out.iterdir()):
        if not args.overwrite:
            return _error(f"output directory {out} is not empty (use --overwrite)")
        # Only earlier export artefacts are removed (a stale vae/ or model.onnx must not outlive a new export).
        for name in ARTEFACTS:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    try:
        if kind == "teacher":
            return export_teacher(args, source, out)
        return export_student(args, source, kind, out)
    except (FileNotFoundError, ValueError) as err:
        return _error(str(err))


if __name__ == "__main__":
    sys.exit(main())
