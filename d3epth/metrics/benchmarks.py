"""Evaluation presets: valid depth range, evaluation crop and alignment resolution per benchmark.

The values follow Marigold's evaluation code (``src/dataset/*.py``, ``config/dataset_depth/*.yaml``,
``script/depth/eval.py``), which E2E-FT and Lotus reuse:

=============  ===============  ===========================================  ===================
preset         range (m)        evaluation crop                              LS alignment res.
=============  ===============  ===========================================  ===================
nyu            (1e-3, 10)       Eigen: rows 45:471, cols 41:601 at 480x640   full
kitti_eigen    (1e-5, 80)       Eigen, fractional (after the 352x1216 crop)  full
kitti_garg     (1e-5, 80)       Garg, fractional (after the 352x1216 crop)   full
eth3d          (1e-5, inf)      none (``inf`` GT is invalid)                 longest side 1024
scannet        (1e-3, 10)       none                                         full
diode          (0.6, 350)       none (the dataset's own mask)                full
hypersim       (1e-5, 65)       none                                         full
vkitti         (1e-5, 80)       Eigen, fractional (after the 352x1216 crop)  full
=============  ===============  ===========================================  ===================

Aliases: ``nyuv2`` -> ``nyu``, ``kitti`` -> ``kitti_eigen`` (Marigold's KITTI test config uses the Eigen crop),
``vkitti2`` -> ``vkitti``.

The KITTI benchmark crop (bottom 352 rows, centred 1216 columns) changes the image size, so it belongs to the
dataset, which applies it to image and depth alike; the crops here are evaluation masks on whatever size arrives.
Ranges are strict on both ends: a ground-truth pixel is valid when ``min_depth < depth < max_depth``.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "BENCHMARKS",
    "CROPS",
    "Benchmark",
    "EvalCrop",
    "crop_mask",
    "evaluation_mask",
    "get_benchmark",
    "get_crop",
]


@dataclass(frozen=True)
class EvalCrop:
    """A rectangular evaluation region, given either as fractions of the image size or as pixels at a reference size.

    Attributes:
        name: Short identifier (``"nyu_eigen"``, ``"kitti_eigen"``, ``"kitti_garg"``).
        top: First row (inclusive).
        bottom: Last row (exclusive).
        left: First column (inclusive).
        right: Last column (exclusive).
        reference_size: ``None`` when the four bounds are fractions of height/width; they are then turned into pixels
            with ``int(fraction * size)`` (truncation), as BTS and Marigold do for the KITTI crops. Otherwise the
            ``(height, width)`` at which the bounds are pixel indices (NYU: 480x640); for another image size the
            bounds are scaled proportionally and rounded half up to the nearest pixel.
    """

    name: str
    top: float
    bottom: float
    left: float
    right: float
    reference_size: tuple[int, int] | None = None

    def bounds(self, height: int, width: int) -> tuple[int, int, int, int]:
        """Pixel bounds ``(top, bottom, left, right)`` of the crop for an image of the given size.

        Args:
            height: Image height in pixels.
            width: Image width in pixels.

        Returns:
            ``(top, bottom, left, right)``; rows ``top:bottom`` and columns ``left:right`` are inside.
        """
        if height <= 0 or width <= 0:
            raise ValueError(f"EvalCrop '{self.name}': image size must be positive, got {height}x{width}")
        if self.reference_size is None:
            return (
                int(self.top * height),
                int(self.bottom * height),
                int(self.left * width),
                int(self.right * width),
            )
        ref_h, ref_w = self.reference_size
        if (height, width) == (ref_h, ref_w):
            # Exact pixel indices at the reference size; no float round trip.
            return int(self.top), int(self.bottom), int(self.left), int(self.right)
        # Round half up (not Python's round-half-to-even) so that scaling is monotone and predictable.
        return (
            math.floor(self.top * height / ref_h + 0.5),
            math.floor(self.bottom * height / ref_h + 0.5),
            math.floor(self.left * width / ref_w + 0.5),
            math.floor(self.right * width / ref_w + 0.5),
        )

    def mask(self, height: int, width: int, device: torch.device | str | None = None) -> Tensor:
        """Boolean mask of the crop.

        Args:
            height: Image height in pixels.
            width: Image width in pixels.
            device: Device of the returned tensor.

        Returns:
            Bool tensor [H, W], ``True`` inside the crop.
        """
        top, bottom, left, right = self.bounds(height, width)
        out = torch.zeros(height, width, dtype=torch.bool, device=device)
        out[top:bottom, left:right] = True
        return out


CROPS: dict[str, EvalCrop] = {
    # Eigen et al. (NIPS 2014) NYUv2 crop; Marigold `NYUDataset._get_valid_mask`: eval_mask[45:471, 41:601].
    "nyu_eigen": EvalCrop("nyu_eigen", 45, 471, 41, 601, reference_size=(480, 640)),
    # Eigen crop as in BTS / Marigold `KITTIDepthDataset._get_valid_mask`.
    "kitti_eigen": EvalCrop("kitti_eigen", 0.3324324, 0.91351351, 0.0359477, 0.96405229),
    # Garg et al. (ECCV 2016) crop, same source.
    "kitti_garg": EvalCrop("kitti_garg", 0.40810811, 0.99189189, 0.03594771, 0.96405229),
}


@dataclass(frozen=True)
class Benchmark:
    """Evaluation settings of one benchmark.

    Attributes:
        name: Preset name.
        min_depth: Lower bound (m, exclusive) of valid ground truth; aligned predictions are clipped to it.
        max_depth: Upper bound (m, exclusive) of valid ground truth; aligned predictions are clipped to it.
        crop: Evaluation crop, or ``None``.
        alignment_max_res: If set, the least-squares fit runs on a nearest-downsampled copy whose longest side is at
            most this many pixels (Marigold ``--alignment_max_res``); metrics still use full resolution.
        source: Where the numbers come from.
    """

    name: str
    min_depth: float
    max_depth: float
    crop: EvalCrop | None = None
    alignment_max_res: int | None = None
    source: str = ""


BENCHMARKS: dict[str, Benchmark] = {
    "nyu": Benchmark("nyu", 1e-3, 10.0, CROPS["nyu_eigen"], source="Marigold NYUDataset, eigen_valid_mask: true"),
    "kitti_eigen": Benchmark(
        "kitti_eigen", 1e-5, 80.0, CROPS["kitti_eigen"], source="Marigold KITTIDepthDataset, valid_mask_crop: eigen"
    ),
    "kitti_garg": Benchmark(
        "kitti_garg", 1e-5, 80.0, CROPS["kitti_garg"], source="Marigold KITTIDepthDataset, valid_mask_crop: garg"
    ),
    "eth3d": Benchmark(
        "eth3d", 1e-5, math.inf, None, alignment_max_res=1024, source="Marigold ETH3DDataset, eval alignment_max_res"
    ),
    "scannet": Benchmark("scannet", 1e-3, 10.0, source="Marigold ScanNetDataset"),
    "diode": Benchmark("diode", 0.6, 350.0, source="Marigold DIODEDataset (range + the dataset's depth_mask.npy)"),
    # Marigold `HypersimDepthDataset(min_depth=1e-5, max_depth=65.0)`; E2E-FT also uses 65 m as Hypersim's far plane,
    # and Marigold's uint16 millimetre PNGs cannot store more than 65.535 m.
    "hypersim": Benchmark("hypersim", 1e-5, 65.0, source="Marigold HypersimDepthDataset; E2E-FT load.py far=65"),
    "vkitti": Benchmark(
        "vkitti", 1e-5, 80.0, CROPS["kitti_eigen"], source="Marigold vkitti_dataset.py, data_vkitti_val.yaml"
    ),
}

_ALIASES: dict[str, str] = {"nyuv2": "nyu", "kitti": "kitti_eigen", "vkitti2": "vkitti"}


def _lookup(name: str, table: dict, what: str, aliases: dict[str, str] | None = None) -> object:
    key = name.strip().lower()
    if aliases and key in aliases:
        key = aliases[key]
    if key in table:
        return table[key]
    choices = sorted(table) + sorted(aliases or {})
    close = difflib.get_close_matches(key, choices, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise ValueError(f"Unknown {what} '{name}'; expected one of {choices}.{hint}")


def get_benchmark(name: str | Benchmark) -> Benchmark:
    """Return the preset called ``name`` (case-insensitive, aliases allowed); a ``Benchmark`` passes through."""
    if isinstance(name, Benchmark):
        return name
    return _lookup(name, BENCHMARKS, "benchmark", _ALIASES)  # type: ignore[return-value]


def get_crop(name: str | EvalCrop | None) -> EvalCrop | None:
    """Return the named crop; ``None`` or ``"none"`` mean no crop; an ``EvalCrop`` passes through."""
    if name is None or isinstance(name, EvalCrop):
        return name
    if name.strip().lower() == "none":
        return None
    return _lookup(name, CROPS, "crop")  # type: ignore[return-value]


def crop_mask(
    crop: str | EvalCrop | None, height: int, width: int, device: torch.device | str | None = None
) -> Tensor | None:
    """Boolean crop mask [H, W] for an image size, or ``None`` when there is no crop.

    Args:
        crop: Crop name (see ``CROPS``), an ``EvalCrop``, or ``None``.
        height: Image height in pixels.
        width: Image width in pixels.
        device: Device of the returned tensor.

    Returns:
        Bool tensor [H, W] (``True`` = evaluated) or ``None``.
    """
    resolved = get_crop(crop)
    return None if resolved is None else resolved.mask(height, width, device=device)


def evaluation_mask(
    target: Tensor,
    valid_mask: Tensor | None,
    min_depth: float,
    max_depth: float,
    crop: str | EvalCrop | None = None,
) -> Tensor:
    """Pixels that are scored: the given mask, the strict depth range and the crop.

    Non-finite ground truth never passes (``NaN`` fails both comparisons and ``inf`` fails ``< max_depth``, also
    for ``max_depth = inf``).

    Args:
        target: Ground-truth depth [..., H, W] in metres.
        valid_mask: Bool mask of the same shape as ``target``, or ``None`` (all pixels).
        min_depth: Exclusive lower bound in metres.
        max_depth: Exclusive upper bound in metres.
        crop: Crop name, ``EvalCrop`` or ``None``.

    Returns:
        Bool tensor shaped like ``target``.
    """
    mask = (target > min_depth) & (target < max_depth)
    if valid_mask is not None:
        mask = mask & valid_mask
    cm = crop_mask(crop, target.shape[-2], target.shape[-1], device=target.device)
    if cm is not None:
        mask = mask & cm
    return mask
