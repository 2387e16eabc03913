"""tools/fit.py end to end on the CPU: a tiny student on tiny Hypersim-layout data, resume, and config errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.helpers import CONF
from tests.helpers.data import write_hypersim
from tests.tool_loader import load_tool

fit = load_tool("fit")


@pytest.fixture
def tiny_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tests/conf/fit_tiny.yaml on fresh tiny Hypersim data; logs under ``tmp_path / "logs"``."""
    write_hypersim(tmp_path / "hypersim", counts={"train": 4, "val": 2}, size=(32, 32))
    monkeypatch.setenv("D3EPTH_TEST_HYPERSIM", str(tmp_path / "hypersim"))
    monkeypatch.setenv("D3EPTH_TEST_LOGS", str(tmp_path / "logs"))
    return CONF / "fit_tiny.yaml"


def scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run)).Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_fit_trains_writes_run_dir_and_resumes(
    tiny_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert fit.main(["--config", str(tiny_config), "trainer.max_steps=2"]) == 0
    run = tmp_path / "logs" / "tiny" / "version_0"
    assert list(run.glob("events.out.tfevents.*")), "no TensorBoard event file"
    assert (run / "config.yaml").read_text().count("max_steps: 2") == 1  # the resolved config, override applied
    last = run / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2
    assert ckpt["d3epth_task"] == "PixelRefinementTask"
    assert "max_steps: 2" in ckpt["d3epth_config"]
    assert list((run / "checkpoints").glob("best-*.ckpt")), "no best-by-val/abs_rel checkpoint"
    logged = scalars(run)
    for key in (
        "train/loss",
        "train/loss_ssi",
        "train/loss_grad",
        "train/weight_ssi",
        "val/abs_rel",
        "val/hypersim/delta1",
    ):
        assert key in logged, f"{key} not logged; got {sorted(logged)}"

    # Hyper-parameters are recorded with the final validation metrics (TensorBoard's HPARAMS tab).
    events = EventAccumulator(str(run)).Reload()
    hparams = [t for t in events.Tags().get("tensors", []) if "hparams" in t] + list(events.summary_metadata)
    assert any("_hparams_/session_start_info" in t for t in hparams)
    assert logged["hp/abs_rel"][-1][1] == pytest.approx(logged["val/abs_rel"][-1][1])

    # Resume: continues from step 2 to 4 in the same run directory, with the optimiser state restored.
    # max_steps=3 is not a multiple of last_checkpoint_every_n_steps=2: the end of training still saves last.ckpt.
    assert fit.main(["--config", str(tiny_config), "trainer.max_steps=3", "--resume", "last"]) == 0
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 3
    assert fit.main(["--config", str(tiny_config), "trainer.max_steps=4", "--resume", "last"]) == 0
    assert not (tmp_path / "logs" / "tiny" / "version_1").exists()
    resumed = torch.load(last, map_location="cpu", weights_only=True)
    assert resumed["global_step"] == 4
    steps = [step for step, _ in scalars(run)["train/loss"]]
    assert max(steps) >= 3 and min(steps) <= 1  # one run directory holds both segments


def test_resume_last_without_checkpoint_is_an_error(tiny_config: Path, capsys: pytest.CaptureFixture) -> None:
    assert fit.main(["--config", str(tiny_config), "--resume", "last"]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_misspelt_key_exits_before_building(tiny_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert fit.main(["--config", str(tiny_config), "trainer.max_stepz=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "max_stepz" in err and "did you mean 'max_steps'" in err
    assert not (tmp_path / "logs").exists()  # nothing was built, no run directory


def test_class_path_outside_allow_list_is_refused(tiny_config: Path, capsys: pytest.CaptureFixture) -> None:
    assert fit.main(["--config", str(tiny_config), "model.class_path=os.system"]) == 2
    assert "is not allowed" in capsys.readouterr().err


def test_print_config_resolves_interpolations(tiny_config: Path, capsys: pytest.CaptureFixture, monkeypatch) -> None:
    monkeypatch.setenv("D3EPTH_TEST_LR", "0.5")
    assert (
        fit.main(["--config", str(tiny_config), "--print-config", "model.init_args.lr=${oc.env:D3EPTH_TEST_LR}"]) == 0
    )
    out = capsys.readouterr().out
    assert "lr: '0.5'" in out or "lr: 0.5" in out
    assert "use_distributed_sampler: false" in out  # merged from configs/base.yaml
