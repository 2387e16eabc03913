"""The body of ``tools/export.py``: a student as safetensors + config (+ ONNX), a teacher as a diffusers directory.

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
from pathlib import Path

from d3epth.cli.common import fail, one_line_errors


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
        help="image size the ONNX graph is traced at, not both sides multiples of the backbone's stride (default: one "
        "that needs internal padding, e.g. 69x103 for a stride-32 backbone, so the padding path is in the graph); the "
        "graph accepts any size",
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


def _source_kind(source: Path) -> str:
    """``"student"``, ``"exported"`` or ``"teacher"`` for a source path; raises for anything else."""
    # heavy: imported after parsing (see d3epth.cli)
    from d3epth.checkpoints import STUDENT, TASK_KEY, TASKS, TEACHER, load_task_checkpoint, tasks_with
    from d3epth.models.export import is_exported_student

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
    checkpoint = load_task_checkpoint(source, tasks_with(STUDENT, TEACHER), "export source")
    return "teacher" if TEACHER in TASKS[checkpoint[TASK_KEY]].capabilities else "student"


def _export_student(args: argparse.Namespace, source: Path, kind: str, out: Path) -> int:
    """Student (checkpoint or exported directory) → ``out`` (+ ONNX)."""
    from d3epth.inference.predictor import load_student_checkpoint  # heavy: imported after parsing (see d3epth.cli)
    from d3epth.models.export import ONNX_RTOL, export_student_onnx, load_student, read_export_config, save_student

    if kind == "exported":
        model = load_student(source)
        config = read_export_config(source)
        kwargs, info = config["student"], {**config.get("source", {}), "exported_from": str(source)}
    else:
        model, kwargs, task_name = load_student_checkpoint(source, teacher=args.teacher, purpose="export source")
        info = {"checkpoint": str(source.resolve()), "task": task_name}
    if kind != "exported" or out.resolve() != source.resolve():
        save_student(out, model.student, kwargs, model.vae, source=info)
    print(f"student ({model.pixel_decoder} pixel decoder) written to {out}")

    if args.onnx:
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError:
            return fail("ONNX export needs the onnx extra: pip install -e '.[onnx]' (onnx and onnxruntime)")
        result = export_student_onnx(model, out, opset=args.opset, size=args.onnx_size)
        sizes_text = ", ".join(f"{b}x3x{h}x{w}" for b, h, w in result.check_sizes)
        print(
            f"ONNX written to {result.path} (opset {args.opset}, traced at 1x3x{result.size[0]}x{result.size[1]}, "
            f"dynamic batch/height/width); onnxruntime vs PyTorch at {sizes_text}: max abs diff "
            f"{result.max_abs_diff:.3g}, tolerance {result.tolerance:.3g} ({ONNX_RTOL:g} x output range) -> "
            f"{'OK' if result.ok else 'FAILED'}"
        )
        if not result.ok:
            difference = f"{result.max_abs_diff:.3g} > {result.tolerance:.3g}"
            return fail(f"ONNX output differs from PyTorch by {difference}", code=1)
    return 0


def _export_teacher(args: argparse.Namespace, source: Path, out: Path) -> int:
    """Teacher (``TeacherTask`` checkpoint or diffusers directory) → diffusers Marigold directory ``out``."""
    from d3epth.models.export import export_teacher  # heavy: imported after parsing (see d3epth.cli)
    from d3epth.models.teacher import load_teacher

    if args.onnx:
        return fail("--onnx exports students; a teacher is exported as a diffusers directory (drop --onnx)")
    teacher = load_teacher(source, purpose="export source")
    pipeline = export_teacher(
        teacher,
        out,
        default_denoising_steps=args.default_denoising_steps,
        default_processing_resolution=args.default_processing_resolution,
        check=not args.no_check,
    )
    print(f"teacher written to {out} (diffusers MarigoldDepthPipeline layout)")
    if pipeline is not None:
        print(
            f"check: MarigoldDepthPipeline.from_pretrained loads it (scheduler {type(pipeline.scheduler).__name__}, "
            f"timestep_spacing={pipeline.scheduler.config.timestep_spacing}, "
            f"default steps {pipeline.default_denoising_steps}, "
            f"processing resolution {pipeline.default_processing_resolution})"
        )
    return 0


@one_line_errors
def main(argv: list[str]) -> int:
    """Parse arguments and export. Returns the exit code (0 ok, 1 ONNX check failed, 2 bad input)."""
    args = build_parser().parse_args(argv)
    if args.opset < 17:
        return fail(f"--opset must be >= 17, got {args.opset}")
    source, out = Path(args.source).expanduser(), Path(args.out).expanduser()
    kind = _source_kind(source)
    same = kind == "exported" and out.exists() and out.resolve() == source.resolve()
    if out.exists() and not out.is_dir():
        return fail(f"output {out} exists and is not a directory")
    if out.exists() and not same and any(out.iterdir()):
        if not args.overwrite:
            return fail(f"output directory {out} is not empty (use --overwrite)")
        from d3epth.models.export import remove_export_artefacts

        # Only earlier export artefacts are removed (a stale vae/ or model.onnx must not outlive a new export).
        remove_export_artefacts(out)
    if kind == "teacher":
        return _export_teacher(args, source, out)
    return _export_student(args, source, kind, out)
