"""Evaluation crops and the KITTI benchmark crop: one definition, used by the dataset readers and the metrics.

* **KITTI benchmark (KB) crop** (Uhrig et al., "Sparsity Invariant CNNs", 3DV 2017, the KITTI depth benchmark's
  352x1216 size; Marigold ``src/dataset/kitti_dataset.py``, ``kitti_benchmark_crop``): keep the bottom 352 rows and
  the centred 1216 columns. It changes the image size, so it is applied by the dataset to every raster alike
  (:class:`~d3epth.data.transforms.KBCrop`); :func:`kb_crop_window` is its window.
* **Evaluation crops** are masks on whatever size arrives (:class:`EvalCrop`, :data:`CROPS`):

  - ``nyu_eigen``: Eigen et al., "Depth Map Prediction from a Single Image using a Multi-Scale Deep Network",
    NIPS 2014; rows 45:471, columns 41:601 of a 480x640 NYUv2 frame (Marigold ``src/dataset/nyu_dataset.py``,
    ``eigen_valid_mask``).
  - ``kitti_eigen``: the Eigen crop of KITTI as fractions of the (KB-cropped) frame, rows [0.3324324H, 0.91351351H),
    columns [0.0359477W, 0.96405229W) (Marigold ``src/dataset/kitti_dataset.py``, ``valid_mask_crop: eigen``; the
    same fractions as BTS, Lee et al. 2019).
  - ``kitti_garg``: Garg et al., "Unsupervised CNN for Single View Depth Estimation", ECCV 2016; rows
    [0.40810811H, 0.99189189H), columns [0.03594771W, 0.96405229W) (same sources).
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "CROPS",
    "KB_CROP_SIZE",
    "EvalCrop",
    "crop_mask",
    "get_crop",
    "kb_crop_window",
]

#: ``(height, width)`` of the KITTI benchmark crop.
KB_CROP_SIZE: tuple[int, int] = (352, 1216)


def kb_crop_window(
    height: int, width: int, crop_height: int = KB_CROP_SIZE[0], crop_width: int = KB_CROP_SIZE[1]
) -> tuple[int, int]:
    """``(top, left)`` of the KITTI benchmark crop of an image: the bottom rows, centred horizontally.

    ``top = H - crop_height``, ``left = (W - crop_width) // 2``; for a 375x1242 frame that is top 23, left 13.

    Args:
        height: Image height in pixels.
        width: Image width in pixels.
        crop_height: Height of the window.
        crop_width: Width of the window.

    Returns:
        ``(top, left)`` of the window (negative when the image is smaller than the window; callers refuse that).
    """
    return height - crop_height, (width - crop_width) // 2


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
            bounds are scaled proportionally and rounded half up to the nearest pixel (see below).

    Rounding of a pixel-index crop at another size. Marigold hard-codes the NYU mask as the slice ``[45:471, 41:601]``
    (``src/dataset/nyu_dataset.py``, ``NYUDataset._get_valid_mask``) and scores predictions against the ground truth
    at its native 480x640 (``script/depth/eval.py``), so it defines the crop at no other size; at the reference size
    the bounds here are exactly those indices. Elsewhere each bound ``b`` becomes ``floor(b * size / ref + 0.5)``:
    round to the nearest pixel, ties up. Python's ``round`` (ties to even) would decide ties by the parity of the
    integer part, and ties are what every exact half-scale produces: at 240x320, 45/2 = 22.5 -> 22 but
    471/2 = 235.5 -> 236, so one edge rounds down and the other up for no geometric reason. Truncation (as the KITTI
    fractions use) would shift every crop towards the top-left by up to a pixel. Half up is one rule at every edge
    and size, and it is what the metrics have always used, so no reported number changes: NYU at 240x320 is rows
    23:236, columns 21:301, for the dataset readers and the metrics alike.
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
            Bool tensor [H,W], ``True`` inside the crop.
        """
        top, bottom, left, right = self.bounds(height, width)
        out = torch.zeros(height, width, dtype=torch.bool, device=device)
        out[top:bottom, left:right] = True
        return out


#: The evaluation crops by name (sources in the module docstring).
CROPS: dict[str, EvalCrop] = {
    "nyu_eigen": EvalCrop("nyu_eigen", 45, 471, 41, 601, reference_size=(480, 640)),
    "kitti_eigen": EvalCrop("kitti_eigen", 0.3324324, 0.91351351, 0.0359477, 0.96405229),
    "kitti_garg": EvalCrop("kitti_garg", 0.40810811, 0.99189189, 0.03594771, 0.96405229),
}


def _lookup(name: str, table: dict, what: str, aliases: dict[str, str] | None = None) -> object:
    """``table[name]``, case-insensitive and through ``aliases``; an unknown name is a ``ValueError`` with a hint."""
    key = name.strip().lower()
    if aliases and key in aliases:
        key = aliases[key]
    if key in table:
        return table[key]
    choices = sorted(table) + sorted(aliases or {})
    close = difflib.get_close_matches(key, choices, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise ValueError(f"Unknown {what} '{name}'; expected one of {choices}.{hint}")


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
    """Boolean crop mask [H,W] for an image size, or ``None`` when there is no crop.

    Args:
        crop: Crop name (see ``CROPS``), an ``EvalCrop``, or ``None``.
        height: Image height in pixels.
        width: Image width in pixels.
        device: Device of the returned tensor.

    Returns:
        Bool tensor [H,W] (``True`` = evaluated) or ``None``.
    """
    resolved = get_crop(crop)
    return None if resolved is None else resolved.mask(height, width, device=device)
