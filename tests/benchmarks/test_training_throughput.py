"""benchmarks/teacher_cache_speed.py and data_throughput.py: their paper-shape options, wired end to end at tiny sizes.

No timing is asserted (it depends on the machine); what is checked is that each option runs the model it names and
that the printed figures are consistent with one another.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from d3epth.models.teacher.build import sd2_config
from tests.tool_loader import BENCHMARKS, load_benchmark

CONFIGS = BENCHMARKS.parent / "configs"


def test_named_teachers_and_students_are_the_configured_ones() -> None:
    speed = load_benchmark("teacher_cache_speed")
    sd2 = speed.parse_teacher("sd2")["config"]
    assert sd2 == {key: list(v) if isinstance(v, tuple) else v for key, v in sd2_config().items()}
    assert speed.parse_teacher("tiny") == {"config": {"seed": 0}}
    stage1 = yaml.safe_load((CONFIGS / "stage1.yaml").read_text())["model"]["init_args"]["student"]
    paper = speed.parse_student("paper")
    assert paper["backbone"] == stage1["backbone"] and paper["decoder_channels"] == stage1["decoder_channels"]
    assert "pretrained_weights" not in paper  # an ${oc.env:...} value: random weights for timing
    with pytest.raises(SystemExit, match="--student"):
        speed.parse_student("[1, 2]")


def test_stage2_arguments_follow_the_config() -> None:
    shapes = load_benchmark("paper_shapes")
    arguments = shapes.stage2_arguments(student={"backbone": "test_efficientnet"})
    stage2 = yaml.safe_load((CONFIGS / "stage2.yaml").read_text())["model"]["init_args"]
    assert "init_from" not in arguments and arguments["student"] == {"backbone": "test_efficientnet"}
    assert arguments["loss"] == stage2["loss"] and arguments["lr"] == stage2["lr"]
    assert arguments["pixel_decoder"] == "light"


def test_teacher_cache_speed_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    speed = load_benchmark("teacher_cache_speed")
    argv = ["--size", "16", "24", "--batch-size", "2", "--samples", "2", "--steps", "1", "--warmup", "1"]
    assert speed.main([*argv, "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "precision 32" in out and "speed-up with the cache:" in out
    assert re.search(r"caching costs about \d+ ms/sample", out)
    live, cached = map(float, re.search(r"teacher every step (\S+) G, cached (\S+) G", out).groups())
    assert live > cached > 0  # counted on the warm-up step: the live step adds the teacher's forward
    error = float(re.search(r"max \|difference\| / max \|latent\| = (\S+)", out).group(1))
    assert error < 1e-2  # the cache holds the teacher's latents (float16 storage)


def test_data_throughput_consumption_and_decode_cost(capsys: pytest.CaptureFixture[str]) -> None:
    throughput = load_benchmark("data_throughput")
    argv = ["--frames", "4", "--frame-size", "24", "32", "--resize", "16", "24", "--workers", "0"]
    argv += ["--batches", "2", "--warmup", "1", "--rounds", "1", "--train-step", "--student", "tiny"]
    argv += ["--step-batch-size", "2", "--steps", "1", "--step-warmup", "0", "--precision", "bf16-mixed"]
    assert throughput.main([*argv, "--decode-cost"]) == 0
    out = capsys.readouterr().out
    assert "precision bf16-mixed" in out
    workers = yaml.safe_load((CONFIGS / "data.yaml").read_text())["data"]["init_args"]["num_workers"]
    assert re.search(rf"^\s+{workers} \|.*<- configs/data.yaml$", out, re.MULTILINE)  # the default is always timed
    consumed = float(re.search(r"best round (\S+) samples/s", out).group(1))
    zero = re.search(r"^\s+0 \|\s+(\S+) \|.*\|\s+(\S+)x", out, re.MULTILINE)
    assert float(zero.group(2)) == pytest.approx(float(zero.group(1)) / consumed, rel=0.05)  # supply / consumption
    stages = {
        name: float(re.search(rf"^{re.escape(name)}\s+\|\s+(\S+)", out, re.MULTILINE).group(1))
        for name in throughput.STAGES
    }
    assert all(ms > 0 for ms in stages.values())  # every wrapped stage ran in the timed pass
    total = float(re.search(r"^total \(0-worker loader\)\s+\|\s+(\S+)", out, re.MULTILINE).group(1))
    assert sum(stages.values()) < total
