"""Depth datasets in their real on-disk layouts, joint transforms, the mixed batch sampler and the datamodule."""

from d3epth.data.base import BaseDepthDataset
from d3epth.data.datamodule import AugmentedDataset, DepthDataModule, collate_samples
from d3epth.data.hypersim import HypersimDataset
from d3epth.data.kitti import KITTIDataset
from d3epth.data.nyu import NYUv2Dataset
from d3epth.data.sampler import MixedBatchSampler
from d3epth.data.transforms import Compose, HorizontalFlip, KBCrop, RandomCrop, Resize, normalize_depth
from d3epth.data.vkitti2 import VirtualKITTI2Dataset

__all__ = [
    "AugmentedDataset",
    "BaseDepthDataset",
    "Compose",
    "DepthDataModule",
    "HorizontalFlip",
    "HypersimDataset",
    "KBCrop",
    "KITTIDataset",
    "MixedBatchSampler",
    "NYUv2Dataset",
    "RandomCrop",
    "Resize",
    "VirtualKITTI2Dataset",
    "collate_samples",
    "normalize_depth",
]
