"""Depth datasets in their real on-disk layouts, joint transforms, the mixed batch sampler and the datamodule.

The names below load on first use (PEP 562), so importing one submodule (e.g. :mod:`d3epth.data.crops` from the
metrics, or :mod:`d3epth.data.synthetic`) does not import the datamodule and with it Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from d3epth.data.base import BaseDepthDataset, BenchmarkDepthDataset
    from d3epth.data.datamodule import AugmentedDataset, DepthDataModule
    from d3epth.data.diode import DIODEDataset
    from d3epth.data.eth3d import ETH3DDataset
    from d3epth.data.folder import FolderDepthDataset
    from d3epth.data.hypersim import HypersimDataset
    from d3epth.data.kitti import KITTIDataset
    from d3epth.data.nyu import NYUv2Dataset
    from d3epth.data.sample import collate_samples
    from d3epth.data.sampler import MixedBatchSampler
    from d3epth.data.scannet import ScanNetDataset
    from d3epth.data.storage import ArchivePath, TarArchive, data_root
    from d3epth.data.transforms import Compose, HorizontalFlip, KBCrop, RandomCrop, Resize, normalize_depth
    from d3epth.data.unlabeled import UnlabeledImageDataset
    from d3epth.data.vkitti2 import VirtualKITTI2Dataset

#: Public name -> the submodule defining it.
_EXPORTS: dict[str, str] = {
    "ArchivePath": "storage",
    "AugmentedDataset": "datamodule",
    "BaseDepthDataset": "base",
    "BenchmarkDepthDataset": "base",
    "Compose": "transforms",
    "DIODEDataset": "diode",
    "DepthDataModule": "datamodule",
    "ETH3DDataset": "eth3d",
    "FolderDepthDataset": "folder",
    "HorizontalFlip": "transforms",
    "HypersimDataset": "hypersim",
    "KBCrop": "transforms",
    "KITTIDataset": "kitti",
    "MixedBatchSampler": "sampler",
    "NYUv2Dataset": "nyu",
    "RandomCrop": "transforms",
    "Resize": "transforms",
    "ScanNetDataset": "scannet",
    "TarArchive": "storage",
    "Transform": "transforms",
    "UnlabeledImageDataset": "unlabeled",
    "VirtualKITTI2Dataset": "vkitti2",
    "collate_samples": "sample",
    "data_root": "storage",
    "normalize_depth": "transforms",
}

__all__ = [
    "ArchivePath",
    "AugmentedDataset",
    "BaseDepthDataset",
    "BenchmarkDepthDataset",
    "Compose",
    "DIODEDataset",
    "DepthDataModule",
    "ETH3DDataset",
    "FolderDepthDataset",
    "HorizontalFlip",
    "HypersimDataset",
    "KBCrop",
    "KITTIDataset",
    "MixedBatchSampler",
    "NYUv2Dataset",
    "RandomCrop",
    "Resize",
    "ScanNetDataset",
    "TarArchive",
    "Transform",
    "UnlabeledImageDataset",
    "VirtualKITTI2Dataset",
    "collate_samples",
    "data_root",
    "normalize_depth",
]


def __getattr__(name: str) -> Any:
    """Import the submodule that defines ``name`` on first access (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'd3epth.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"d3epth.data.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
