"""The training console: a step-based progress bar, a summary without FLOPs, no tips, the frozen-teacher warning
silenced only while exactly the frozen modules are in eval mode."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from d3epth.cli.console import ParameterSummary, StepProgressBar, quiet_lightning
from d3epth.data.sample import collate_samples
from d3epth.tasks import LatentDistillationTask
from tests.helpers.checkpoints import STUDENT, TEACHER, quiet_trainer
from tests.helpers.data import write_hypersim


def train(task: LatentDistillationTask, root: Path, **trainer_kwargs: object) -> StepProgressBar:
    from d3epth.data import HypersimDataset

    write_hypersim(root / "hypersim", counts={"train": 4}, size=(32, 32))
    loader = DataLoader(HypersimDataset(root / "hypersim", split="train"), batch_size=2, collate_fn=collate_samples)
    bar = StepProgressBar()
    trainer = quiet_trainer(
        root,
        max_epochs=-1,
        limit_val_batches=0,
        enable_progress_bar=True,
        enable_model_summary=True,
        callbacks=[bar, ParameterSummary()],
        **{"max_steps": 3, **trainer_kwargs},
    )
    trainer.fit(task, train_dataloaders=loader)
    return bar


def test_console_counts_steps_summarises_without_flops_and_keeps_quiet(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    quiet_lightning()
    task = LatentDistillationTask(student=STUDENT, teacher=TEACHER, warmup_steps=0)
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.INFO):
        bar = train(task, tmp_path)
    # One bar over optimiser steps across epochs (2 batches per epoch, 3 steps), not "Epoch 1/-2".
    assert bar.train_progress_bar.total == 3 and bar.train_progress_bar.n == 3
    assert bar.train_progress_bar.desc.startswith("Training (steps)")
    summary = "\n".join(r.getMessage() for r in caplog.records if "Trainable params" in r.getMessage())
    assert "Params" in summary and "FLOPs" not in summary and "Total Flops" not in summary
    assert not any(r.getMessage().startswith("💡 Tip") for r in caplog.records)
    messages = [str(w.message) for w in caught]
    assert not any("in eval mode" in m for m in messages), messages  # the teacher is frozen on purpose
    assert not any("LeafSpec" in m for m in messages), messages


def test_eval_mode_warning_stays_for_a_trainable_module_in_eval_mode(tmp_path: Path) -> None:
    task = LatentDistillationTask(student=STUDENT, teacher=TEACHER, warmup_steps=0)
    task.student.decoder.eval()  # a mistake: trainable, but in eval mode (dropout / norm statistics frozen)
    with warnings.catch_warnings(record=True) as caught:
        task.on_train_start = lambda: task.student.decoder.eval()  # keep it in eval through Lightning's fit start
        train(task, tmp_path, max_steps=1)
    assert any("in eval mode at the start of training" in str(w.message) for w in caught)
    assert all(torch.isfinite(p).all() for p in task.student.parameters())
