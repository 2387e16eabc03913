"""Tiny tasks of every kind, their Lightning checkpoints, and the quiet CPU trainer the tests train them with.

The one place the tests build task checkpoints: ``tiny_task(kind)`` makes an autoencoder, teacher, stage-1, stage-2
(light or VAE pixel decoder) or baseline task on the tiny test backbone and the tiny random teacher;
``save_task`` writes the checkpoint Lightning writes for it. ``tests/conftest.py``'s ``tiny_checkpoint`` fixture
caches ``(task, path)`` pairs for a whole session. ``poisoned_copy`` writes a copy of one that carries a pickle
payload, for the tests that check no loader ever runs it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import torch

#: The tiny student of the tests (timm's ``test_efficientnet``); ``student(*heads)`` adds the heads.
STUDENT: dict[str, Any] = {"backbone": "test_efficientnet", "decoder_channels": 16}
#: ``DiffusionDepthTeacher.from_config`` defaults: a tiny random UNet (32, 64) and a VAE of factor 8.
TEACHER: dict[str, Any] = {"config": {"seed": 0}}
#: The tiny autoencoder (``AutoencoderTask`` arguments).
AUTOENCODER: dict[str, Any] = {"block_out_channels": [8, 8, 8, 8]}

#: Task kinds ``tiny_task`` builds.
KINDS = ("autoencoder", "teacher", "stage1", "stage2_light", "stage2_vae", "baseline")


def student(*heads: str) -> dict[str, Any]:
    """The tiny student's arguments, with ``heads`` if any are given (else the student's default heads)."""
    return {**STUDENT, "heads": list(heads)} if heads else dict(STUDENT)


def tiny_task(kind: str, seed: int | None = None, **kwargs: Any) -> L.LightningModule:
    """A tiny untrained task of ``kind`` (see :data:`KINDS`); ``kwargs`` override its constructor arguments.

    ``seed`` seeds the global RNG right before the task is built (``None``: leave it alone).
    """
    from d3epth.tasks import AutoencoderTask, LatentDistillationTask, PixelRefinementTask, TeacherTask

    defaults: dict[str, tuple[type, dict[str, Any]]] = {
        "autoencoder": (AutoencoderTask, dict(AUTOENCODER)),
        "teacher": (TeacherTask, {"teacher": {"config": {}}}),
        "stage1": (LatentDistillationTask, {"student": student("latent"), "teacher": {"config": {}}}),
        "stage2_light": (PixelRefinementTask, {"student": student("depth")}),
        "stage2_vae": (
            PixelRefinementTask,
            {"student": student("latent"), "pixel_decoder": "vae", "teacher": {"config": {}}},
        ),
        # The ablation of configs/sample/baseline.yaml: the stage-2 student trained on ground truth, no init_from.
        "baseline": (PixelRefinementTask, {"student": student("depth"), "pixel_decoder": "light"}),
    }
    if kind not in defaults:
        raise ValueError(f"unknown task kind {kind!r}; expected one of {KINDS}")
    cls, arguments = defaults[kind]
    if seed is not None:
        torch.manual_seed(seed)
    return cls(**{**arguments, **kwargs})


def quiet_trainer(root: Path | None = None, **kwargs: Any) -> L.Trainer:
    """A single-process CPU ``lightning.Trainer`` that logs, checkpoints and prints nothing; ``kwargs`` win."""
    defaults: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "use_distributed_sampler": False,
        "default_root_dir": root,
    }
    return L.Trainer(**{**defaults, **kwargs})


def save_task(task: L.LightningModule, path: Path) -> Path:
    """Write the checkpoint Lightning writes for ``task`` (hyper-parameters, state dict, d3epth_task marker)."""
    trainer = quiet_trainer()
    trainer.strategy.connect(task)
    trainer.save_checkpoint(path)
    return path


class MarkerPayload:
    """An object whose unpickling creates the directory ``marker``: the stand-in for a malicious checkpoint's code.

    ``__reduce__`` tells pickle to rebuild it by calling ``os.mkdir(marker)``, which any unrestricted unpickler
    (``torch.load(..., weights_only=False)``, ``pickle.load``) does; ``marker`` existing afterwards means it ran.
    """

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.mkdir, (self.marker,)


def poisoned_copy(source: Path, path: Path, marker: Path) -> Path:
    """Write to ``path`` the checkpoint ``source`` with a :class:`MarkerPayload` added to its hyper-parameters.

    Everything else (``d3epth_task``, weights, hyper-parameters) is kept, so a loader can refuse it only for the
    payload. Returns ``path``.
    """
    checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    checkpoint["hyper_parameters"]["payload"] = MarkerPayload(marker)
    torch.save(checkpoint, path)
    return path
