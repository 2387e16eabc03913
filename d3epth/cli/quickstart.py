"""The whole D³epth chain on freshly generated sample data, on a CPU, ending with a comparison table.

    make sample data → [0] autoencoder → [1] teacher → [2] stage 1 → [3] stage 2 (light head; VAE decoder)
                     → no-teacher baseline → evaluate every model on the held-out sample test sets

Each stage is ``tools/fit.py`` with its ``configs/sample/*.yaml`` and the previous stage's checkpoint. Re-running
reuses finished stages (a stage whose ``last.ckpt`` reached its ``max_steps``) and resumes an interrupted one;
``--fresh`` starts over. Usage::

    python tools/quickstart.py                 # everything (~8 min on 2 CPU cores)
    python tools/quickstart.py --steps-scale 0.1 --fresh   # a quick smoke run of the same chain
    tensorboard --logdir lightning_logs

This is the body of ``tools/quickstart.py``; the training goes through :func:`d3epth.cli.trainer.fit`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from d3epth.cli.common import fail, one_line_errors

#: The repository root (configs/ and tools/ live there; d3epth is installed from it in editable mode).
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Stage:
    """One training stage: its config and the overrides that wire in earlier stages (by run directory)."""

    name: str
    config: str
    wiring: Callable[[Path], list[str]]
    label: str


STAGES = (
    Stage("autoencoder", "configs/sample/autoencoder.yaml", lambda logs: [], "[0] autoencoder"),
    Stage(
        "teacher",
        "configs/sample/teacher.yaml",
        lambda logs: [f"--model.init_args.teacher.vae_from={logs / 'sample_autoencoder'}"],
        "[1] teacher (Marigold objective)",
    ),
    Stage(
        "stage1",
        "configs/sample/stage1.yaml",
        lambda logs: [f"--model.init_args.teacher={logs / 'sample_teacher'}"],
        "[2] stage 1",
    ),
    Stage(
        "stage2",
        "configs/sample/stage2.yaml",
        lambda logs: [f"--model.init_args.init_from={logs / 'sample_stage1'}"],
        "[3] stage 2",
    ),
    Stage(
        "stage2_vae",
        "configs/sample/stage2_vae.yaml",
        lambda logs: [
            f"--model.init_args.init_from={logs / 'sample_stage1'}",
            f"--model.init_args.teacher={logs / 'sample_teacher'}",
        ],
        "[3] stage 2, VAE decoder",
    ),
    Stage("baseline", "configs/sample/baseline.yaml", lambda logs: [], "baseline (no teacher)"),
)

#: Rows of the final table: model name, the stage whose checkpoint it is.
MODELS = (
    ("teacher (1 step)", "teacher"),
    ("stage 1 student (latent + VAE dec.)", "stage1"),
    ("stage 2 student, light head", "stage2"),
    ("stage 2 student, VAE decoder", "stage2_vae"),
    ("baseline: student on GT only", "baseline"),
)


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``tools/quickstart.py``."""
    parser = argparse.ArgumentParser(prog="tools/quickstart.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="sample_data", help="sample data folder (generated if missing)")
    parser.add_argument("--logs", default="lightning_logs", help="TensorBoard / checkpoint root")
    parser.add_argument("--fresh", action="store_true", help="delete the sample data and these stages' runs first")
    parser.add_argument(
        "--steps-scale", type=float, default=1.0, help="multiply every stage's max_steps (e.g. 0.1 for a smoke run)"
    )
    parser.add_argument("--out", default=None, help="where to write results.json (default: <logs>/quickstart)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated sample data")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1; 0 = torch's default). On 2 idle cores 2 threads train the sample models "
        "~1.2x faster; beside a busy neighbour every parallel op waits for a descheduled thread and 2 threads ran 9x "
        "slower than 1",
    )
    return parser


def run_stage(stage: Stage, logs: Path, steps_scale: float = 1.0, max_steps: int | None = None) -> str:
    """Train one stage unless a completed run of it reached max_steps; return its final checkpoint's path.

    Args:
        stage: the config and its wiring to earlier stages.
        logs: the runs' root (``--logger.save_dir``).
        steps_scale: multiplies the config's ``trainer.max_steps``.
        max_steps: the budget in optimiser steps instead (wins over ``steps_scale``): benchmarks keep their recorded
            budgets this way when the quick start's schedules are retuned.
    """
    from d3epth.checkpoints import COMPLETED_MARKER, read_checkpoint  # torch: imported after parsing (see d3epth.cli)
    from d3epth.cli.trainer import build_cli, fit

    overrides = [f"--logger.save_dir={logs}", *stage.wiring(logs)]
    config = build_cli(["--config", str(REPO / stage.config), *overrides], parse_only=True).config
    max_steps = max_steps or max(1, round(int(config.trainer.max_steps) * steps_scale))
    interval = max(1, min(int(config.trainer.val_check_interval), max_steps))
    overrides += [f"--trainer.max_steps={max_steps}", f"--trainer.val_check_interval={interval}"]

    run = logs / str(config.run_name)
    for marker in sorted(run.glob(f"version_*/{COMPLETED_MARKER}"), key=lambda p: p.stat().st_mtime, reverse=True):
        step = json.loads(marker.read_text())["global_step"]
        if step >= max_steps:
            ckpt = marker.parent / "checkpoints" / "last.ckpt"
            print(f"== {stage.label}: done ({ckpt}, step {step}), reusing it", flush=True)
            return str(ckpt)
    last = sorted(run.glob("version_*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    resume = ["--resume", "last"] if last else []
    if last:
        step = read_checkpoint(last[-1], f"{stage.label} (resume)", mmap=True)["global_step"]
        print(f"== {stage.label}: resuming from step {step} of {max_steps}", flush=True)
    arguments = [*overrides, *resume]
    print(f"== {stage.label}: python tools/fit.py --config {stage.config} {' '.join(arguments)}", flush=True)
    start = time.perf_counter()
    trainer = fit(["--config", str(REPO / stage.config), *arguments])
    ckpt = Path(trainer.log_dir) / "checkpoints" / "last.ckpt"
    print(f"== {stage.label}: {max_steps} steps in {time.perf_counter() - start:.0f} s → {ckpt}", flush=True)
    return str(ckpt)


def evaluate_models(checkpoints: dict[str, str], data_config: Path) -> list[dict[str, object]]:
    """Score every trained model on the sample test sets and time it at the sample resolution."""
    from d3epth.cli.trainer import build_cli
    from d3epth.inference import (  # heavy: imported after parsing (see d3epth.cli)
        evaluate,
        load_predictor,
        time_per_image,
    )

    datamodule = build_cli(
        ["--config", str(data_config)], prog="tools/quickstart.py", parse_only=True
    ).build_datamodule()
    test_sets = dict(datamodule.test_sets)
    size = tuple(test_sets["hypersim"][0]["image"].shape[-2:])
    rows: list[dict[str, object]] = []
    for label, stage in MODELS:
        predictor = load_predictor(checkpoints[stage], device="cpu")
        results = evaluate(predictor.predict, test_sets, alignment=predictor.kind, progress=False)
        ms = time_per_image(predictor.predict, size)
        params = sum(p.numel() for p in predictor.parameters()) / 1e6
        row: dict[str, object] = {"model": label, "checkpoint": checkpoints[stage], "params_m": params, "ms": ms}
        for set_name, values in results.items():
            row.update({f"{set_name}/{key}": value for key, value in values.items()})
        rows.append(row)
    return rows


@one_line_errors
def main(argv: list[str]) -> int:
    """Run the chain, print the table and the TensorBoard command. Returns the exit code."""
    args = build_parser().parse_args(argv)
    if args.steps_scale <= 0:
        return fail(f"--steps-scale must be > 0, got {args.steps_scale}")
    if args.threads < 0:
        return fail(f"--threads must be >= 0, got {args.threads}")
    import torch

    threads = torch.get_num_threads()
    # Autoencoder steps/s on 2 cores: idle, 2 threads ~1.2x faster than 1; beside one busy neighbour, 0.42 vs 3.85.
    torch.set_num_threads(args.threads or threads)
    try:
        return run_chain(args)
    finally:
        torch.set_num_threads(threads)  # in-process callers (tests) keep their own setting


def run_chain(args: argparse.Namespace) -> int:
    """The body of :func:`main`: sample data, every stage, the evaluation table."""
    data, logs = Path(args.data).resolve(), Path(args.logs).resolve()
    os.environ["D3EPTH_SAMPLE_ROOT"] = str(data)  # every configs/sample/*.yaml reads its data from here
    if args.fresh:
        shutil.rmtree(data, ignore_errors=True)
        for stage in STAGES:
            shutil.rmtree(logs / f"sample_{stage.name}", ignore_errors=True)
    total = time.perf_counter()

    if not (data / "hypersim" / "filename_list_train_filtered.txt").is_file():
        command = [sys.executable, str(REPO / "tools" / "make_sample_data.py"), "--out", str(data)]
        command += ["--seed", str(args.seed), "--no-progress"]
        print(f"== sample data: {' '.join(command[1:])}", flush=True)
        if subprocess.run(command, check=False).returncode != 0:
            return fail("generating the sample data failed", code=1)
    else:
        print(f"== sample data: reusing {data}", flush=True)

    checkpoints: dict[str, str] = {}
    for stage in STAGES:
        checkpoints[stage.name] = run_stage(stage, logs, args.steps_scale)

    print("== evaluating every model on the held-out sample test sets", flush=True)
    rows = evaluate_models(checkpoints, REPO / "configs" / "sample" / "data.yaml")
    from d3epth.inference import format_table

    columns = [
        ("model", "model", ""),
        ("hypersim/abs_rel", "Hypersim AbsRel", ".4f"),
        ("hypersim/delta1", "Hypersim δ1", ".3f"),
        ("nyu/abs_rel", "NYU AbsRel", ".4f"),
        ("kitti/abs_rel", "KITTI AbsRel", ".4f"),
        ("params_m", "params (M)", ".2f"),
        ("ms", "ms / image (CPU)", ".1f"),
    ]
    print(format_table(rows, columns))
    out = Path(args.out) if args.out else logs / "quickstart"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    print(f"results: {out / 'results.json'}  (total {time.perf_counter() - total:.0f} s)")
    print(f"watch the runs: tensorboard --logdir {os.path.relpath(logs)}")
    return 0
