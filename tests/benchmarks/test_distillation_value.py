"""benchmarks/distillation_value.py: which samples each arm trains on (the experiment's wiring), without training."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import yaml

from tests.helpers.data import write_hypersim
from tests.tool_loader import load_benchmark


def train_sets(config: Path) -> dict:
    """Build the training sets a data config names (class_path + init_args), as the CLI would."""
    nodes = yaml.safe_load(config.read_text())["data"]["init_args"]["train"]
    sets = {}
    for name, node in nodes.items():
        module, cls = node["class_path"].rsplit(".", 1)
        sets[name] = getattr(importlib.import_module(module), cls)(**node["init_args"])
    return sets


def frames(dataset) -> set[str]:
    """The RGB files a set reads, as absolute paths."""
    return {str(Path(e["rgb"]).resolve()) for e in dataset.entries}


def test_each_arm_sees_the_samples_it_should(tmp_path: Path) -> None:
    dv = load_benchmark("distillation_value")
    data, work = tmp_path / "data", tmp_path / "work"
    work.mkdir()
    write_hypersim(data / "hypersim", counts={"train": 20}, size=(16, 16))
    plan = dv.Plan(
        fractions=[1.0, 0.2, 0.05],
        seeds=[0],
        stage1_steps=3,
        stage2_steps=5,
        teacher_steps=(1, 1),
        student=("resnet18", 16),
    )
    student = ["--model.init_args.student.backbone=resnet18", "--model.init_args.student.decoder_channels=16"]

    def runs(arm: str, fraction: float) -> list[dict]:
        return dv.arm_runs(arm, fraction, 0, data, work, plan, "teacher.ckpt")

    every = frames(train_sets(Path(runs("d3epth", 1.0)[0]["config"][1]))["hypersim"])
    assert len(every) == 20

    labelled = {}
    for fraction, n in ((1.0, 20), (0.2, 4), (0.05, 1)):
        (baseline,) = runs("baseline", fraction)
        sets = train_sets(Path(baseline["config"][1]))
        assert list(sets) == ["hypersim"] and len(sets["hypersim"]) == n
        assert "--trainer.max_steps=8" in baseline["args"]  # the baseline gets stage 1 + stage 2 steps
        assert set(student) <= set(baseline["args"])  # the same student in every arm
        labelled[fraction] = frames(sets["hypersim"])

        stage1, stage2 = runs("d3epth", fraction)
        assert frames(train_sets(Path(stage1["config"][1]))["hypersim"]) == every  # stage 1: every frame
        assert "--model.init_args.mask_latent_loss=false" in stage1["args"]  # ...and no label
        assert set(student) <= set(stage1["args"])  # stage 2 inherits the student from this checkpoint
        assert {s: frames(d) for s, d in train_sets(Path(stage2["config"][1])).items()} == {
            "hypersim": labelled[fraction]
        }
        assert f"--model.init_args.init_from={work / 'logs' / stage1['name']}" in stage2["args"]

        if fraction < 1.0:
            pseudo_stage1, pseudo = runs("d3epth+pseudo", fraction)
            assert pseudo_stage1["name"] == stage1["name"]  # the same stage-1 run
            sets = train_sets(Path(pseudo["config"][1]))
            assert frames(sets["hypersim"]) == labelled[fraction]
            assert frames(sets["unlabeled"]) == every - labelled[fraction]  # the rest, as images only
            assert sets["unlabeled"].has_depth is False
    assert labelled[0.05] < labelled[0.2] < labelled[1.0]  # nested: the same frames stay labelled


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_quick_run_end_to_end(tmp_path: Path) -> None:
    """The whole --quick experiment on fresh sample data: every arm trained and scored, JSON and plot written."""
    dv = load_benchmark("distillation_value")
    assert dv.main(["--quick", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    cells = {(c["row"], c["arm"]) for c in result["summary"]}
    assert 0 < result["teachers"]["teacher"]["val/hypersim/abs_rel"] < 1  # scored on the validation split too
    assert all(0 < run["metrics"]["val/hypersim/abs_rel"] < 1 for run in result["runs"])
    assert {("hypersim 0.05", arm) for arm in (*dv.ARMS, "teacher")} <= cells
    assert ("nyu-unlabeled", "d3epth+pseudo") in cells
    assert all(0 < c["hypersim/abs_rel"] < 1 for c in result["summary"])
    assert (tmp_path / "distillation_value.png").stat().st_size > 0
