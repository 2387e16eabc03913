"""Inference without training code: load any model source, image → depth, the evaluation loop, image I/O.

Nothing here imports Lightning at import time; only loading a task checkpoint (``.ckpt``) that needs a task or a
teacher rebuilt imports :mod:`d3epth.tasks`.
"""

from d3epth.inference.evaluation import evaluate, format_table, time_per_image
from d3epth.inference.images import (
    IMAGE_SUFFIXES,
    DecodedImage,
    ImageFiles,
    InputImage,
    collect_inputs,
    decode_image,
    normalise,
    read_image,
    same_size_batches,
    to_uint16,
    write_outputs,
)
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
    "IMAGE_SUFFIXES",
    "DecodedImage",
    "DepthPredictor",
    "ImageFiles",
    "InputImage",
    "ModuleDepthPredictor",
    "TeacherDepthPredictor",
    "collect_inputs",
    "decode_image",
    "evaluate",
    "format_table",
    "load_predictor",
    "load_student_checkpoint",
    "load_task",
    "normalise",
    "processing_size",
    "read_image",
    "same_size_batches",
    "student_model_from_task",
    "time_per_image",
    "to_uint16",
    "write_outputs",
]
