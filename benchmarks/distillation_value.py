"""Does distillation pay? The same student with and without the teacher, as labels get scarce (issue: unlabeled data).

On the generated sample data, a fraction of the Hypersim-like training frames keeps its depth (100 %, 20 %, 5 %; the
same frames for every arm and seed) and the rest are used as images only. Arms, all with the same student and the
same total number of optimiser steps:

* ``baseline`` -- the student trained on the labelled frames alone (Hybrid Depth Loss, no teacher);
* ``d3epth`` -- stage 1 (latent distillation) on all frames, then stage 2 on the labelled frames;
* ``d3epth+pseudo`` -- the same stage 1, then stage 2 also on the teacher's one-step depth for the unlabeled frames;
* ``teacher`` -- the one teacher every arm distils, trained on all labels (the quick start's autoencoder + teacher).

Stage 1 ignores ground truth (``mask_latent_loss: false``), so it is the same for every fraction and runs once per
seed. A domain-shift row uses NYU-like rooms generated with another seed (never the test rooms) as the unlabeled set
with all Hypersim labels, scored on the NYU-like test scenes. Every cell: mean ± std over seeds of AbsRel and δ1 on
the held-out test scenes, and the same on the Hypersim-like validation split (``val/...``), where settings are
chosen. Nothing is tuned on the test scenes: the losses are the sample configs' own. Budget: stage 1 and stage 2 60
steps each (the baseline 120), the autoencoder and teacher trained 1.25x the quick start's steps (375 / 1000;
``--quick``: 0.375x, 112 / 300).

    python benchmarks/distillation_value.py --out benchmarks/results/distillation_value   # 3 seeds x 100/20/5 %
    python benchmarks/distillation_value.py --quick --out /tmp/dv                          # 1 seed x 100/5 %

Writes ``results.json`` (every run and the summary) and ``distillation_value.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from d3epth.cli.quickstart import Stage

REPO = Path(__file__).resolve().parents[1]
ARMS = ("baseline", "d3epth", "d3epth+pseudo")


#: The quick start's teacher fine-tuned end to end (E2E-FT / D²epth): one step at t = 999, loss in pixel space.
E2E_TEACHER = Stage(
    "teacher_e2e",
    "configs/sample/teacher_e2e.yaml",
    lambda logs: [f"--model.init_args.teacher={logs / 'sample_teacher'}"],
    "[1b] teacher, fine-tuned end to end",
)


@dataclass
class Plan:
    """What one invocation runs: fractions, seeds and step budgets."""

    fractions: list[float]
    seeds: list[int]
    stage1_steps: int
    stage2_steps: int
    teacher_steps: tuple[int, int]  # sample autoencoder, teacher
    teacher_mode: str = "diffusion"
    student: tuple[str, int] = ("efficientnet_lite0", 32)
    domain_shift: bool = True
    runs: list[dict] = field(default_factory=list)


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(prog="benchmarks/distillation_value.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "distillation_value")
    parser.add_argument("--data", type=Path, default=None, help="sample data folder (default: <out>/sample_data)")
    parser.add_argument("--quick", action="store_true", help="1 seed, fractions 100 %% and 5 %%, teacher 300 steps")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0 1 2 (quick: 0)")
    parser.add_argument("--fractions", type=float, nargs="+", default=None, help="default: 1.0 0.2 0.05")
    parser.add_argument("--stage1-steps", type=int, default=60, help="default 60")
    parser.add_argument("--stage2-steps", type=int, default=60, help="default 60; the baseline gets the sum")
    parser.add_argument(
        "--teacher-steps",
        type=int,
        nargs=2,
        default=None,
        metavar=("AUTOENCODER", "TEACHER"),
        help="steps of the sample autoencoder and teacher (default 375 1000; quick 112 300)",
    )
    parser.add_argument(
        "--teacher-mode",
        choices=("diffusion", "e2e"),
        default="diffusion",
        help="diffusion (default): the quick start's teacher (Marigold objective); e2e: that teacher also fine-tuned "
        "end to end at t=999 with the Hybrid Depth Loss (configs/sample/teacher_e2e.yaml). Both are scored on the "
        "validation split; e2e was worse there (README)",
    )
    parser.add_argument("--backbone", default="efficientnet_lite0", help="the student's timm backbone (every arm)")
    parser.add_argument("--decoder-channels", type=int, default=32, help="the student's decoder width (every arm)")
    parser.add_argument("--no-domain-shift", action="store_true", help="skip the NYU-like unlabeled row")
    return parser


# ------------------------------------------------------------------------------------------------------ data splits
def labelled_split(data: Path, fraction: float, work: Path) -> tuple[Path, Path | None]:
    """Write the labelled list (Hypersim format) and the unlabeled image list for ``fraction``; fixed frames.

    The frames kept labelled are a prefix of one seeded permutation, so 5 % ⊂ 20 % ⊂ 100 % for every arm and seed.
    """
    from d3epth.data import HypersimDataset

    split_file = HypersimDataset(data / "hypersim", split="train", check="none").split_file
    lines = [ln for ln in split_file.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    order = list(range(len(lines)))
    random.Random(2024).shuffle(order)
    keep = max(1, round(fraction * len(lines)))
    labelled = work / f"labelled_{fraction:g}.txt"
    labelled.write_text("\n".join(lines[i] for i in sorted(order[:keep])) + "\n")
    rest = sorted(order[keep:])
    if not rest:
        return labelled, None
    unlabeled = work / f"unlabeled_{fraction:g}.txt"
    unlabeled.write_text("\n".join(str(data / "hypersim" / "train" / lines[i].split()[0]) for i in rest) + "\n")
    return labelled, unlabeled


def data_config(path: Path, data: Path, train: dict[str, dict]) -> Path:
    """A data config: configs/sample/data.yaml with these training sets (Hypersim-like and unlabeled only)."""
    sets = "".join(f"      {name}: {json.dumps(node)}\n" for name, node in train.items())
    probabilities = {name: round(1.0 / len(train), 6) for name in train}
    path.write_text(
        f"base: {json.dumps(str(REPO / 'configs' / 'sample' / 'data.yaml'))}\n"
        f"data:\n  init_args:\n    train:\n{sets}    train_probabilities: {json.dumps(probabilities)}\n"
    )
    return path


def hypersim(data: Path, split_file: Path | None = None) -> dict:
    """A Hypersim-like training set node (all frames, or those of ``split_file``)."""
    args = {"root": str(data / "hypersim"), "split": "train", "resize": [96, 128]}
    if split_file is not None:
        args["split_file"] = str(split_file)
    return {"class_path": "d3epth.data.HypersimDataset", "init_args": args}


def unlabeled(images: Path | str) -> dict:
    """An unlabeled image set node."""
    return {
        "class_path": "d3epth.data.UnlabeledImageDataset",
        "init_args": {"images": str(images), "resize": [96, 128]},
    }


# ------------------------------------------------------------------------------------------------------------- arms
def arm_runs(arm: str, fraction: float, seed: int, data: Path, work: Path, plan: Plan, teacher: str) -> list[dict]:
    """The ``tools/fit.py`` runs of one arm: ``{"name", "config", "args"}`` each, stage 1 shared by name."""
    labelled, rest = labelled_split(data, fraction, work)
    common = _common_args(seed, work)
    total = plan.stage1_steps + plan.stage2_steps
    if arm == "baseline":
        cfg = data_config(work / f"data_labelled_{fraction:g}.yaml", data, {"hypersim": hypersim(data, labelled)})
        name = f"baseline_f{fraction:g}_s{seed}"
        return [_run(name, "baseline.yaml", cfg, total, common + _student_args(plan))]
    stage1_name = f"stage1_s{seed}"
    stage1_cfg = data_config(work / "data_all.yaml", data, {"hypersim": hypersim(data)})
    stage1 = _stage1_run(stage1_name, stage1_cfg, plan, common, teacher)
    train = {"hypersim": hypersim(data, labelled)}
    if arm == "d3epth+pseudo" and rest is not None:
        train["unlabeled"] = unlabeled(rest)
    cfg = data_config(work / f"data_{arm}_{fraction:g}.yaml", data, train)
    stage2 = _run(f"{arm}_f{fraction:g}_s{seed}", "stage2.yaml", cfg, plan.stage2_steps, common)
    stage2["args"] += [
        f"--model.init_args.init_from={work / 'logs' / stage1_name}",
        f"--model.init_args.teacher={teacher}",
    ]
    return [stage1, stage2]


def _common_args(seed: int, work: Path) -> list[str]:
    return [f"--seed_everything={seed}", f"--data.init_args.seed={seed}", f"--logger.save_dir={work / 'logs'}"]


def _student_args(plan: Plan) -> list[str]:
    """The student every arm trains (stage 2 inherits it from its stage-1 checkpoint)."""
    backbone, channels = plan.student
    return [f"--model.init_args.student.backbone={backbone}", f"--model.init_args.student.decoder_channels={channels}"]


def _stage1_run(name: str, data_cfg: Path, plan: Plan, common: list[str], teacher: str) -> dict:
    """Stage 1 on every frame of ``data_cfg``: ground truth is ignored (every latent cell counts)."""
    run = _run(name, "stage1.yaml", data_cfg, plan.stage1_steps, common + _student_args(plan))
    run["args"] += [f"--model.init_args.teacher={teacher}", "--model.init_args.mask_latent_loss=false"]
    return run


def _run(name: str, model_config: str, data_cfg: Path, steps: int, common: list[str]) -> dict:
    return {
        "name": name,
        "config": [str(REPO / "configs" / "sample" / model_config), str(data_cfg)],
        "args": [
            *common,
            f"--run_name={name}",
            f"--trainer.max_steps={steps}",
            f"--trainer.val_check_interval={steps}",
            "--trainer.enable_progress_bar=false",
        ],
    }


# ------------------------------------------------------------------------------------------------------ execution
def train(run: dict, work: Path, done: dict[str, str]) -> str:
    """Train ``run`` (once per name) with tools/fit.py in-process; its last checkpoint."""
    if run["name"] in done:
        return done[run["name"]]
    from d3epth.cli.trainer import fit

    argv = [a for path in run["config"] for a in ("--config", path)] + run["args"]
    start = time.perf_counter()
    trainer = fit(argv)
    done[run["name"]] = str(Path(trainer.log_dir) / "checkpoints" / "last.ckpt")
    print(f"   {run['name']}: {time.perf_counter() - start:.0f} s", flush=True)
    return done[run["name"]]


def score(checkpoint: str, sets: dict[str, dict]) -> dict[str, float]:
    """Metrics of a checkpoint on ``sets = {"test": {...}, "val": {...}}``.

    Keys are ``"<set>/<metric>"`` on the test sets and ``"val/<set>/<metric>"`` on the validation sets; settings are
    chosen on "val", never on "test".
    """
    from d3epth.inference import evaluate, load_predictor

    predictor = load_predictor(checkpoint, device="cpu")
    out = {}
    for split, datasets in sets.items():
        results = evaluate(predictor.predict, datasets, alignment=predictor.kind, progress=False)
        lead = "" if split == "test" else f"{split}/"
        out.update({f"{lead}{s}/{k}": float(v) for s, values in results.items() for k, v in values.items()})
    return out


def summarise(runs: list[dict]) -> list[dict]:
    """Mean ± std over seeds of each (row, arm) cell."""
    cells: dict[tuple[str, str], list[dict]] = {}
    for run in runs:
        cells.setdefault((run["row"], run["arm"]), []).append(run["metrics"])
    out = []
    for (row, arm), metrics in cells.items():
        entry = {"row": row, "arm": arm, "n": len(metrics)}
        for key in metrics[0]:
            values = [m[key] for m in metrics]
            entry[key] = statistics.fmean(values)
            entry[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        out.append(entry)
    return out


def plot(summary: list[dict], fractions: list[float], path: Path) -> None:
    """AbsRel vs labelled fraction per arm, with ±1 std error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for arm in (*ARMS, "teacher"):
        xs, ys, es = [], [], []
        for f in sorted(fractions):
            cell = next((c for c in summary if c["row"] == f"hypersim {f:g}" and c["arm"] == arm), None)
            if cell is not None:
                xs.append(100 * f)
                ys.append(cell["hypersim/abs_rel"])
                es.append(cell["hypersim/abs_rel_std"])
        if xs:
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=arm)
    ax.set_xscale("log")
    ax.set_xlabel("labelled Hypersim-like training frames (%)")
    ax.set_ylabel("AbsRel, Hypersim-like test scenes")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    """Run every arm, fraction and seed; write results.json and the plot. Returns the exit code."""
    args = build_parser().parse_args(argv)
    quick = args.quick
    plan = Plan(
        fractions=args.fractions or ([1.0, 0.05] if quick else [1.0, 0.2, 0.05]),
        seeds=args.seeds or ([0] if quick else [0, 1, 2]),
        stage1_steps=args.stage1_steps,
        stage2_steps=args.stage2_steps,
        teacher_steps=tuple(args.teacher_steps or ((112, 300) if quick else (375, 1000))),
        teacher_mode=args.teacher_mode,
        student=(args.backbone, args.decoder_channels),
        domain_shift=not args.no_domain_shift,
    )
    out = args.out.resolve()
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    data = (args.data or out / "sample_data").resolve()
    os.environ["D3EPTH_SAMPLE_ROOT"] = str(data)
    start = time.perf_counter()
    if not (data / "hypersim" / "filename_list_train_filtered.txt").is_file():
        subprocess.run(
            [sys.executable, str(REPO / "tools" / "make_sample_data.py"), "--out", str(data), "--no-progress"],
            check=True,
        )
    nyu_unlabeled = out / "nyu_unlabeled"
    if plan.domain_shift and not (nyu_unlabeled / "nyuv2").is_dir():
        subprocess.run(
            [
                sys.executable,
                str(REPO / "tools" / "make_sample_data.py"),
                "--out",
                str(nyu_unlabeled),
                "--seed",
                "7",
                "--no-progress",
            ],
            check=True,
        )

    from d3epth.cli.quickstart import STAGES, run_stage
    from d3epth.cli.trainer import build_cli

    logs = work / "logs"
    datamodule = build_cli(["--config", str(REPO / "configs" / "sample" / "data.yaml")], parse_only=True)
    datamodule = datamodule.build_datamodule()
    # Test: the held-out scenes. Val: the Hypersim-like validation split (the sample NYU-like val set is its test set).
    eval_sets = {
        "test": {k: v for k, v in datamodule.test_sets.items() if k in ("hypersim", "nyu")},
        "val": {"hypersim": datamodule.val_sets["hypersim"]},
    }
    teachers = {}  # the candidates, scored on both splits; the choice (--teacher-mode) is made on val
    steps = {stage.name: n for stage, n in zip(STAGES[:2], plan.teacher_steps, strict=True)}  # autoencoder, teacher
    for stage in (*STAGES[:2], E2E_TEACHER) if plan.teacher_mode == "e2e" else STAGES[:2]:
        # once, on all labels; the e2e fine-tuning runs its config's steps
        checkpoint = run_stage(stage, logs, max_steps=steps.get(stage.name))
        if stage.name != "autoencoder":
            teachers[stage.name] = {"checkpoint": checkpoint, **score(checkpoint, eval_sets)}
    chosen = E2E_TEACHER.name if plan.teacher_mode == "e2e" else "teacher"
    teacher = teachers[chosen]["checkpoint"]
    done: dict[str, str] = {}
    runs: list[dict] = []
    for seed in plan.seeds:
        for fraction in plan.fractions:
            for arm in ARMS:
                if arm == "d3epth+pseudo" and fraction >= 1.0:
                    continue  # no unlabeled frames: the same runs as d3epth
                ckpt = ""
                for run in arm_runs(arm, fraction, seed, data, work, plan, teacher):
                    ckpt = train(run, work, done)
                runs.append(
                    {
                        "row": f"hypersim {fraction:g}",
                        "arm": arm,
                        "seed": seed,
                        "checkpoint": ckpt,
                        "metrics": score(ckpt, eval_sets),
                    }
                )
        if plan.domain_shift:
            runs += domain_shift_runs(seed, data, nyu_unlabeled, work, plan, teacher, done, eval_sets)
            # The row's baseline is this seed's 100 % baseline (all Hypersim labels, no NYU images): already scored.
            full = [r for r in runs if (r["row"], r["arm"], r["seed"]) == ("hypersim 1", "baseline", seed)]
            runs += [{**run, "row": "nyu-unlabeled"} for run in full]
    teacher_metrics = {k: v for k, v in teachers[chosen].items() if k != "checkpoint"}
    for fraction in plan.fractions:
        runs.append(
            {
                "row": f"hypersim {fraction:g}",
                "arm": "teacher",
                "seed": None,
                "checkpoint": teacher,
                "metrics": teacher_metrics,
            }
        )
    summary = summarise(runs)
    elapsed = time.perf_counter() - start
    result = {
        "plan": {k: v for k, v in vars(plan).items() if k != "runs"},
        "teachers": teachers,
        "elapsed_s": elapsed,
        "hardware": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU threads",
        "summary": summary,
        "runs": runs,
    }
    (out / "results.json").write_text(json.dumps(result, indent=1))
    plot(summary, plan.fractions, out / "distillation_value.png")
    print_table(summary)
    print(f"total {elapsed / 60:.1f} min; wrote {out / 'results.json'} and {out / 'distillation_value.png'}")
    return 0


def domain_shift_runs(
    seed: int,
    data: Path,
    nyu_unlabeled: Path,
    work: Path,
    plan: Plan,
    teacher: str,
    done: dict[str, str],
    eval_sets: dict,
) -> list[dict]:
    """All Hypersim labels; NYU-like rooms (another seed) as images only; scored on the NYU-like test scenes."""
    common = _common_args(seed, work)
    nyu_images = nyu_unlabeled / "nyuv2" / "**" / "rgb_*.png"
    both = data_config(
        work / "data_hypersim_nyu.yaml", data, {"hypersim": hypersim(data), "nyu": unlabeled(nyu_images)}
    )
    stage1 = _stage1_run(f"stage1_nyu_s{seed}", both, plan, common, teacher)
    rows = []
    for arm, cfg in (
        ("d3epth", data_config(work / "data_all.yaml", data, {"hypersim": hypersim(data)})),
        ("d3epth+pseudo", both),
    ):
        stage2 = _run(f"nyu_{arm}_s{seed}", "stage2.yaml", cfg, plan.stage2_steps, common)
        stage2["args"] += [
            f"--model.init_args.init_from={work / 'logs' / stage1['name']}",
            f"--model.init_args.teacher={teacher}",
        ]
        train(stage1, work, done)
        ckpt = train(stage2, work, done)
        rows.append(
            {"row": "nyu-unlabeled", "arm": arm, "seed": seed, "checkpoint": ckpt, "metrics": score(ckpt, eval_sets)}
        )
    return rows


def print_table(summary: list[dict]) -> None:
    """The summary as a text table."""
    print(f"{'row':<16} {'arm':<14} {'n':>2}  {'Hypersim AbsRel':>17}  {'Hypersim δ1':>15}  {'NYU AbsRel':>17}")
    for c in summary:
        print(
            f"{c['row']:<16} {c['arm']:<14} {c['n']:>2}  "
            f"{c['hypersim/abs_rel']:.4f} ± {c['hypersim/abs_rel_std']:.4f}  "
            f"{c['hypersim/delta1']:.3f} ± {c['hypersim/delta1_std']:.3f}  "
            f"{c['nyu/abs_rel']:.4f} ± {c['nyu/abs_rel_std']:.4f}"
        )


if __name__ == "__main__":
    sys.exit(main())
