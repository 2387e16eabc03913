"""What the paper-scale configs train, for the training-throughput benchmarks: the student, the stage-2 task, a step.

``benchmarks/teacher_cache_speed.py`` (stage 1, teacher live vs cached) and ``benchmarks/data_throughput.py`` (stage-2
consumption vs loader supply) time the model the configs name, so they read it from ``configs/stage1.yaml`` and
``configs/stage2.yaml`` here instead of copying it: when the default student changes, the benchmarks follow. Weights
are random (``pretrained_weights`` and other ``${oc.env:...}`` values are dropped), which does not change the timing.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
STAGE1_CONFIG = REPO / "configs" / "stage1.yaml"
STAGE2_CONFIG = REPO / "configs" / "stage2.yaml"
#: A test-sized student (timm's ``test_efficientnet``) for wiring runs of the benchmarks.
TINY_STUDENT: dict[str, Any] = {"backbone": "test_efficientnet", "decoder_channels": 16, "heads": ["latent"]}
#: ``trainer.precision`` values these benchmarks reproduce (Lightning's names).
PRECISIONS = ("32", "bf16-mixed")


def config_node(path: Path, *keys: str) -> Any:
    """The node at ``keys`` of one YAML config file (its own content; ``base:`` files are not merged)."""
    node = yaml.safe_load(path.read_text())
    for key in keys:
        node = node[key]
    return node


def _without_environment(node: dict[str, Any]) -> dict[str, Any]:
    """``node`` without its ``${oc.env:...}`` values (weight files, checkpoint paths): random weights for timing."""
    return {key: value for key, value in node.items() if not (isinstance(value, str) and value.startswith("${"))}


def paper_student(config: Path = STAGE1_CONFIG) -> dict[str, Any]:
    """``DepthStudent`` arguments of the stage-1 config's student (e.g. ``convnext_tiny``, 128 decoder channels)."""
    return _without_environment(config_node(config, "model", "init_args", "student"))


def parse_student(value: str) -> dict[str, Any]:
    """A ``--student`` value: ``tiny``, ``paper`` (the stage-1 config's) or ``DepthStudent`` arguments as JSON."""
    if value in ("tiny", "paper"):
        return dict(TINY_STUDENT) if value == "tiny" else paper_student()
    try:
        student = json.loads(value)
    except json.JSONDecodeError as err:
        raise SystemExit(f"--student: {value!r} is neither tiny, paper nor JSON ({err})") from err
    if not isinstance(student, dict):
        raise SystemExit(f"--student: expected tiny, paper or a JSON object, got {value!r}")
    return student


def stage2_arguments(config: Path = STAGE2_CONFIG, student: dict[str, Any] | None = None) -> dict[str, Any]:
    """``PixelRefinementTask`` arguments of the stage-2 config, with ``student`` (default: the paper student).

    ``init_from`` (a stage-1 checkpoint) is replaced by the student it would carry; the light pixel decoder needs no
    teacher.
    """
    arguments = _without_environment(config_node(config, "model", "init_args"))
    arguments.pop("init_from", None)
    return {**arguments, "student": student if student is not None else paper_student()}


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast Lightning's ``precision`` enters around ``training_step`` (none for ``"32"``)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def optimiser_step(
    task: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict[str, Any], step: int, precision: str
) -> float:
    """One Lightning-style optimisation step: ``training_step`` under autocast, backward, optimiser step.

    Returns the loss (a Python float, which also waits for the device).
    """
    device = batch["image"].device
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*self.log.*")  # no Trainer attached: logging is a no-op
        with autocast(device, precision):
            loss = task.training_step(batch, step)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def optimizer_for(task: Any) -> torch.optim.Optimizer:
    """The optimiser the task's ``configure_optimizers`` builds (its parameter groups, AdamW/Adam), minus the schedule.

    (``configure_optimizers`` itself needs a Trainer for the schedule's length.)
    """
    groups = [group for group in task.parameter_groups() if len(list(group["params"])) > 0]
    for group in groups:
        group.setdefault("weight_decay", task.hparams.weight_decay)
    optimizer_cls = torch.optim.AdamW if task.hparams.optimizer == "adamw" else torch.optim.Adam
    return optimizer_cls(groups, lr=task.hparams.lr)
