"""Evaluation presets: valid depth range, evaluation crop and alignment resolution per benchmark.

The values follow Marigold's evaluation code (``src/dataset/*.py``, ``config/dataset_depth/*.yaml``,
``script/depth/eval.py``), which E2E-FT and Lotus reuse:

=============  ===============  ===========================================  ===================  ===========
preset         range (m)        evaluation crop                              LS alignment res.    processing
=============  ===============  ===========================================  ===================  ===========
nyu            (1e-3, 10)       Eigen: rows 45:471, cols 41:601 at 480x640   full                 native
kitti_eigen    (1e-5, 80)       Eigen, fractional (after the 352x1216 crop)  full                 native
kitti_garg     (1e-5, 80)       Garg, fractional (after the 352x1216 crop)   full                 native
eth3d          (1e-5, inf)      none (``inf`` GT is invalid)                 longest side 1024    756
scannet        (1e-3, 10)       none                                         full                 native
diode          (0.6, 350) clip  none (the dataset's own mask alone)          full                 640
hypersim       (1e-5, 65)       none                                         full                 native
vkitti         (1e-5, 80)       Eigen, fractional (after the 352x1216 crop)  full                 native
=============  ===============  ===========================================  ===================  ===========

"processing" is the longer side the model sees (``Benchmark.processing_resolution``): Marigold's evaluation scripts
(``script/depth/eval/*.sh``) run NYUv2, KITTI and ScanNet at ``--processing_res 0`` (native), ETH3D at 756 and DIODE at
640; its in-training validation runs Hypersim and Virtual KITTI natively too. A diffusers directory's own default
(768 for Marigold v1-1) would otherwise resize KITTI's 352x1216 frames to 222x768.

Aliases: ``nyuv2`` -> ``nyu``, ``kitti`` -> ``kitti_eigen`` (Marigold's KITTI test config uses the Eigen crop),
``vkitti2`` -> ``vkitti``.

The KITTI benchmark crop (bottom 352 rows, centred 1216 columns) changes the image size, so it belongs to the
dataset, which applies it to image and depth alike; the evaluation crops are masks on whatever size arrives, defined
once in :mod:`d3epth.data.crops` for the readers and the metrics alike.
Ranges are strict on both ends: a ground-truth pixel is valid when ``min_depth < depth < max_depth``; DIODE's range
("clip") only clips the aligned prediction, as in Marigold, which scores DIODE's shipped mask alone
(``src/dataset/diode_dataset.py`` sets ``valid_mask_raw`` to it; ``script/depth/eval.py`` clips to the range).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from d3epth.data.crops import CROPS, EvalCrop, _lookup, crop_mask, get_crop

__all__ = [
    "BENCHMARKS",
    "CROPS",
    "Benchmark",
    "EvalCrop",
    "crop_mask",
    "evaluation_mask",
    "find_benchmark",
    "get_benchmark",
    "get_crop",
]


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
        range_masks_target: Whether the range also masks the ground truth (Marigold: every benchmark but DIODE, whose
            shipped mask alone is scored); the aligned prediction is clipped to the range either way.
        processing_resolution: Longer side the model processes images at for this benchmark (Marigold's
            ``--processing_res`` in its evaluation scripts; 0 = native), or ``None`` for the model's own default.
        source: Where the numbers come from.
    """

    name: str
    min_depth: float
    max_depth: float
    crop: EvalCrop | None = None
    alignment_max_res: int | None = None
    range_masks_target: bool = True
    processing_resolution: int | None = None
    source: str = ""


BENCHMARKS: dict[str, Benchmark] = {
    # Marigold's NYUv2, KITTI and ScanNet inference scripts (script/depth/eval/): --processing_res 0, native.
    "nyu": Benchmark(
        "nyu", 1e-3, 10.0, CROPS["nyu_eigen"], processing_resolution=0, source="Marigold NYUDataset, eigen_valid_mask"
    ),
    "kitti_eigen": Benchmark(
        "kitti_eigen",
        1e-5,
        80.0,
        CROPS["kitti_eigen"],
        processing_resolution=0,
        source="Marigold KITTIDepthDataset, valid_mask_crop: eigen",
    ),
    "kitti_garg": Benchmark(
        "kitti_garg",
        1e-5,
        80.0,
        CROPS["kitti_garg"],
        processing_resolution=0,
        source="Marigold KITTIDepthDataset, valid_mask_crop: garg",
    ),
    # Marigold script/depth/eval_old/31_infer_eth3d.sh --processing_res 756, 32_eval_eth3d.sh --alignment_max_res 1024.
    "eth3d": Benchmark(
        "eth3d",
        1e-5,
        math.inf,
        None,
        alignment_max_res=1024,
        processing_resolution=756,
        source="Marigold ETH3DDataset, eval alignment_max_res 1024, infer processing_res 756",
    ),
    "scannet": Benchmark("scannet", 1e-3, 10.0, processing_resolution=0, source="Marigold ScanNetDataset"),
    # Marigold script/depth/eval_old/51_infer_diode.sh: --processing_res 640.
    "diode": Benchmark(
        "diode",
        0.6,
        350.0,
        range_masks_target=False,
        processing_resolution=640,
        source="Marigold DIODEDataset (its depth_mask.npy; the range clips), infer processing_res 640",
    ),
    # Marigold `HypersimDepthDataset(min_depth=1e-5, max_depth=65.0)`; E2E-FT also uses 65 m as Hypersim's far plane,
    # and Marigold's uint16 millimetre PNGs cannot store more than 65.535 m.
    # Validation in Marigold's trainer runs at processing_res 0 as well.
    "hypersim": Benchmark(
        "hypersim", 1e-5, 65.0, processing_resolution=0, source="Marigold HypersimDepthDataset; E2E-FT load.py far=65"
    ),
    "vkitti": Benchmark(
        "vkitti",
        1e-5,
        80.0,
        CROPS["kitti_eigen"],
        processing_resolution=0,
        source="Marigold vkitti_dataset.py, data_vkitti_val.yaml",
    ),
}

_ALIASES: dict[str, str] = {"nyuv2": "nyu", "kitti": "kitti_eigen", "vkitti2": "vkitti"}


def get_benchmark(name: str | Benchmark) -> Benchmark:
    """Return the preset called ``name`` (case-insensitive, aliases allowed); a ``Benchmark`` passes through."""
    if isinstance(name, Benchmark):
        return name
    return _lookup(name, BENCHMARKS, "benchmark", _ALIASES)  # type: ignore[return-value]


def find_benchmark(name: str) -> Benchmark | None:
    """The preset called ``name`` (as :func:`get_benchmark`), or ``None`` for a name that is no preset.

    A set of one's own, named like no benchmark, is scored with range-only defaults and predicted at the model's
    resolution.
    """
    try:
        return get_benchmark(name)
    except ValueError:
        return None


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
        target: Ground-truth depth [...,H,W] in metres.
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
