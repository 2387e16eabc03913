"""LightningModules, one per stage, and their registry (:mod:`d3epth.tasks.registry`).

Besides these, only the trainer assembly (:mod:`d3epth.cli.trainer`) and the datamodule use Lightning.
"""

from d3epth.tasks.autoencoder import AutoencoderTask
from d3epth.tasks.base import DepthTask
from d3epth.tasks.stage1 import LatentDistillationTask
from d3epth.tasks.stage2 import PixelRefinementTask
from d3epth.tasks.teacher import TeacherTask

__all__ = ["AutoencoderTask", "DepthTask", "LatentDistillationTask", "PixelRefinementTask", "TeacherTask"]
