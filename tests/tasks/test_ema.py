"""Student-only EMA: the closed form, what a checkpoint holds, validation on the average, exact resume, inference."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn

from d3epth.checkpoints import sub_state_dict
from d3epth.data import DepthDataModule, HypersimDataset
from d3epth.errors import ConfigError
from d3epth.inference import load_predictor, load_student_checkpoint, load_task
from d3epth.tasks.ema import StudentEMA
from tests.helpers.checkpoints import quiet_trainer, tiny_task
from tests.helpers.data import write_hypersim

DECAY = 0.5  # large steps of the average, so that it differs visibly from the live weights after a few steps


def test_ema_matches_the_hand_computed_closed_form() -> None:
    net = nn.Sequential(nn.Linear(1, 1, bias=False), nn.BatchNorm1d(1))
    with torch.no_grad():
        net[0].weight.fill_(1.0)
    ema = StudentEMA(net, decay=DECAY)
    for value in (2.0, 4.0, 8.0):  # three "optimiser steps"
        with torch.no_grad():
            net[0].weight.fill_(value)
        net[1].num_batches_tracked += 1
        ema.update(net)
    # w_ema: 1 -> 0.5·1 + 0.5·2 = 1.5 -> 0.5·1.5 + 0.5·4 = 2.75 -> 0.5·2.75 + 0.5·8 = 5.375
    assert ema.module[0].weight.item() == 5.375
    assert int(ema.n_averaged) == 4  # the initial copy + 3 updates
    assert int(ema.module[1].num_batches_tracked) == 3  # integer buffers follow the live model
    assert not any(p.requires_grad for p in ema.parameters())

    ema.swap(net)
    assert net[0].weight.item() == 5.375 and ema.module[0].weight.item() == 8.0
    ema.swap(net)
    assert net[0].weight.item() == 8.0 and ema.module[0].weight.item() == 5.375


@pytest.mark.parametrize("decay", [-0.1, 1.0])
def test_ema_decay_out_of_range_is_a_config_error(decay: float) -> None:
    with pytest.raises(ConfigError, match=r"model\.init_args\.ema_decay: must be in \[0, 1\)"):
        tiny_task("stage2_light", ema_decay=decay)


def test_ema_on_a_task_without_student_is_refused() -> None:
    task = tiny_task("autoencoder")
    task.hparams["ema_decay"] = 0.9
    with pytest.raises(ConfigError, match="has no 'student' network to average; set ema_decay: null"):
        task._ensure_ema()


class Recorder(Callback):
    """Copies of the student's first weight: live after each step, and what validation actually ran with."""

    def __init__(self) -> None:
        self.live: list[torch.Tensor] = []
        self.validated: list[tuple[int, torch.Tensor]] = []

    @staticmethod
    def first(task: L.LightningModule) -> torch.Tensor:
        return next(task.student.parameters()).detach().clone()

    def on_train_start(self, trainer: L.Trainer, task: L.LightningModule) -> None:
        self.live.append(self.first(task))

    def on_train_batch_end(self, trainer: L.Trainer, task: L.LightningModule, *_: object) -> None:
        self.live.append(self.first(task))

    def on_validation_batch_start(self, trainer: L.Trainer, task: L.LightningModule, *_: object) -> None:
        if not trainer.sanity_checking:
            self.validated.append((trainer.global_step, self.first(task)))


class Killed(Exception):
    """Stands in for a SIGKILL: raised at the start of step ``step`` + 1, after step ``step``'s checkpoint."""


class KillAfter(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, *_: object) -> None:
        if trainer.global_step == self.step:
            raise Killed


def closed_form(weights: list[torch.Tensor], decay: float) -> torch.Tensor:
    """decay^N · w(0) + (1 − decay) · Σ_k decay^(N−k) · w(k), in float64."""
    n = len(weights) - 1
    total = decay**n * weights[0].double()
    for k in range(1, n + 1):
        total = total + (1 - decay) * decay ** (n - k) * weights[k].double()
    return total


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ema") / "hypersim"
    write_hypersim(root, counts={"train": 4, "val": 1}, size=(32, 32))
    return root


def fit(kind: str, data: Path, out: Path, steps: int, ckpt: Path | None = None, **trainer_kwargs: object):
    L.seed_everything(0, verbose=False)
    task = tiny_task(kind, seed=0, lr=5e-2, warmup_steps=1, ema_decay=DECAY)
    datamodule = DepthDataModule(
        train={"hypersim": HypersimDataset(data, split="train")},
        val={"hypersim": HypersimDataset(data, split="val")},
        batch_size=2,
        num_workers=0,
        seed=7,
    )
    save = ModelCheckpoint(dirpath=out, every_n_train_steps=1, save_top_k=0, save_last=True)
    callbacks = [save, *trainer_kwargs.pop("callbacks", [])]
    trainer = quiet_trainer(out, max_steps=steps, callbacks=callbacks, enable_checkpointing=True, **trainer_kwargs)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bitwise-reproducible CPU kernels across the runs compared
    try:
        trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt)
    finally:
        torch.set_num_threads(threads)
    return task, out / "last.ckpt"


def test_stage1_ema_is_the_closed_form_of_the_student_only(data: Path, tmp_path: Path) -> None:
    recorder = Recorder()
    task, last = fit("stage1", data, tmp_path, 3, callbacks=[recorder], val_check_interval=2, limit_val_batches=1)
    assert len(recorder.live) == 4  # w(0) .. w(3)
    averaged = next(task.ema.module.parameters())
    torch.testing.assert_close(averaged.double(), closed_form(recorder.live, DECAY), rtol=1e-6, atol=1e-7)
    assert not torch.equal(averaged, recorder.live[-1])  # the average is not the last weights

    # Validation after step 2 ran on the average of w(0..2); the live weights came back afterwards.
    (step, validated) = recorder.validated[0]
    assert step == 2
    torch.testing.assert_close(validated.double(), closed_form(recorder.live[:3], DECAY), rtol=1e-6, atol=1e-7)
    assert torch.equal(recorder.first(task), recorder.live[-1])

    # The checkpoint: live student weights, the EMA once under ema.*, no teacher anywhere.
    state = torch.load(last, map_location="cpu", weights_only=True)["state_dict"]
    ema_state = sub_state_dict(state, "ema.module.")
    assert set(ema_state) == set(task.student.state_dict())
    assert not any("teacher" in key for key in state)
    assert set(state) == {f"student.{k}" for k in ema_state} | {f"ema.module.{k}" for k in ema_state} | {
        "ema.n_averaged"
    }
    assert int(state["ema.n_averaged"]) == 4
    n_teacher = sum(p.numel() for p in task.teacher.parameters())
    n_ema = sum(v.numel() for k, v in ema_state.items())
    assert n_ema == sum(v.numel() for v in task.student.state_dict().values()) and n_teacher > n_ema


def test_ema_resumes_exactly_and_inference_loads_it(data: Path, tmp_path: Path) -> None:
    full, _ = fit("stage2_light", data, tmp_path / "full", 5)
    with pytest.raises(Killed):  # mid-epoch 1 (2 batches per epoch)
        fit("stage2_light", data, tmp_path / "part", 5, callbacks=[KillAfter(3)])
    resumed, last = fit("stage2_light", data, tmp_path / "part", 5, ckpt=tmp_path / "part" / "last.ckpt")
    for (key, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), key  # live and EMA weights alike, bit for bit
    assert int(resumed.ema.n_averaged) == 6

    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    ema_state = sub_state_dict(checkpoint["state_dict"], "ema.module.")
    live_state = sub_state_dict(checkpoint["state_dict"], "student.")
    differs = [k for k in ema_state if not torch.equal(ema_state[k], live_state[k])]
    assert differs, "EMA equal to the live weights: the test would not tell them apart"

    model, _, _ = load_student_checkpoint(last)  # tools/evaluate, predict and export build the student this way
    for key, value in model.student.state_dict().items():
        assert torch.equal(value, ema_state[key]), key
    predictor = load_predictor(last)
    for key, value in predictor.model.student.state_dict().items():
        assert torch.equal(value, ema_state[key]), key
    task = load_task(last)
    for key, value in task.student.state_dict().items():
        assert torch.equal(value, ema_state[key]), key
