"""Which student? Speed vs accuracy of timm backbones x decoder widths, beside the SD2-shaped one-step teacher.

For every student (a :class:`~d3epth.models.student.DepthStudent` with one backbone and one decoder width) this
measures, in one run:

* parameters and GFLOPs per image at 480x640 (``torch.utils.flop_counter``, 2 per multiply-add, depth head only:
  the inference path);
* CPU ms/image at 480x640 in fp32 and in bf16, each student in the inference form that ``tools/predict.py`` runs
  (:func:`~d3epth.inference.acceleration.prepare_for_inference`: fused, channels_last, converted to the precision),
  beside the SD2-shaped one-step teacher (VAE encode -> 8-channel UNet at t=999 -> VAE decode, random weights, see
  ``student_speed.py``; channels_last, under autocast as the teacher predictor runs it) timed in the same run and
  the same precision. The students are timed in rounds (one call of each student per round, the teacher once in
  some of the rounds), so that a change in machine load hits every arm alike; the median per arm is kept;
* held-out accuracy (AbsRel, δ1 on the Hypersim-like and NYU-like test scenes of the generated sample data) after
  the same scaled stage-1 + stage-2 budget for every student, distilling the one sample teacher that the quick
  start's autoencoder + teacher stages train once (the sample configs with the backbone and width overridden).

Speed is measured at the paper's shape (480x640) against the SD2-sized teacher; accuracy at sample scale (96x128,
tiny teacher, short budget). It prints and writes a Markdown table, a scatter plot (speed-up over the teacher vs
AbsRel, Pareto front, the 100x line) and JSON under ``--out``::

    python benchmarks/student_pareto.py --out benchmarks/results/student_pareto      # full (see --help for sizes)
    python benchmarks/student_pareto.py --quick --out /tmp/pareto                     # wiring smoke (tiny models)

Weights are random (timing does not depend on them; accuracy comes from the sample training); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/: the helpers shared by the benchmarks
from student_speed import (
    build_sd2_one_step_teacher,
    count_flops,
    describe_hardware,
    teacher_gflops,
    teacher_step,
    time_callable,
)

from d3epth.inference.acceleration import prepare_for_inference
from d3epth.models.depth_model import StudentDepthModel
from d3epth.models.student import DepthStudent

REPO = Path(__file__).resolve().parents[1]

#: Eight backbones of six families and several sizes: ConvNeXt pico / nano / tiny (tiny: the paper-scale default),
#: EfficientNet-Lite0 (the sample default), MobileNetV3-L, MobileNetV4-conv-M, ResNet-18 and the hybrid FastViT-T8.
#: All build with ``features_only=True`` in timm 1.0.31 with strides 2/4..32.
DEFAULT_BACKBONES = (
    "convnext_pico",
    "convnext_nano",
    "convnext_tiny",
    "efficientnet_lite0",
    "mobilenetv3_large_100",
    "mobilenetv4_conv_medium",
    "resnet18",
    "fastvit_t8",
)
#: The two existing defaults' decoder widths: 32 (configs/sample) and 128 (paper configs, DepthStudent's default).
DEFAULT_WIDTHS = (32, 128)
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}
#: Tiny timm test models for ``--quick`` (seconds, no real architecture).
QUICK_BACKBONES = ("test_efficientnet", "test_convnext")
QUICK_WIDTHS = (8, 16)


@dataclass(frozen=True)
class Student:
    """One arm: a timm backbone and a decoder width."""

    backbone: str
    width: int

    @property
    def name(self) -> str:
        """``<backbone>/w<width>``, the row label."""
        return f"{self.backbone}/w{self.width}"


# --------------------------------------------------------------------------------------------------- Pareto front
def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated points, faster first, where higher ``x`` (speed-up) and lower ``y`` (AbsRel) win.

    A point is dominated when another is at least as good on both axes and better on one. Exact ties on both axes
    keep the first. Returns the front sorted by decreasing ``x``.
    """
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            (xo >= x and yo <= y and (xo > x or yo < y)) or (j < i and (xo, yo) == (x, y))
            for j, (xo, yo) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: -points[i][0])


def best_within(rows: Sequence[dict], key: str, minimum: float, accuracy: str) -> dict | None:
    """The most accurate row (lowest ``accuracy``) whose ``key`` (a speed-up) is at least ``minimum``."""
    fast = [r for r in rows if r[key] >= minimum]
    return min(fast, key=lambda r: r[accuracy]) if fast else None


# ------------------------------------------------------------------------------------------------------------ speed
def build_teacher(kind: str) -> tuple[nn.Module, nn.Module]:
    """The teacher's (UNet, VAE): ``"sd2"`` the SD2-shaped one of student_speed.py, ``"tiny"`` the test-sized one."""
    if kind == "sd2":
        return build_sd2_one_step_teacher()
    from d3epth.models.teacher.build import from_config  # diffusers

    teacher = from_config()
    return teacher.unet, teacher.vae


def teacher_inputs(unet: nn.Module, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Image [1,3,H,W] in [-1,1], a 2-token empty-prompt embedding of the UNet's width, and t=999."""
    image = torch.rand(1, 3, height, width) * 2 - 1
    text = torch.zeros(1, 2, unet.config.cross_attention_dim)  # values do not affect timing
    return image, text, torch.full((1,), 999, dtype=torch.long)


def measure_speed(students: Sequence[Student], args: argparse.Namespace) -> tuple[dict[str, dict], dict[str, float]]:
    """Parameters, GFLOPs and median CPU ms/image of every student and of the teacher, per precision, in one run.

    Returns:
        ``{student name: {"params_m", "gflops", "ms_fp32", "ms_bf16", "times_fp32", "times_bf16"}}`` and
        ``{"ms_fp32", "ms_bf16", "gflops", "times_fp32", "times_bf16"}`` for the teacher (ms per 1x3xHxW image).
    """
    image = torch.rand(1, 3, args.height, args.width) * 2 - 1
    models: dict[str, dict[str, nn.Module]] = {tag: {} for tag in PRECISIONS}
    rows: dict[str, dict] = {}
    for s in students:
        model = StudentDepthModel(DepthStudent(s.backbone, heads=("depth",), decoder_channels=s.width)).eval()
        with torch.inference_mode():
            flops = count_flops(lambda m=model: m(image))
        rows[s.name] = {"params_m": sum(p.numel() for p in model.parameters()) / 1e6, "gflops": flops / 1e9}
        for tag in PRECISIONS:  # what tools/predict.py runs: fused, channels_last, converted to the precision
            models[tag][s.name] = prepare_for_inference(copy.deepcopy(model), tag)
        print(f"  built {s.name}: {rows[s.name]['params_m']:.2f} M params, {flops / 1e9:.1f} GFLOPs", flush=True)

    unet, vae = build_teacher(args.teacher)
    unet = unet.eval().to(memory_format=torch.channels_last)
    vae = vae.eval().to(memory_format=torch.channels_last)
    t_image, text, timestep = teacher_inputs(unet, args.height, args.width)
    t_image = t_image.contiguous(memory_format=torch.channels_last)
    if args.teacher == "sd2":
        gflops = teacher_gflops(args.height, args.width)  # on the meta device: no compute
    else:
        with torch.inference_mode():
            gflops = count_flops(lambda: teacher_step(unet, vae, t_image, text, timestep)) / 1e9
    label = "SD2-shaped one-step teacher" if args.teacher == "sd2" else "tiny one-step teacher (--quick)"
    teacher: dict[str, float | str | list[float]] = {"gflops": gflops, "label": label}

    for tag, dtype in PRECISIONS.items():

        def runner(fn: Callable[[], object], autocast: torch.dtype = torch.float32) -> Callable[[], object]:
            @torch.inference_mode()
            def run() -> object:
                with torch.autocast("cpu", dtype=autocast, enabled=autocast != torch.float32):
                    return fn()

            return run

        calls = {name: runner(lambda m=m: m(image)) for name, m in models[tag].items()}
        # The teacher under autocast, as accelerate_predictor runs it (its UNet and VAE have no BatchNorm to fold).
        teacher_call = runner(lambda: teacher_step(unet, vae, t_image, text, timestep), dtype)
        for call in calls.values():
            time_callable(call, "cpu", args.warmup, 0)
        time_callable(teacher_call, "cpu", 1, 0)
        # The teacher's repeats are spread over the student rounds (round 0, ..., last) so that all arms share load.
        teacher_rounds = {
            round(k * (args.rounds - 1) / max(1, args.teacher_repeats - 1)) for k in range(args.teacher_repeats)
        }
        times: dict[str, list[float]] = {name: [] for name in calls}
        teacher_times: list[float] = []
        start = time.perf_counter()
        for r in range(args.rounds):
            for name, call in calls.items():
                times[name] += time_callable(call, "cpu", 0, 1)
            if r in teacher_rounds:
                teacher_times += time_callable(teacher_call, "cpu", 0, 1)
        for name in calls:
            rows[name][f"ms_{tag}"] = statistics.median(times[name])
            rows[name][f"times_{tag}"] = times[name]
        teacher[f"ms_{tag}"] = statistics.median(teacher_times)
        teacher[f"times_{tag}"] = teacher_times
        print(
            f"  {tag}: {args.rounds} rounds in {time.perf_counter() - start:.0f} s, "
            f"teacher {teacher[f'ms_{tag}']:.0f} ms/image",
            flush=True,
        )
    return rows, teacher


# --------------------------------------------------------------------------------------------------------- accuracy
def measure_accuracy(students: Sequence[Student], args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Train every student with the same sample stage-1 + stage-2 budget; its test-split metrics.

    The autoencoder and teacher are trained once (``d3epth.cli.quickstart.run_stage``, ``--teacher-steps``); each
    student's stage 1 distils that teacher and its stage 2 refines with the Hybrid Depth Loss, both from
    ``configs/sample/`` for ``--stage-steps``. Finished runs under ``--work`` are reused (and interrupted ones resumed),
    as the quick start does.

    Returns:
        ``{student name: {"hypersim/abs_rel", "hypersim/delta1", "nyu/abs_rel", ..., "train_s"}}``.
    """
    from distillation_value import score  # a checkpoint's test-split metrics, as the distillation benchmark scores

    from d3epth.cli.quickstart import STAGES, Stage, run_stage
    from d3epth.cli.trainer import build_cli

    work = args.work.resolve()
    data = (args.data or work / "sample_data").resolve()
    os.environ["D3EPTH_SAMPLE_ROOT"] = str(data)
    if not (data / "hypersim" / "filename_list_train_filtered.txt").is_file():
        subprocess.run(
            [sys.executable, str(REPO / "tools" / "make_sample_data.py"), "--out", str(data), "--no-progress"],
            check=True,
        )
    logs = work / "logs"
    for stage, steps in zip(STAGES[:2], args.teacher_steps, strict=True):  # autoencoder, teacher: once, shared
        teacher = run_stage(stage, logs, max_steps=steps)
    datamodule = build_cli(["--config", str(REPO / "configs" / "sample" / "data.yaml")], parse_only=True)
    test_sets = {k: v for k, v in datamodule.build_datamodule().test_sets.items() if k in ("hypersim", "nyu")}
    splits = {"test": test_sets}  # score()'s keys: "<set>/<metric>" for the test split

    # Validating would cost a pass over three sample sets per run and chooses nothing here: the last checkpoint of
    # stage 2 is what gets scored, on the test split.
    common = [f"--seed_everything={args.seed}", "--trainer.limit_val_batches=0", "--trainer.enable_progress_bar=false"]
    results = {}
    for s in students:
        tag = f"{s.backbone}_w{s.width}"
        stage1 = Stage(
            f"stage1 {s.name}",
            "configs/sample/stage1.yaml",
            lambda logs, s=s, tag=tag: [
                *common,
                f"--run_name=pareto_stage1_{tag}",
                f"--model.init_args.student.backbone={s.backbone}",
                f"--model.init_args.student.decoder_channels={s.width}",
                f"--model.init_args.teacher={teacher}",
            ],
            f"[2] stage 1, {s.name}",
        )
        stage2 = Stage(
            f"stage2 {s.name}",
            "configs/sample/stage2.yaml",  # the student (backbone, width) comes from the stage-1 checkpoint
            lambda logs, tag=tag: [
                *common,
                f"--run_name=pareto_stage2_{tag}",
                f"--model.init_args.init_from={logs / f'pareto_stage1_{tag}'}",
            ],
            f"[3] stage 2, {s.name}",
        )
        start = time.perf_counter()
        run_stage(stage1, logs, max_steps=args.stage_steps[0])
        checkpoint = run_stage(stage2, logs, max_steps=args.stage_steps[1])
        results[s.name] = {**score(checkpoint, splits), "train_s": time.perf_counter() - start}
    results["teacher (sample)"] = score(teacher, splits)
    return results


# ------------------------------------------------------------------------------------------------------- reporting
def table_rows(students: Sequence[Student], speed: dict, teacher: dict, accuracy: dict) -> list[dict]:
    """One flat row per student: speed, speed-up over the teacher per precision (and their minimum), accuracy."""
    rows = []
    for s in students:
        row = {"student": s.name, "backbone": s.backbone, "width": s.width}
        row |= {k: v for k, v in speed[s.name].items() if not k.startswith("times_")}
        for tag in PRECISIONS:
            row[f"speedup_{tag}"] = teacher[f"ms_{tag}"] / row[f"ms_{tag}"]
        row["speedup_min"] = min(row[f"speedup_{tag}"] for tag in PRECISIONS)
        row |= {k: v for k, v in accuracy[s.name].items()}
        rows.append(row)
    return rows


def mark_fronts(rows: list[dict], accuracy: str) -> dict[str, list[str]]:
    """``{speed-up key: names on its Pareto front}`` for each precision and the minimum over both."""
    fronts = {}
    for key in (*(f"speedup_{t}" for t in PRECISIONS), "speedup_min"):
        fronts[key] = [rows[i]["student"] for i in pareto_front([(r[key], r[accuracy]) for r in rows])]
    return fronts


def markdown(rows: Sequence[dict], teacher: dict, fronts: dict, chosen: dict, header: str) -> str:
    """The results as a Markdown table (``*``: on the Pareto front of the min-over-precisions speed-up)."""
    lines = [
        header,
        "",
        f"{teacher['label']}: {teacher['gflops']:.0f} GFLOPs/image, "
        f"{teacher['ms_fp32'] / 1e3:.2f} s/image fp32, {teacher['ms_bf16'] / 1e3:.2f} s/image bf16 (median).",
        "",
        "| student (backbone/decoder width) | params M | GFLOPs | fp32 ms | × teacher fp32 | bf16 ms | × teacher bf16 "
        "| Hypersim AbsRel | Hypersim δ1 | NYU AbsRel | NYU δ1 | front |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|:-:|",
    ]
    for r in sorted(rows, key=lambda r: -r["speedup_min"]):
        mark = "*" if r["student"] in fronts["speedup_min"] else ""
        lines.append(
            f"| {r['student']} | {r['params_m']:.2f} | {r['gflops']:.1f} | {r['ms_fp32']:.0f} | "
            f"{r['speedup_fp32']:.0f}× | {r['ms_bf16']:.0f} | {r['speedup_bf16']:.0f}× | "
            f"{r['hypersim/abs_rel']:.4f} | {r['hypersim/delta1']:.3f} | {r['nyu/abs_rel']:.4f} | "
            f"{r['nyu/delta1']:.3f} | {mark} |"
        )
    lines.append("")
    for key, row in chosen.items():
        text = (
            "none"
            if row is None
            else (f"**{row['student']}** ({row[key]:.0f}×, Hypersim AbsRel {row['hypersim/abs_rel']:.4f})")
        )
        lines.append(f"- most accurate with {key.replace('speedup_', 'speed-up ')} ≥ 100×: {text}")
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[dict], fronts: dict, accuracy: str, path: Path, speed_note: str) -> None:
    """Speed-up over the teacher (log x) vs AbsRel, one panel per precision: labelled points, front, 100x line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    fig, axes = plt.subplots(1, len(PRECISIONS), figsize=(6.5 * len(PRECISIONS), 5), sharey=True)
    for ax, tag in zip(axes, PRECISIONS, strict=True):
        key = f"speedup_{tag}"
        xs, ys = [r[key] for r in rows], [r[accuracy] for r in rows]
        ax.scatter(
            xs, ys, c=["tab:blue" if r["width"] == min(r2["width"] for r2 in rows) else "tab:orange" for r in rows]
        )
        for r in rows:
            ax.annotate(r["student"], (r[key], r[accuracy]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        front = [next(r for r in rows if r["student"] == n) for n in fronts[key]]
        ax.plot(
            [r[key] for r in front], [r[accuracy] for r in front], color="tab:green", zorder=0, label="Pareto front"
        )
        ax.axvline(100, color="tab:red", linestyle="--", label="100× the teacher")
        ax.set_xscale("log")
        ticks = FuncFormatter(lambda value, _: f"{value:g}×")
        ax.xaxis.set_major_formatter(ticks)
        ax.xaxis.set_minor_formatter(ticks)
        ax.tick_params(axis="x", which="minor", labelsize=7)
        ax.set_xlabel(f"measured speed-up over the {speed_note}, {tag}")
        ax.grid(alpha=0.3, which="both")
        ax.legend(loc="best", fontsize=8)
        ax.set_title(f"{tag}: blue = narrow decoder, orange = wide", fontsize=9)
    axes[0].set_ylabel(f"{accuracy} (sample test scenes, lower is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(prog="benchmarks/student_pareto.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "student_pareto")
    parser.add_argument("--work", type=Path, default=None, help="training runs and sample data (default: <out>/work)")
    parser.add_argument("--data", type=Path, default=None, help="sample data folder (default: <work>/sample_data)")
    parser.add_argument("--quick", action="store_true", help="tiny timm test models, 64x64, tiny teacher and budget")
    parser.add_argument("--backbones", nargs="+", default=None, help=f"default: {' '.join(DEFAULT_BACKBONES)}")
    parser.add_argument("--widths", type=int, nargs="+", default=None, help="decoder widths (default: 32 128)")
    parser.add_argument("--height", type=int, default=None, help="timing size (default 480, quick 64)")
    parser.add_argument("--width", type=int, default=None, help="timing size (default 640, quick 64)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per precision (default 5, quick 2)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per student and precision")
    parser.add_argument("--teacher-repeats", type=int, default=2, help="timed teacher calls per precision")
    parser.add_argument(
        "--stage-steps",
        type=int,
        nargs=2,
        default=None,
        metavar=("STAGE1", "STAGE2"),
        help="each student's stage-1 and stage-2 steps (default 75 75, the recorded run's; quick 1 1)",
    )
    parser.add_argument(
        "--teacher-steps",
        type=int,
        nargs=2,
        default=None,
        metavar=("AUTOENCODER", "TEACHER"),
        help="steps of the shared sample autoencoder and teacher (default 200 250, the recorded run's; quick 1 2)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads for timing and training (default: torch's)"
    )
    parser.add_argument("--accuracy", default="hypersim/abs_rel", help="the metric ranked (lower is better)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Measure speed, then accuracy; write the table, plot and JSON. Returns the exit code."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    quick = args.quick
    backbones = args.backbones or list(QUICK_BACKBONES if quick else DEFAULT_BACKBONES)
    widths = args.widths or list(QUICK_WIDTHS if quick else DEFAULT_WIDTHS)
    args.height = args.height or (64 if quick else 480)
    args.width = args.width or (64 if quick else 640)
    args.rounds = args.rounds or (2 if quick else 5)
    args.stage_steps = args.stage_steps or ([1, 1] if quick else [75, 75])
    args.teacher_steps = args.teacher_steps or ([1, 2] if quick else [200, 250])
    args.teacher = "tiny" if quick else "sd2"
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    args.work = args.work or out / "work"
    students = [Student(b, w) for b in backbones for w in widths]
    if args.threads is not None:
        # On a shared machine 1 thread avoids the oversubscription stalls of OpenMP barriers (a 96x128 training
        # step ran 8.6x faster with 1 thread than with 2 while other jobs held the cores).
        torch.set_num_threads(args.threads)

    start = time.perf_counter()
    hardware = describe_hardware(["cpu"])
    print(hardware, flush=True)
    print(f"== speed: {len(students)} students at {args.height}x{args.width}, fp32 and bf16", flush=True)
    speed, teacher = measure_speed(students, args)
    speed_s = time.perf_counter() - start
    print(f"== accuracy: sample stage 1 + stage 2, {' + '.join(map(str, args.stage_steps))} steps each", flush=True)
    accuracy = measure_accuracy(students, args)
    elapsed = time.perf_counter() - start

    rows = table_rows(students, speed, teacher, accuracy)
    fronts = mark_fronts(rows, args.accuracy)
    chosen = {key: best_within(rows, key, 100.0, args.accuracy) for key in fronts}
    header = (
        f"Student Pareto front, one run ({elapsed / 60:.1f} min: speed {speed_s / 60:.1f} min, accuracy "
        f"{(elapsed - speed_s) / 60:.1f} min). {hardware.splitlines()[1]}; {hardware.splitlines()[2]}. Speed: "
        f"1x3x{args.height}x{args.width}, students in their inference form (fused, channels_last, converted), "
        f"teacher channels_last under autocast, median of {args.rounds} rounds (teacher: "
        f"{args.teacher_repeats}). Accuracy: sample test split after {args.stage_steps[0]} stage-1 + "
        f"{args.stage_steps[1]} stage-2 steps, autoencoder / teacher trained {args.teacher_steps[0]} / "
        f"{args.teacher_steps[1]} steps, seed {args.seed}."
    )
    text = markdown(rows, teacher, fronts, chosen, header)
    print(text)
    (out / "student_pareto.md").write_text(text)
    note = f"{teacher['label']} ({args.height}×{args.width}, CPU)"
    plot(rows, fronts, args.accuracy, out / "student_pareto.png", note)
    result = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "hardware": hardware,
        "elapsed_s": elapsed,
        "speed_s": speed_s,
        "teacher": teacher,
        "teacher_sample_metrics": accuracy.get("teacher (sample)"),
        "students": [asdict(s) for s in students],
        "rows": rows,
        "times": {name: {k: v for k, v in speed[name].items() if k.startswith("times_")} for name in speed},
        "fronts": fronts,
        "chosen": {k: None if v is None else v["student"] for k, v in chosen.items()},
    }
    (out / "results.json").write_text(json.dumps(result, indent=1))
    print(f"total {elapsed / 60:.1f} min; wrote {out / 'student_pareto.md'}, student_pareto.png and results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
