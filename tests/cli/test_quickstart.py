"""tools/quickstart.py end to end on tiny generated data: every stage, wiring, results, reuse, resume and --fresh."""

from __future__ import annotations

import itertools
import json
import math
import shutil
import types
from pathlib import Path

import pytest
import torch

from d3epth.cli import quickstart
from d3epth.cli.trainer import build_cli
from d3epth.data import HypersimDataset
from d3epth.inference import load_predictor
from d3epth.metrics import DepthMetrics
from tests.helpers import REPO
from tests.tool_loader import load_tool

SCALE = 0.002  # 300-800 default steps -> 1 or 2 steps per stage
make_sample_data = load_tool("make_sample_data")

#: Very small sample data: enough Hypersim frames pass the filter for one training batch of 4; one frame per
#: VKITTI sequence; two NYU / KITTI test frames. The sample configs resize Hypersim and NYU themselves.
TINY_DATA = [
    "--workers",
    "1",
    "--hypersim-scenes",
    "4",
    "1",
    "1",
    "--hypersim-frames",
    "2",
    "--hypersim-size",
    "64",
    "48",
    "--vkitti-frames",
    "1",
    "--vkitti-size",
    "208",
    "64",
    "--nyu-frames",
    "2",
    "--nyu-size",
    "160",
    "120",
    "--kitti-frames",
    "2",
    "--kitti-size",
    "128",
    "48",
    "--contact-frames",
    "1",
    "--no-progress",
]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sample") / "data"
    assert make_sample_data.main(["--out", str(out), *TINY_DATA]) == 0
    assert (out / "hypersim" / "filename_list_train_filtered.txt").is_file()  # what the quick start looks for
    return out


@pytest.fixture
def data(tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the tiny data (``--fresh`` deletes it); D3EPTH_SAMPLE_ROOT restored after the test."""
    copy = tmp_path / "data"
    shutil.copytree(tiny_data, copy)
    monkeypatch.setenv("D3EPTH_SAMPLE_ROOT", str(copy))
    return copy


def config_steps(stage) -> int:
    """``trainer.max_steps`` of the stage's sample config."""
    return int(build_cli(["--config", str(REPO / stage.config)], parse_only=True).config.trainer.max_steps)


def expected_steps(stage) -> int:
    return max(1, round(config_steps(stage) * SCALE))


def stage_checkpoints(logs: Path) -> dict[str, Path]:
    found = {
        s.name: sorted((logs / f"sample_{s.name}").glob("version_*/checkpoints/last.ckpt")) for s in quickstart.STAGES
    }
    for name, paths in found.items():
        assert [p.parent.parent.name for p in paths] == ["version_0"], (name, paths)
    return {name: paths[0] for name, paths in found.items()}


def reference_abs_rel(checkpoint: Path, data: Path) -> float:
    """Hypersim test AbsRel computed directly (the sample config's 96x128 resize, depth-space alignment)."""
    predictor = load_predictor(checkpoint)
    dataset = HypersimDataset(data / "hypersim", split="test", resize=[96, 128])
    metrics = DepthMetrics(benchmark="hypersim", alignment="depth")
    for i in range(len(dataset)):
        sample = dataset[i]
        metrics.update(predictor.predict(sample["image"][None]), sample["depth"][None], sample["valid_mask"][None])
    return float(metrics.compute()["abs_rel"])


def run(data: Path, logs: Path, *extra: str) -> int:
    return quickstart.main(["--data", str(data), "--logs", str(logs), "--steps-scale", str(SCALE), *extra])


@pytest.mark.slow  # ~70 s on 2 cores: the whole chain, then a reusing run (the default suite has a 4-minute budget)
def test_chain_trains_every_stage_reuses_and_starts_fresh(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    logs = tmp_path / "logs"
    assert run(data, logs) == 0
    out = capsys.readouterr().out
    assert f"== sample data: reusing {data}" in out

    # Every stage trained its scaled number of steps, wired to the earlier stages' checkpoints.
    ckpts = stage_checkpoints(logs)
    loaded = {name: torch.load(path, map_location="cpu", weights_only=True) for name, path in ckpts.items()}
    for stage in quickstart.STAGES:
        assert loaded[stage.name]["global_step"] == expected_steps(stage), stage.name
    hparams = {name: ckpt["hyper_parameters"] for name, ckpt in loaded.items()}
    assert hparams["teacher"]["teacher"]["vae_from"] == str(ckpts["autoencoder"])
    assert hparams["stage1"]["teacher"] == str(ckpts["teacher"])
    assert hparams["stage2"]["init_from"] == str(ckpts["stage1"])
    assert hparams["stage2_vae"]["init_from"] == str(ckpts["stage1"])
    assert hparams["stage2_vae"]["teacher"] == str(ckpts["teacher"])
    assert hparams["baseline"].get("init_from") is None

    # results.json: one row per model, each pointing at its stage's checkpoint, finite scores and timings.
    rows = json.loads((logs / "quickstart" / "results.json").read_text())
    assert [row["model"] for row in rows] == [label for label, _ in quickstart.MODELS]
    for row, (_, stage) in zip(rows, quickstart.MODELS, strict=True):
        assert row["checkpoint"] == str(ckpts[stage])
        for key in ("hypersim/abs_rel", "hypersim/delta1", "nyu/abs_rel", "kitti/abs_rel", "ms", "params_m"):
            assert math.isfinite(row[key]) and row[key] > 0, (row["model"], key)
        assert 0 <= row["hypersim/delta1"] <= 1
        assert row["hypersim/num_images"] == len(HypersimDataset(data / "hypersim", split="test"))
    baseline = rows[-1]
    assert baseline["hypersim/abs_rel"] == pytest.approx(reference_abs_rel(ckpts["baseline"], data), rel=1e-6)

    # The table: a header and one line per model with its Hypersim AbsRel.
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("model") and "Hypersim AbsRel" in line)
    for offset, row in enumerate(rows, start=2):
        line = lines[header + offset]
        assert line.startswith(row["model"]) and f"{row['hypersim/abs_rel']:.4f}" in line

    # Second run: every stage is reused as it is; nothing trains.
    mtimes = {name: path.stat().st_mtime_ns for name, path in ckpts.items()}

    def no_training(*args, **kwargs):
        raise AssertionError("a finished stage was trained again")

    with monkeypatch.context() as patch:
        patch.setattr("d3epth.cli.trainer.fit", no_training)
        assert run(data, logs) == 0
    out = capsys.readouterr().out
    for stage in quickstart.STAGES:
        assert f"== {stage.label}: done ({ckpts[stage.name]}, step {expected_steps(stage)}), reusing it" in out
    assert {name: path.stat().st_mtime_ns for name, path in stage_checkpoints(logs).items()} == mtimes
    again = json.loads((logs / "quickstart" / "results.json").read_text())
    assert [r["hypersim/abs_rel"] for r in again] == [r["hypersim/abs_rel"] for r in rows]  # same models, same data

    # --fresh: the old runs and the sample data are deleted, the data generated again (here: tiny, in-process) and the
    # chain starts over from the first stage, without resuming (stopped there: training it again is the part above).
    generated: list[list[str]] = []

    def generate(command: list[str], check: bool = False) -> types.SimpleNamespace:
        assert Path(command[1]) == REPO / "tools" / "make_sample_data.py"
        assert not data.exists()  # --fresh removed it first
        generated.append(command[2:])
        return types.SimpleNamespace(returncode=make_sample_data.main([*command[2:], *TINY_DATA]))

    class FirstStageStarted(Exception):
        pass

    started: list[list[str]] = []

    def first_stage(argv: list[str]) -> None:
        started.append(argv)
        raise FirstStageStarted

    monkeypatch.setattr(quickstart, "subprocess", types.SimpleNamespace(run=generate))
    monkeypatch.setattr("d3epth.cli.trainer.fit", first_stage)
    with pytest.raises(FirstStageStarted):
        run(data, logs, "--fresh")
    assert generated == [["--out", str(data), "--seed", "0", "--no-progress"]]
    assert "reusing" not in capsys.readouterr().out
    assert not any(path.exists() for path in ckpts.values())  # every stage's old run is gone
    assert started[0][1] == str(REPO / "configs" / "sample" / "autoencoder.yaml") and "--resume" not in started[0]


def test_interrupted_stage_resumes_in_its_run_directory(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """run_stage: a last.ckpt short of max_steps resumes (same version dir); one that reached it is reused."""
    baseline = next(stage for stage in quickstart.STAGES if stage.name == "baseline")  # needs no other stage
    logs = tmp_path / "logs"
    first = Path(quickstart.run_stage(baseline, logs, 1.0 / config_steps(baseline)))  # the scale giving 1 step
    assert torch.load(first, map_location="cpu", weights_only=True)["global_step"] == 1
    assert "python tools/fit.py --config configs/sample/baseline.yaml" in capsys.readouterr().out

    # A larger budget (absolute, as the benchmarks give it) is a longer run of the same stage: it continues from
    # step 1 instead of starting over.
    second = Path(quickstart.run_stage(baseline, logs, max_steps=2))
    assert second == first
    assert torch.load(second, map_location="cpu", weights_only=True)["global_step"] == 2
    assert "resuming from step 1 of 2" in capsys.readouterr().out
    assert not (logs / "sample_baseline" / "version_1").exists()

    mtime = second.stat().st_mtime_ns
    assert Path(quickstart.run_stage(baseline, logs, max_steps=2)) == second
    assert "reusing it" in capsys.readouterr().out
    assert second.stat().st_mtime_ns == mtime


def test_failed_data_generation_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("D3EPTH_SAMPLE_ROOT", "unset")  # restored afterwards; main() overwrites it
    monkeypatch.setattr(
        quickstart, "subprocess", types.SimpleNamespace(run=lambda *a, **k: types.SimpleNamespace(returncode=3))
    )
    argv = ["--data", str(tmp_path / "empty"), "--logs", str(tmp_path / "logs"), "--steps-scale", str(SCALE)]
    assert load_tool("quickstart").main(argv) == 1  # through tools/quickstart.py, the README's command
    assert "generating the sample data failed" in capsys.readouterr().err
    assert not (tmp_path / "logs").exists()  # no stage started


def test_threads_default_to_one_for_the_chain_and_are_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    monkeypatch.setattr(quickstart, "run_chain", lambda args: seen.append(torch.get_num_threads()) or 0)
    before = torch.get_num_threads()
    assert quickstart.main([]) == 0
    assert quickstart.main(["--threads", "0"]) == 0  # 0: torch's own setting
    assert seen == [1, before]
    assert torch.get_num_threads() == before  # an in-process caller keeps its setting
    assert quickstart.main(["--threads", "-1"]) == 2


def test_sample_autoencoder_trains_on_windows_and_validates_on_whole_frames(data: Path) -> None:
    # configs/sample/autoencoder.yaml cuts random 48x64 windows (a quarter of the 96x128 Hypersim frames, and of the
    # 64x208 VKITTI ones) for training only; validation scores whole frames.
    config = REPO / "configs" / "sample" / "autoencoder.yaml"
    datamodule = build_cli(["--config", str(config)], parse_only=True).build_datamodule()
    datamodule.setup("fit")
    shapes = {tuple(batch["image"].shape[-2:]) for batch in itertools.islice(datamodule.train_dataloader(), 6)}
    assert shapes == {(48, 64)}
    val = datamodule.val_dataloader()
    val = val[0] if isinstance(val, list | tuple) else val
    assert tuple(next(iter(val))["image"].shape[-2:]) == (96, 128)
