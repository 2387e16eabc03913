"""Reading d3epth task checkpoints without Lightning: the file, the task that wrote it, sub-state dicts.

A task checkpoint is the dict Lightning saves (``state_dict``, ``hyper_parameters``, loop and optimiser states) plus
:data:`TASK_KEY`, the name of the task class that wrote it, so that a later stage can refuse the checkpoint of the
wrong one with a message instead of a shape mismatch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from d3epth.errors import CheckpointError, MissingFileError

__all__ = ["TASK_KEY", "load_task_checkpoint", "sub_state_dict"]

#: Checkpoint key naming the task class that wrote a checkpoint, so a later stage can refuse the wrong one.
TASK_KEY = "d3epth_task"


def load_task_checkpoint(path: str | Path, accepted: tuple[str, ...], purpose: str) -> dict[str, Any]:
    """Read a d3epth Lightning checkpoint on the CPU and check which task wrote it.

    Args:
        path: ``.ckpt`` file.
        accepted: task class names whose checkpoints are acceptable here.
        purpose: what the checkpoint is for, for the error message (e.g. ``"model.init_args.init_from"``).

    Returns:
        The checkpoint dict (``state_dict``, ``hyper_parameters``, ...).

    Raises:
        MissingFileError: no such file.
        CheckpointError: not a d3epth checkpoint, or one written by another task (stage).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{purpose}: checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise CheckpointError(f"{purpose}: cannot read checkpoint {path}: {err}") from err
    task = checkpoint.get(TASK_KEY) if isinstance(checkpoint, dict) else None
    if task is None:
        raise CheckpointError(f"{purpose}: {path} is not a d3epth task checkpoint (no '{TASK_KEY}' entry)")
    if task not in accepted:
        raise CheckpointError(
            f"{purpose}: {path} was written by {task}, expected a checkpoint of {' or '.join(accepted)}"
        )
    return checkpoint


def sub_state_dict(state_dict: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries of ``state_dict`` under ``prefix`` (e.g. ``"student."``), with the prefix removed."""
    return {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}
