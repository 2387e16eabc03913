"""Inference on an exported student imports no Lightning and no task module (d3epth.inference, models.export)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from d3epth.models import DepthStudent, DiffusionDepthTeacher
from d3epth.models.export import save_student
from tests.helpers import REPO
from tests.helpers.checkpoints import student

STUDENT = student("latent", "depth")

#: Run in a fresh interpreter: load the exported student both ways, predict, report what got imported.
SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    from d3epth.inference import load_predictor
    from d3epth.models.export import load_student

    image = torch.rand(2, 3, 37, 45) * 2 - 1
    predictor = load_predictor(sys.argv[1])
    depth = predictor.predict(image)
    direct = load_student(sys.argv[1])(image)
    print(json.dumps({
        "shape": list(depth.shape),
        "finite": bool(torch.isfinite(depth).all()),
        "same": bool(torch.equal(depth, direct)),
        "modules": sorted(m for m in ("lightning", "pytorch_lightning", "d3epth.tasks") if m in sys.modules),
    }))
    """
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A light-decoder and a VAE-decoder exported student."""
    torch.manual_seed(0)
    student = DepthStudent(**STUDENT).eval()
    root = tmp_path_factory.mktemp("exported")
    vae = DiffusionDepthTeacher.from_config().vae
    return {
        "light": save_student(root / "light", student, STUDENT),
        "vae": save_student(root / "vae", student, STUDENT, vae),
    }


@pytest.mark.parametrize("decoder", ["light", "vae"])
def test_exported_student_predicts_without_lightning(exported: dict[str, Path], decoder: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(exported[decoder])],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["shape"] == [2, 1, 37, 45] and report["finite"] and report["same"]
    assert report["modules"] == [], f"inference on an exported student imported {report['modules']}"
