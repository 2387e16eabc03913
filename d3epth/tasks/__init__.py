"""LightningModules: the only place d3epth uses Lightning (besides the datamodule)."""

from d3epth.tasks.base import DepthTask
from d3epth.tasks.stage2 import PixelRefinementTask

__all__ = ["DepthTask", "PixelRefinementTask"]
