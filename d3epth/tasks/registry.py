"""The task registry: from the task name a checkpoint records to its class, and what its checkpoints can serve as.

The table itself (:data:`d3epth.checkpoints.TASKS`) needs no Lightning, so code that only asks *what* a checkpoint
holds (a student, a teacher, an autoencoder) reads it there; this module adds the classes, imported from
:attr:`~d3epth.checkpoints.TaskInfo.module` only when one is asked for.
"""

from __future__ import annotations

import importlib

from d3epth.checkpoints import TASKS, TaskInfo, tasks_with
from d3epth.errors import CheckpointError
from d3epth.tasks.base import DepthTask

__all__ = ["has_capability", "task_class", "task_info", "tasks_with"]


def task_info(name: str) -> TaskInfo:
    """The :class:`~d3epth.checkpoints.TaskInfo` of a task name (as written under ``d3epth_task``).

    Raises:
        CheckpointError: a name that is not in :data:`~d3epth.checkpoints.TASKS`.
    """
    info = TASKS.get(name)
    if info is None:
        raise CheckpointError(f"unknown d3epth task {name!r}; known tasks: {', '.join(TASKS)}")
    return info


def task_class(name: str) -> type[DepthTask]:
    """The task class a checkpoint's ``d3epth_task`` names, imported from its module.

    Raises:
        CheckpointError: an unknown name, or a module that does not define that task class.
    """
    info = task_info(name)
    cls = getattr(importlib.import_module(info.module), info.name, None)
    if not (isinstance(cls, type) and issubclass(cls, DepthTask)):
        raise CheckpointError(f"d3epth task {name!r}: {info.module} defines no DepthTask of that name")
    return cls


def has_capability(task: str | type | object, capability: str) -> bool:
    """Whether checkpoints of ``task`` (a name, a task class or a task instance) can serve as ``capability``.

    Args:
        task: ``"PixelRefinementTask"``, the class, or an instance of it.
        capability: :data:`~d3epth.checkpoints.STUDENT`, :data:`~d3epth.checkpoints.TEACHER` or
            :data:`~d3epth.checkpoints.AUTOENCODER`.
    """
    if not isinstance(task, str):
        task = (task if isinstance(task, type) else type(task)).__name__
    return task in tasks_with(capability)
