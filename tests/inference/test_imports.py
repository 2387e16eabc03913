"""Inference on an exported student imports no Lightning and no task module (d3epth.inference, models.export)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from d3epth.models import DepthStudent, DiffusionDepthTeacher
from d3epth.models.export import save_student
from tests.helpers import REPO
from tests.helpers.checkpoints import student

STUDENT = student("latent", "depth")

#: Run in one fresh interpreter: import the teacher package, then load each exported student both ways and predict;
#: report what got imported (one interpreter for all checks: each start costs seconds on a 2-core machine).
SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    from d3epth.inference import load_predictor
    from d3epth.models.export import load_student
    from d3epth.models.teacher import (DepthPrediction, DiffusionDepthTeacher, OneStepPrediction, load_autoencoder,
        load_teacher, teacher_architecture)

    def upper_layers():
        return sorted(m for m in ("lightning", "pytorch_lightning", "d3epth.tasks") if m in sys.modules)

    reports = {"teacher_package": {"modules": upper_layers()}}
    image = torch.rand(2, 3, 37, 45) * 2 - 1
    for name, directory in zip(("light", "vae"), sys.argv[1:]):
        depth = load_predictor(directory).predict(image)
        direct = load_student(directory)(image)
        reports[name] = {
            "shape": list(depth.shape),
            "finite": bool(torch.isfinite(depth).all()),
            "same": bool(torch.equal(depth, direct)),
            "modules": upper_layers(),
        }
    print(json.dumps(reports))
    """
)


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Export a light-decoder and a VAE-decoder student, run :data:`SCRIPT` on them, return its reports."""
    torch.manual_seed(0)
    student = DepthStudent(**STUDENT).eval()
    root = tmp_path_factory.mktemp("exported")
    vae = DiffusionDepthTeacher.from_config().vae
    directories = [save_student(root / "light", student, STUDENT), save_student(root / "vae", student, STUDENT, vae)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, *map(str, directories)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_teacher_package_imports_without_lightning_or_tasks(reports: dict[str, dict]) -> None:
    assert reports["teacher_package"]["modules"] == []


@pytest.mark.parametrize("decoder", ["light", "vae"])
def test_exported_student_predicts_without_lightning(reports: dict[str, dict], decoder: str) -> None:
    report = reports[decoder]
    assert report["shape"] == [2, 1, 37, 45] and report["finite"] and report["same"]
    assert report["modules"] == [], f"inference on an exported student imported {report['modules']}"
