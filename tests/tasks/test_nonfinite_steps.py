"""Non-finite training steps are skipped by every task alike, named, counted, and fatal after K in a row.

The runs train tiny tasks on CPU on fixed batches (no shuffling, no augmentation, deterministic objectives), so a run
with a corrupted batch can be compared bitwise with a run that never saw it: a skipped step must leave the weights,
the buffers (BatchNorm statistics), the optimiser state and the LR schedule exactly as they were.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from d3epth.data import DepthDataModule, HypersimDataset
from d3epth.errors import TrainingDivergedError
from d3epth.tasks.guard import StepGuard
from tests.helpers.checkpoints import quiet_trainer, save_task, tiny_task
from tests.helpers.data import write_hypersim

#: Tasks and the arguments that make their training step deterministic; a fixed schedule length for every run.
TASKS: dict[str, dict[str, Any]] = {
    "autoencoder": {"sample_posterior": False},
    "stage1": {},
    "baseline": {},
}
COMMON = {"lr": 1e-3, "warmup_steps": 0, "decay_steps": 10}


@pytest.fixture(scope="module")
def batches(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Two good training batches of two 32x48 Hypersim samples each."""
    root = tmp_path_factory.mktemp("data") / "hypersim"
    write_hypersim(root, counts={"train": 4}, size=(32, 48))
    data = DepthDataModule(
        train={"hypersim": HypersimDataset(root, split="train")}, batch_size=2, num_workers=0, hflip_p=0.0
    )
    data.setup("fit")
    return list(data.train_dataloader())[:2]


def corrupted(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch with a NaN pixel in the first image and an Inf pixel in the second."""
    image = batch["image"].clone()
    image[0, :, 3, 5] = float("nan")
    image[1, :, 7, 2] = float("inf")
    return {**batch, "image": image}


def train(
    kind: str, data: list[dict[str, Any]], tmp_path: Path, **trainer_kwargs: Any
) -> tuple[L.LightningModule, L.Trainer]:
    """Train a fresh seed-0 task of ``kind`` over ``data`` in order, one optimiser step per batch by default."""
    task = tiny_task(kind, seed=0, **TASKS[kind], **COMMON)
    trainer = quiet_trainer(tmp_path, **{"max_steps": len(data), **trainer_kwargs})
    trainer.fit(task, train_dataloaders=DataLoader(data, batch_size=None))
    return task, trainer


def assert_same_state(a: L.LightningModule, trainer_a: L.Trainer, b: L.LightningModule, trainer_b: L.Trainer) -> None:
    """Weights and buffers bitwise equal, optimiser states (moments, step counts) and LR equal."""
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    for key, value in state_a.items():
        assert torch.equal(value, state_b[key]), key
        assert not value.is_floating_point() or torch.isfinite(value).all(), key
    opt_a, opt_b = trainer_a.optimizers[0].state_dict(), trainer_b.optimizers[0].state_dict()
    for param_id, values in opt_a["state"].items():
        for name, value in values.items():
            assert torch.equal(value, opt_b["state"][param_id][name]), (param_id, name)
    assert [g["lr"] for g in opt_a["param_groups"]] == [g["lr"] for g in opt_b["param_groups"]]


@pytest.mark.parametrize("kind", list(TASKS))
def test_a_batch_with_nan_and_inf_images_is_skipped_as_if_never_seen(
    kind: str, batches: list[dict[str, Any]], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good_0, good_1 = batches
    bad = corrupted(good_0)
    with caplog.at_level(logging.WARNING, logger="d3epth.tasks.guard"):
        task, trainer = train(kind, [good_0, bad, good_1], tmp_path / "bad")
    reference, ref_trainer = train(kind, [good_0, good_1], tmp_path / "ref")

    assert_same_state(task, trainer, reference, ref_trainer)
    assert trainer.global_step == 3  # Lightning counts the attempt; the schedule and the weights do not
    assert trainer.callback_metrics["train/skipped_steps"] == 1.0
    warnings = [r.getMessage() for r in caplog.records if "optimiser step skipped" in r.getMessage()]
    assert len(warnings) == 1
    assert all(f"hypersim:{path}" in warnings[0] for path in bad["path"])  # both corrupted samples named


def test_accumulated_window_with_a_bad_micro_batch_is_skipped_whole_with_clipping(
    batches: list[dict[str, Any]], tmp_path: Path
) -> None:
    good_0, good_1 = batches
    options = {"accumulate_grad_batches": 2, "gradient_clip_val": 1e-3}  # tiny clip: clipping changes the result
    task, trainer = train(
        "baseline", [good_1, corrupted(good_0), good_0, good_1], tmp_path / "bad", max_steps=2, **options
    )
    reference, ref_trainer = train("baseline", [good_0, good_1], tmp_path / "ref", max_steps=1, **options)
    assert trainer.global_step == 2 and ref_trainer.global_step == 1
    assert_same_state(task, trainer, reference, ref_trainer)
    unclipped, _ = train("baseline", [good_0, good_1], tmp_path / "unclipped", max_steps=1, accumulate_grad_batches=2)
    assert not torch.equal(unclipped.student.depth_head.out.weight, reference.student.depth_head.out.weight)


def test_k_consecutive_bad_steps_stop_training_with_one_line(batches: list[dict[str, Any]], tmp_path: Path) -> None:
    bad = corrupted(batches[0])
    task = tiny_task("baseline", seed=0, **COMMON, max_consecutive_skipped_steps=3)
    before = {k: v.clone() for k, v in task.state_dict().items()}
    trainer = quiet_trainer(tmp_path, max_steps=10)
    with pytest.raises(TrainingDivergedError) as caught:
        trainer.fit(task, train_dataloaders=DataLoader([batches[1], bad, bad, bad, batches[1]], batch_size=None))
    message = str(caught.value)
    assert "\n" not in message and "3 optimiser steps in a row" in message and "lower model.init_args.lr" in message
    assert f"hypersim:{bad['path'][0]}" in message
    assert trainer.global_step == 3  # stopped at the third bad step, the fifth batch never ran
    changed = [k for k, v in task.state_dict().items() if not torch.equal(v, before[k])]
    assert changed and all(torch.isfinite(v).all() for v in task.state_dict().values() if v.is_floating_point())


def test_no_checkpoint_is_written_with_non_finite_weights(tmp_path: Path) -> None:
    task = tiny_task("baseline", seed=0)
    path = save_task(task, tmp_path / "last.ckpt")
    written = path.read_bytes()
    with torch.no_grad():
        task.student.depth_head.out.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(TrainingDivergedError, match=r"refusing to write a checkpoint .*depth_head\.out\.weight"):
        save_task(task, path)
    assert path.read_bytes() == written


def test_ranks_agree_a_step_is_skipped_when_only_another_rank_saw_nan(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The flag goes through an all-reduce every step; a non-finite flag from any rank skips the step here too."""
    import d3epth.tasks.guard as guard_module

    reduced: list[torch.Tensor] = []

    def all_reduce(stats: torch.Tensor) -> None:  # the other rank contributes a non-finite step and an empty batch
        reduced.append(stats.clone())
        stats += torch.tensor([1.0, 1.0, 0.0])

    monkeypatch.setattr(guard_module.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(guard_module.dist, "all_reduce", all_reduce)
    layer = torch.nn.BatchNorm1d(3)
    layer(torch.randn(4, 3))  # a buffer update in the forward, undone by the skip
    guard = StepGuard(max_consecutive=5)
    guard.start_batch({"image": torch.zeros(2, 3), "path": ["a", "b"], "dataset": ["d", "d"]}, layer)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    loss = layer(torch.randn(4, 3)).square().mean()
    guard.record_loss(loss)
    loss.backward()
    optimizer = torch.optim.Adam(layer.parameters())
    with caplog.at_level(logging.WARNING, logger="d3epth.tasks.guard"):
        assert guard.conclude(layer, optimizer) is False
    assert len(reduced) == 1 and reduced[0].tolist() == [0.0, 0.0, 0.0]  # locally finite, reduced all the same
    assert guard.skipped_steps == 1 and guard.empty_batches == 1 and guard.last_skipped
    assert all(torch.equal(v, before[k]) for k, v in layer.state_dict().items())
    assert "another rank" in caplog.records[-1].getMessage()


def test_an_inf_loss_alone_is_caught_and_named() -> None:
    guard = StepGuard(max_consecutive=1)
    module = torch.nn.Linear(2, 1)
    guard.start_batch({"image": torch.zeros(1, 2), "path": ["x.png"], "dataset": ["d"]}, module)
    guard.record_loss(torch.tensor(float("inf")))
    with pytest.raises(TrainingDivergedError, match=r"samples: d:x\.png\)"):
        guard.conclude(module, torch.optim.SGD(module.parameters(), lr=1.0))


def test_a_batch_without_valid_depth_contributes_no_loss_and_is_counted(
    batches: list[dict[str, Any]], tmp_path: Path
) -> None:
    good = batches[0]
    empty = {
        **good,
        "valid_mask": torch.zeros_like(good["valid_mask"]),
        **{key: torch.zeros_like(good[key]) for key in ("depth", "depth_norm")},
    }
    task, trainer = train("baseline", [empty], tmp_path)
    metrics = trainer.callback_metrics
    assert metrics["train/empty_batches"] == 1.0 and metrics["train/skipped_steps"] == 0.0
    assert metrics["train/loss"] == 0.0
    assert all(p.grad is not None and not p.grad.any() for p in task.student.parameters() if p.requires_grad)
