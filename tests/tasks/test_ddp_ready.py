"""Every stage trains with plain DDP (no ``find_unused_parameters``): each trainable parameter gets a gradient.

DDP's reducer fails a step (or, with ``find_unused_parameters``, traverses the graph every step) when a parameter
that requires grad receives none. The check here is the reducer's: at ``on_before_optimizer_step`` of real Lightning
training steps, no parameter with ``requires_grad`` has ``grad is None``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest

from d3epth.data import DepthDataModule, HypersimDataset
from tests.helpers.checkpoints import TEACHER, quiet_trainer, student, tiny_task
from tests.helpers.data import write_hypersim


class GradientlessParameters(L.Callback):
    """Collects, per optimiser step, the trainable parameters without a gradient."""

    def __init__(self) -> None:
        self.steps: list[list[str]] = []

    def on_before_optimizer_step(self, trainer: L.Trainer, module: L.LightningModule, optimizer: Any) -> None:
        self.steps.append([n for n, p in module.named_parameters() if p.requires_grad and p.grad is None])


@pytest.fixture(scope="module")
def hypersim_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data") / "hypersim"
    write_hypersim(root, counts={"train": 2}, size=(32, 48))
    return root


STAGES: dict[str, tuple[str, dict[str, Any]]] = {
    "autoencoder": ("autoencoder", {}),
    "teacher_diffusion": ("teacher", {"teacher": TEACHER}),
    "teacher_e2e_hybrid": ("teacher", {"teacher": TEACHER, "mode": "e2e", "loss": "hybrid"}),
    "stage1": ("stage1", {}),
    # A depth head carried into stage 1 for stage 2, and feature distillation: the depth head is frozen.
    "stage1_features_and_depth": (
        "stage1",
        {"student": student("latent", "depth"), "feature_blocks": ["mid_block"]},
    ),
    "stage2_vae": ("stage2_vae", {}),
    "baseline": ("baseline", {}),
}


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_trainable_parameter_gets_a_gradient(stage: str, hypersim_root: Path, tmp_path: Path) -> None:
    kind, kwargs = STAGES[stage]
    check = GradientlessParameters()
    task = tiny_task(kind, seed=0, warmup_steps=1, **kwargs)
    fit(task, hypersim_root, tmp_path, check, steps=1)
    assert check.steps == [[]]


def test_stage2_from_stage1_gets_gradients_while_fitting_to_the_vae_and_after(
    hypersim_root: Path, tmp_path: Path, tiny_checkpoint
) -> None:
    """Stage 2 from a stage-1 checkpoint keeps the stage-1 latent head (frozen) for its VAE-fitting steps."""
    _, stage1 = tiny_checkpoint("stage1", seed=1)
    check = GradientlessParameters()
    task = tiny_task("stage2_light", init_from=str(stage1), teacher=TEACHER, fit_light_to_vae_steps=1, warmup_steps=1)
    assert task.student.heads == ("latent", "depth")
    fit(task, hypersim_root, tmp_path, check, steps=2)  # step 0 fits the light head to the VAE, step 1 uses GT
    assert check.steps == [[], []]
    assert not any(p.requires_grad for p in task.student.latent_head.parameters())


def fit(task: L.LightningModule, root: Path, tmp_path: Path, callback: L.Callback, steps: int) -> None:
    data = DepthDataModule(train={"hypersim": HypersimDataset(root, split="train")}, batch_size=2, num_workers=0)
    quiet_trainer(tmp_path, max_steps=steps, limit_val_batches=0, callbacks=[callback]).fit(task, datamodule=data)
