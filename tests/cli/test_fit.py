"""tools/fit.py end to end on the CPU: run directory, resume, a user's own classes, failed starts, chaining by run."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import lightning as L
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from d3epth.checkpoints import COMPLETED_MARKER, resolve_run_checkpoint
from d3epth.data import HypersimDataset
from d3epth.errors import CheckpointError, DataError
from tests.helpers import CONF
from tests.helpers.checkpoints import poisoned_copy
from tests.helpers.data import write_hypersim
from tests.tool_loader import load_tool

fit = load_tool("fit")


class UserHypersim(HypersimDataset):
    """A user's own dataset class (here: Hypersim frames, counted), named by class_path from a config."""

    served = 0

    def get_sample(self, index: int, augment: object = None) -> dict:
        type(self).served += 1
        return super().get_sample(index, augment)


class StopAt(L.Callback):
    """A user's own callback: fails as a corrupt file met mid-run would, when training reaches step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            raise DataError(f"simulated unreadable file at step {self.step}")


class CtrlCAt(L.Callback):
    """Sends this process a real SIGINT (Ctrl-C) when training reaches step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


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


def test_fit_trains_writes_run_dir_and_resumes(tiny_config: Path, tmp_path: Path) -> None:
    assert fit.main(["--config", str(tiny_config), "--trainer.max_steps=2"]) == 0
    run = tmp_path / "logs" / "tiny" / "version_0"
    assert list(run.glob("events.out.tfevents.*")), "no TensorBoard event file"
    saved = (run / "config.yaml").read_text()
    assert saved.count("max_steps: 2") == 1  # the resolved config, override applied ...
    assert "gradient_clip_algorithm: null" in saved and "resume" not in saved  # ... with defaults, no CLI-only keys
    assert json.loads((run / COMPLETED_MARKER).read_text())["global_step"] == 2
    last = run / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2
    assert ckpt["d3epth_task"] == "PixelRefinementTask"
    assert "max_steps: 2" in ckpt["d3epth_config"]
    assert list((run / "checkpoints").glob("best-*.ckpt")), "no best-by-val/abs_rel checkpoint"
    logged = scalars(run)
    for key in ("train/loss", "train/loss_ssi", "train/loss_grad", "train/weight_ssi", "val/abs_rel"):
        assert key in logged, f"{key} not logged; got {sorted(logged)}"
    events = EventAccumulator(str(run)).Reload()
    hparams = [t for t in events.Tags().get("tensors", []) if "hparams" in t] + list(events.summary_metadata)
    assert any("_hparams_/session_start_info" in t for t in hparams)
    assert logged["hp/abs_rel"][-1][1] == pytest.approx(logged["val/abs_rel"][-1][1])

    # Resume: continues in the same run directory, optimiser state restored; max_steps=3 is not a multiple of
    # last_checkpoint_every_n_steps=2, the end of training still saves last.ckpt.
    assert fit.main(["--config", str(tiny_config), "--trainer.max_steps=3", "--resume", "last"]) == 0
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 3
    assert not (tmp_path / "logs" / "tiny" / "version_1").exists()
    assert json.loads((run / COMPLETED_MARKER).read_text())["global_step"] == 3
    steps = [step for step, _ in scalars(run)["train/loss"]]
    assert max(steps) >= 2 and min(steps) <= 1  # one run directory holds both segments


def test_resume_last_without_checkpoint_is_an_error(tiny_config: Path, capsys: pytest.CaptureFixture) -> None:
    assert fit.main(["--config", str(tiny_config), "--resume", "last"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nothing to resume" in err


def test_resume_last_names_the_newest_readable_checkpoint(tiny_config: Path, tmp_path: Path, capsys) -> None:
    assert fit.main(["--config", str(tiny_config), "--trainer.max_steps=2"]) == 0
    checkpoints = tmp_path / "logs" / "tiny" / "version_0" / "checkpoints"
    (checkpoints / "last.ckpt").write_bytes(b"truncated")
    capsys.readouterr()
    assert fit.main(["--config", str(tiny_config), "--trainer.max_steps=3", "--resume", "last"]) == 2
    err = capsys.readouterr().err.strip()
    best = next(checkpoints.glob("best-*.ckpt"))
    assert err.startswith(f"error: --resume last: cannot read checkpoint {checkpoints / 'last.ckpt'}: ")
    assert err.endswith(f"; the newest readable one is {best}: --resume {best}") and "\n" not in err

    # A checkpoint carrying a pickle payload is refused by name, and the payload never runs.
    marker = tmp_path / "payload_ran"
    poisoned_copy(best, checkpoints / "last.ckpt", marker)
    assert fit.main(["--config", str(tiny_config), "--trainer.max_steps=3", "--resume", "last"]) == 2
    assert "refused: loading it could run code" in capsys.readouterr().err
    assert (
        fit.main(["--config", str(tiny_config), "--trainer.max_steps=3", "--resume", str(checkpoints / "last.ckpt")])
        == 2
    )
    assert "refused: loading it could run code" in capsys.readouterr().err
    assert not marker.exists()


def test_user_classes_train_and_a_crashed_run_is_never_chained(
    tiny_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A user's dataset and callback subclasses are accepted by class_path; the run crashes at step 2, keeps its
    checkpoint for --resume, but writes no completion marker, so chaining by run directory refuses it."""
    user = tmp_path / "user.yaml"
    user.write_text(
        f"data:\n  init_args:\n    train:\n      hypersim:\n        class_path: {__name__}.UserHypersim\n"
        f"trainer:\n  callbacks: [{{class_path: {__name__}.StopAt, init_args: {{step: 2}}}}]\n"
    )
    UserHypersim.served = 0
    assert fit.main(["--config", str(tiny_config), "--config", str(user)]) == 2
    assert capsys.readouterr().err.strip() == "error: simulated unreadable file at step 2"
    assert UserHypersim.served >= 4  # the user's dataset fed two optimiser steps
    run = tmp_path / "logs" / "tiny"
    crashed = run / "version_0"
    assert torch.load(crashed / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    assert not (crashed / COMPLETED_MARKER).exists()

    with pytest.raises(CheckpointError, match=r"holds no completed run \(.*version_0 has no completed.json"):
        resolve_run_checkpoint(run, "model.init_args.init_from")
    capsys.readouterr()
    assert fit.main(["--config", str(tiny_config), f"--model.init_args.init_from={run}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds no completed run" in err and "--resume last" in err
    assert not (run / "version_1").exists()  # the refused start left no run directory

    # A completed run is what a run directory resolves to, newer unfinished runs skipped with a warning.
    assert fit.main(["--config", str(tiny_config), "--trainer.max_steps=1"]) == 0
    assert (run / "version_1" / COMPLETED_MARKER).is_file()
    (run / "version_2" / "checkpoints").mkdir(parents=True)
    with pytest.warns(UserWarning, match="skipping the newer unfinished version_2"):
        assert resolve_run_checkpoint(run, "init_from") == run / "version_1" / "checkpoints" / "last.ckpt"
    with pytest.raises(CheckpointError, match="holds no completed run"):
        resolve_run_checkpoint(crashed, "init_from")
    assert fit.main(["--config", str(tiny_config), "--trainer.max_steps=1", f"--model.init_args.init_from={run}"]) == 0


def test_a_failed_start_leaves_no_run_directory(tiny_config: Path, tmp_path: Path, capsys) -> None:
    stop = tmp_path / "stop.yaml"
    stop.write_text(f"trainer:\n  callbacks: [{{class_path: {__name__}.StopAt, init_args: {{step: 0}}}}]\n")
    assert fit.main(["--config", str(tiny_config), "--config", str(stop)]) == 2
    assert capsys.readouterr().err.strip() == "error: simulated unreadable file at step 0"
    assert not (tmp_path / "logs" / "tiny").exists()
    assert fit.main(["--config", str(tiny_config), "--trainer.max_steps=1"]) == 0
    assert (tmp_path / "logs" / "tiny" / "version_0" / COMPLETED_MARKER).is_file()  # not version_1


def test_print_config_is_complete_and_resolved(tiny_config: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("D3EPTH_TEST_LR", "0.5")
    env = tmp_path / "env.yaml"  # interpolations are a config-file feature (OmegaConf parser mode)
    env.write_text("model:\n  init_args:\n    lr: ${oc.env:D3EPTH_TEST_LR}\n")
    with pytest.raises(SystemExit) as exit_info:
        fit.main(["--config", str(tiny_config), "--config", str(env), "--print_config"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "lr: 0.5" in out
    assert "use_distributed_sampler: false" in out  # merged from configs/base.yaml
    assert "split_file: null" in out and "edge_sigma_image" not in out  # dataset defaults; no loss given: none shown
    assert "decoder_channels: 16" in out and "depth_activation: none" in out  # the student group, defaults included


def test_ctrl_c_exits_130_in_one_line_and_keeps_its_checkpoint(
    tiny_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Lightning shuts down after a Ctrl-C with sys.exit(1); the tool reports the interruption (status 130)."""
    user = tmp_path / "ctrl_c.yaml"
    user.write_text(f"trainer:\n  callbacks: [{{class_path: {__name__}.CtrlCAt, init_args: {{step: 2}}}}]\n")
    handler = signal.getsignal(signal.SIGINT)
    try:
        assert fit.main(["--config", str(tiny_config), "--config", str(user), "--trainer.max_steps=4"]) == 130
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores further Ctrl-Cs while it shuts down
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "error: interrupted; a training run continues with --resume last"
    run = tmp_path / "logs" / "tiny" / "version_0"
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    assert not (run / COMPLETED_MARKER).exists()


def test_a_users_progress_bar_and_summary_replace_d3epths(tiny_config: Path) -> None:
    """As with Lightning's defaults: one progress bar and one summary, the user's (was: "multiple progress bars")."""
    from lightning.pytorch.callbacks import ModelSummary, ProgressBar, TQDMProgressBar

    from d3epth.cli.console import ParameterSummary, StepProgressBar
    from d3epth.cli.trainer import build_cli

    bar = "{class_path: lightning.pytorch.callbacks.TQDMProgressBar, init_args: {refresh_rate: 5}}"
    summary = "{class_path: lightning.pytorch.callbacks.ModelSummary, init_args: {max_depth: 1}}"
    shown = ["--trainer.enable_progress_bar=true", "--trainer.enable_model_summary=true"]  # fit_tiny turns them off
    args = ["--config", str(tiny_config), "--trainer.max_steps=1", *shown]
    callbacks = build_cli([*args, f"--trainer.callbacks=[{bar}, {summary}]"]).trainer.callbacks
    bars = [c for c in callbacks if isinstance(c, ProgressBar)]
    summaries = [c for c in callbacks if isinstance(c, ModelSummary)]
    assert len(bars) == len(summaries) == 1
    assert type(bars[0]) is TQDMProgressBar and bars[0].refresh_rate == 5 and type(summaries[0]) is ModelSummary
    ours = build_cli(args).trainer.callbacks  # without the user's: d3epth's own
    assert [type(c) for c in ours if isinstance(c, ProgressBar | ModelSummary)] == [ParameterSummary, StepProgressBar]
    assert fit.main([*args, f"--trainer.callbacks=[{bar}, {summary}]"]) == 0
