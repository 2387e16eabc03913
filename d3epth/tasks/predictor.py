"""Moved to :mod:`d3epth.inference.predictor`; this module re-exports it for code written against the old path."""

from d3epth.inference.predictor import (
    DepthPredictor,
    ModuleDepthPredictor,
    TeacherDepthPredictor,
    load_predictor,
    load_student_checkpoint,
    load_task,
    processing_size,
    student_model_from_task,
)

__all__ = [
    "DepthPredictor",
    "ModuleDepthPredictor",
    "TeacherDepthPredictor",
    "load_predictor",
    "load_student_checkpoint",
    "load_task",
    "processing_size",
    "student_model_from_task",
]
