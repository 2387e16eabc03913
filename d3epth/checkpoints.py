"""Reading d3epth task checkpoints without Lightning: the file, the task that wrote it, sub-state dicts.

A task checkpoint is the dict Lightning saves (``state_dict``, ``hyper_parameters``, loop and optimiser states) plus
:data:`TASK_KEY`, the name of the task class that wrote it, so that a later stage can refuse the checkpoint of the
wrong one with a message instead of a shape mismatch.

Checkpoints are only ever read with ``torch.load(..., weights_only=True)``: a file holding anything but tensors and
plain data (dict, list, tuple, str, int, float, bool, None) is refused before any of it is built, since unpickling an
arbitrary object can run code. What d3epth writes stays within that: :func:`plain_data` turns the hyper-parameters a
user may have passed as paths, numpy scalars, dataclasses or omegaconf containers into plain containers on saving.
"""

from __future__ import annotations

import dataclasses
import enum
import pickle
import re
import warnings
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from d3epth.errors import CheckpointError, MissingFileError

__all__ = [
    "AUTOENCODER",
    "COMPLETED_MARKER",
    "EMA_PREFIX",
    "STUDENT",
    "TASKS",
    "TASK_KEY",
    "TEACHER",
    "TaskInfo",
    "load_task_checkpoint",
    "plain_data",
    "read_checkpoint",
    "resolve_run_checkpoint",
    "student_state_dict",
    "sub_state_dict",
    "tasks_with",
]

#: Checkpoint key naming the task class that wrote a checkpoint, so a later stage can refuse the wrong one.
TASK_KEY = "d3epth_task"


def read_checkpoint(path: str | Path, purpose: str, mmap: bool = False) -> Any:
    """Read a checkpoint file on the CPU, refusing any object that is not a tensor or plain data.

    Args:
        path: ``.ckpt`` (or any ``torch.save``) file.
        purpose: what the file is for, for the error message (e.g. ``"model.init_args.init_from"``).
        mmap: map the tensors instead of reading them (for a check whose result is dropped: the unpickling, and so
            the refusal of a payload, is the same, without reading gigabytes of weights).

    Returns:
        What the file holds (for a Lightning checkpoint, its dict).

    Raises:
        MissingFileError: no such file.
        CheckpointError: the file cannot be read, or it holds other objects (a pickle payload is never run).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{purpose}: checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        names = _unsafe_globals(path)
        if names or "GLOBAL" in str(err):  # the weights-only unpickler met a global it does not allow
            raise CheckpointError(
                f"{purpose}: cannot read checkpoint {path}: it holds objects other than tensors and plain data "
                f"(refused: loading it could run code){names}; only load checkpoints written by d3epth, "
                "or re-save a trusted one as a plain state dict"
            ) from err
        raise CheckpointError(  # the unpickler met bytes no pickle starts with: some other kind of file
            f"{purpose}: cannot read checkpoint {path}: it is not a PyTorch checkpoint (or is damaged beyond its "
            "header); name the .ckpt file a run wrote, or copy it again"
        ) from err
    except Exception as err:  # a truncated zip, an EOF, an OS error: the file is incomplete
        raise CheckpointError(
            f"{purpose}: cannot read checkpoint {path}: it is truncated or damaged ({_first_line(err)}); copy it "
            "again, or name another checkpoint"
        ) from err


def _unsafe_globals(path: Path) -> str:
    """``" (it names: a.b, c.d)"`` for the globals a refused checkpoint would import, found without running them."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not the zip format torch.save writes: nothing more to say than the refusal
        return ""
    return f" (it names: {', '.join(sorted(names))})" if names else ""


def _first_line(err: BaseException) -> str:
    """The first sentence of an exception's message (torch's can run to many lines of advice), with its type."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0].split('. ')[0].rstrip('.')}" if lines else type(err).__name__


def load_task_checkpoint(path: str | Path, accepted: tuple[str, ...], purpose: str) -> dict[str, Any]:
    """Read a d3epth Lightning checkpoint on the CPU (:func:`read_checkpoint`) and check which task wrote it.

    Args:
        path: ``.ckpt`` file, or a run directory (see :func:`resolve_run_checkpoint`).
        accepted: task class names whose checkpoints are acceptable here.
        purpose: what the checkpoint is for, for the error message (e.g. ``"model.init_args.init_from"``).

    Returns:
        The checkpoint dict (``state_dict``, ``hyper_parameters``, ...).

    Raises:
        MissingFileError: no such file.
        CheckpointError: unreadable, holding objects other than tensors and plain data, not a d3epth checkpoint, or
            one written by another task (stage).
    """
    path = resolve_run_checkpoint(path, purpose)
    checkpoint = read_checkpoint(path, purpose)
    task = checkpoint.get(TASK_KEY) if isinstance(checkpoint, dict) else None
    if task is None:
        raise CheckpointError(f"{purpose}: {path} is not a d3epth task checkpoint (no '{TASK_KEY}' entry)")
    if task not in accepted:
        raise CheckpointError(
            f"{purpose}: {path} was written by {task}, expected a checkpoint of {' or '.join(accepted)}"
        )
    return checkpoint


#: File ``tools/fit.py`` writes into a run's ``version_<n>`` directory when training finished (not on a crash, an
#: interruption or a failed start), so that a later stage chained by run directory never starts from a broken run.
COMPLETED_MARKER = "completed.json"


def _version_number(path: Path) -> int | None:
    match = re.fullmatch(r"version_(\d+)", path.name)
    return int(match.group(1)) if match and path.is_dir() else None


def resolve_run_checkpoint(path: str | Path, purpose: str) -> Path:
    """The checkpoint a path names: a file as given, or the ``last.ckpt`` of the latest *completed* run of a run dir.

    A run directory is ``<save_dir>/<run_name>`` (e.g. ``lightning_logs/stage1``, holding ``version_<n>`` folders)
    or one ``version_<n>`` folder. Only versions holding :data:`COMPLETED_MARKER` count; newer ones without it (crashed,
    interrupted or still running) are skipped with a warning.

    Args:
        path: a ``.ckpt`` file, a run directory, or any other path (returned unchanged: the caller reports it).
        purpose: what the checkpoint is for, for messages (e.g. ``"model.init_args.init_from"``).

    Returns:
        The checkpoint file path.

    Raises:
        CheckpointError: a run directory without a completed run.
    """
    path = Path(path)
    if not path.is_dir():
        return path
    if (path / "checkpoints").is_dir():
        versions = [path]
    else:
        numbered = sorted((n, p) for p in path.iterdir() if (n := _version_number(p)) is not None)
        versions = [p for _, p in numbered]
        if not versions:
            return path  # not a run directory (e.g. a diffusers directory): the caller decides
    completed = [v for v in versions if (v / COMPLETED_MARKER).is_file()]
    if not completed:
        raise CheckpointError(
            f"{purpose}: {path} holds no completed run ({versions[-1]} has no {COMPLETED_MARKER}: it crashed, was "
            "interrupted or is still running); finish it with tools/fit.py ... --resume last, or name a .ckpt file"
        )
    skipped = versions[versions.index(completed[-1]) + 1 :]
    if skipped:
        warnings.warn(
            f"{purpose}: using {completed[-1]}, the latest completed run of {path}; skipping the newer unfinished "
            f"{', '.join(p.name for p in skipped)}",
            stacklevel=2,
        )
    return completed[-1] / "checkpoints" / "last.ckpt"


def plain_data(value: Any) -> Any:
    """``value`` as data ``torch.load(..., weights_only=True)`` reads back: dicts, lists, scalars, str, tensors.

    Mappings (diffusers' ``FrozenDict``, omegaconf ``DictConfig``) become dicts with str keys, sequences (tuples,
    ``ListConfig``) lists, paths str, numpy scalars and arrays Python numbers and lists, dataclasses dicts, enums
    their value; tensors stay tensors. Anything else becomes its ``str()``: a checkpoint must not need a class to
    be imported to be read.
    """
    if value is None or type(value) in (bool, int, float, str) or isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.generic | np.ndarray):
        return plain_data(value.tolist())
    if isinstance(value, enum.Enum):
        return plain_data(value.value)
    for scalar in (bool, int, float, str):  # subclasses (np.float64, IntEnum, ...) would pickle as their class
        if isinstance(value, scalar):
            return scalar(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain_data(dataclasses.asdict(value))
    if isinstance(value, PathLike):
        return str(value)
    if _is_omegaconf(value):  # DictConfig is no Mapping; to_container resolves ${...} interpolations
        from omegaconf import OmegaConf

        return plain_data(OmegaConf.to_container(value, resolve=True))
    if isinstance(value, Mapping):
        return {str(k): plain_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain_data(v) for v in value]
    return str(value)


def _is_omegaconf(value: Any) -> bool:
    """Whether ``value`` is an omegaconf container (without importing omegaconf when it is not)."""
    return type(value).__module__.startswith("omegaconf.")


def sub_state_dict(state_dict: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries of ``state_dict`` under ``prefix`` (e.g. ``"student."``), with the prefix removed."""
    return {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}


#: State-dict prefix of the EMA of the student's weights (``d3epth.tasks.ema.StudentEMA``, registered as ``ema``).
EMA_PREFIX = "ema.module."


def student_state_dict(checkpoint: Mapping[str, Any]) -> dict[str, Tensor]:
    """The student weights a trained task stands for: its EMA (``ema.module.*``) if it kept one, else ``student.*``.

    The live weights stay under ``student.*`` only so that training resumes exactly; evaluation, prediction, export
    and a later stage's ``init_from`` read the average.
    """
    state = checkpoint["state_dict"]
    return sub_state_dict(state, EMA_PREFIX) or sub_state_dict(state, "student.")


# ----------------------------------------------------------------------------------------------------------------------
# Task identity
# ----------------------------------------------------------------------------------------------------------------------

#: What a task's checkpoint can serve as. A stage asks for a capability, never for class names.
STUDENT = "student"  # holds a trained DepthStudent under ``student.*`` (stage 1, stage 2, baseline)
TEACHER = "teacher"  # holds a DiffusionDepthTeacher under ``teacher.*`` (teacher training)
AUTOENCODER = "autoencoder"  # holds a diffusers AutoencoderKL under ``vae.*`` (sample-scale VAE training)


class TaskInfo(NamedTuple):
    """A task as its checkpoints name it.

    Attributes:
        name: the class name written under :data:`TASK_KEY`.
        module: the module that defines the class (imported only when the class itself is needed).
        capabilities: what a checkpoint of this task can serve as (:data:`STUDENT`, :data:`TEACHER`,
            :data:`AUTOENCODER`).
    """

    name: str
    module: str
    capabilities: frozenset[str]


#: Every task whose checkpoints d3epth reads. ``d3epth.tasks.registry`` resolves the classes; a test checks that the
#: table and the task classes agree.
TASKS: dict[str, TaskInfo] = {
    info.name: info
    for info in (
        TaskInfo("AutoencoderTask", "d3epth.tasks.autoencoder", frozenset({AUTOENCODER})),
        TaskInfo("TeacherTask", "d3epth.tasks.teacher", frozenset({TEACHER})),
        TaskInfo("LatentDistillationTask", "d3epth.tasks.stage1", frozenset({STUDENT})),
        TaskInfo("PixelRefinementTask", "d3epth.tasks.stage2", frozenset({STUDENT})),
    )
}


def tasks_with(*capabilities: str) -> tuple[str, ...]:
    """Names of the tasks having any of ``capabilities``, in :data:`TASKS` order (for :func:`load_task_checkpoint`)."""
    unknown = set(capabilities) - {STUDENT, TEACHER, AUTOENCODER}
    if unknown:
        raise ValueError(f"unknown task capabilities {sorted(unknown)}")
    return tuple(name for name, info in TASKS.items() if info.capabilities & set(capabilities))
