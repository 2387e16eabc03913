"""The task table (d3epth.checkpoints.TASKS) agrees with the task classes; d3epth.tasks.registry resolves them."""

from __future__ import annotations

import inspect

import pytest

import d3epth.tasks
from d3epth.checkpoints import AUTOENCODER, STUDENT, TASKS, TEACHER, tasks_with
from d3epth.errors import CheckpointError
from d3epth.tasks import DepthTask
from d3epth.tasks.registry import has_capability, task_class, task_info


def exported_task_classes() -> dict[str, type]:
    """Every concrete ``DepthTask`` subclass ``d3epth.tasks`` exports, by class name."""
    return {
        name: obj
        for name in d3epth.tasks.__all__
        if inspect.isclass(obj := getattr(d3epth.tasks, name)) and issubclass(obj, DepthTask) and obj is not DepthTask
    }


def test_table_and_task_classes_agree() -> None:
    classes = exported_task_classes()
    assert set(classes) == set(TASKS)  # every exported task is in the table, and every table entry is exported
    for name, cls in classes.items():
        info = TASKS[name]
        assert info.name == name == cls.__name__
        assert info.module == cls.__module__, name
        assert task_class(name) is cls
        assert info.capabilities and info.capabilities <= {STUDENT, TEACHER, AUTOENCODER}


def test_capabilities() -> None:
    assert tasks_with(STUDENT) == ("LatentDistillationTask", "PixelRefinementTask")
    assert tasks_with(STUDENT, TEACHER) == ("TeacherTask", "LatentDistillationTask", "PixelRefinementTask")
    assert tasks_with(AUTOENCODER) == ("AutoencoderTask",)
    assert has_capability("PixelRefinementTask", STUDENT) and not has_capability("PixelRefinementTask", TEACHER)
    assert has_capability(d3epth.tasks.TeacherTask, TEACHER)
    assert not has_capability(d3epth.tasks.AutoencoderTask, STUDENT)
    with pytest.raises(ValueError, match="unknown task capabilities"):
        tasks_with("decoder")


def test_unknown_task_name() -> None:
    with pytest.raises(CheckpointError, match=r"unknown d3epth task 'Stage3Task'; known tasks: AutoencoderTask"):
        task_class("Stage3Task")
    with pytest.raises(CheckpointError, match="unknown d3epth task"):
        task_info("")
