"""Metric depth from a relative model: fit scale and shift per image to sparse metric points (``--align-to``).

Affine-invariant models (Marigold, E2E-FT, the d3epth students) predict depth up to an unknown scale ``s`` and shift
``t``. Given a few metric measurements of the same view (LiDAR, SfM points, a depth sensor), the least-squares fit of
:func:`d3epth.metrics.align.align` — the one the evaluator uses — recovers them per image:

* ``depth`` space: ``min_{s,t} Σ (s·p + t − g)²`` over the points; metric depth = ``s·p + t``;
* ``disparity`` space (for models predicting affine-invariant disparity): ``min Σ (s·p + t − 1/g)²``; metric depth
  = ``1 / max(s·p + t, 1e-3)``.

Sparse files: a 16-bit PNG (stored value / ``scale`` = metres; default 256, the KITTI depth-benchmark encoding) or a
``.npy`` array in metres; 0, negative and non-finite values mean "no point". Outputs per image ``NAME``::

    DIR/depth_metric/NAME_metric.npy       float32 [H,W], metres
    DIR/depth_metric/NAME_metric_mm.png    uint16 [H,W], millimetres (clipped to 65.535 m; 0 = non-positive)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from d3epth.errors import DataError, MissingFileError
from d3epth.metrics.align import align

__all__ = ["DEFAULT_ALIGN_SCALE", "MetricFit", "fit_metric_depth", "match_sparse", "read_sparse_depth", "write_metric"]

#: Default divisor of 16-bit sparse PNGs: KITTI's depth benchmark stores metres × 256.
DEFAULT_ALIGN_SCALE = 256.0
#: Suffixes of sparse metric depth files.
SPARSE_SUFFIXES: tuple[str, ...] = (".png", ".npy")


class MetricFit(NamedTuple):
    """Metric depth of one image and its fit.

    Attributes:
        depth: float64 [H,W], metres.
        scale: the fitted ``s`` (of the disparity in disparity space).
        shift: the fitted ``t``.
        num_points: points the fit used.
    """

    depth: Tensor
    scale: float
    shift: float
    num_points: int


def read_sparse_depth(path: Path, scale: float = DEFAULT_ALIGN_SCALE) -> Tensor:
    """Sparse metric depth float64 [H,W] in metres, 0 where there is no point.

    Raises:
        DataError: unknown suffix, unreadable file, or not a single-channel 16-bit PNG / 2-D array.
    """
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False).astype(np.float64)
        except (OSError, ValueError, TypeError) as err:
            raise DataError(f"--align-to {path}: unreadable .npy file ({err})") from err
    elif suffix == ".png":
        from d3epth.data.base import read_uint16_png  # the readers' checked 16-bit decoding

        try:
            array = read_uint16_png(path).astype(np.float64) / scale
        except ValueError as err:
            raise DataError(f"--align-to {err}") from err
    else:
        raise DataError(f"--align-to {path}: unknown sparse depth type {suffix!r}; expected a 16-bit .png or a .npy")
    if array.ndim == 3 and 1 in (array.shape[0], array.shape[-1]):  # [1,H,W] or [H,W,1]
        array = array[0] if array.shape[0] == 1 else array[..., 0]
    if array.ndim != 2:
        raise DataError(f"--align-to {path}: sparse depth has shape {list(array.shape)}; expected [H,W]")
    array = np.where(np.isfinite(array) & (array > 0), array, 0.0)
    return torch.from_numpy(array)


def match_sparse(names: Sequence[str], align_to: Path) -> list[Path]:
    """The sparse file of each output name: ``align_to`` itself (one image), or ``align_to/<stem>.{png,npy}``.

    Raises:
        MissingFileError: ``align_to`` does not exist, or images without a sparse file of their stem (listed).
        DataError: a single file given for several images.
    """
    if align_to.is_file():
        if len(names) != 1:
            raise DataError(
                f"--align-to {align_to}: one file for {len(names)} images; give a folder of files named by image stem"
            )
        return [align_to]
    if not align_to.is_dir():
        raise MissingFileError(f"--align-to {align_to}: no such file or folder")
    found: dict[str, Path] = {}
    for path in sorted(align_to.iterdir()):
        if path.suffix.lower() in SPARSE_SUFFIXES:
            found.setdefault(path.stem, path)
    stems = [Path(name).name for name in names]
    lacking = [stem for stem in stems if stem not in found]
    if lacking:
        shown = ", ".join(lacking[:10]) + (f" and {len(lacking) - 10} more" if len(lacking) > 10 else "")
        raise MissingFileError(
            f"--align-to {align_to}: no sparse depth (.png/.npy) of the same stem for {len(lacking)} image(s): {shown}"
        )
    return [found[stem] for stem in stems]


def fit_metric_depth(pred: Tensor, sparse: Tensor, space: str = "depth", min_points: int = 10) -> MetricFit:
    """Fit ``pred`` [H,W] (relative depth, or disparity in ``disparity`` space) to ``sparse`` [H,W] metres.

    Raises:
        DataError: fewer than ``min_points`` usable points (sizes must also agree).
    """
    if pred.shape != sparse.shape:
        raise DataError(f"prediction is {list(pred.shape)} but its sparse depth is {list(sparse.shape)}")
    mask = sparse > 0
    result = align(pred[None, None].double(), sparse[None, None].double(), mask[None, None], space=space)
    n = int(result.num_pixels[0])
    if n < max(min_points, 2):
        raise DataError(f"{n} usable sparse point(s), need at least {max(min_points, 2)} for the scale-and-shift fit")
    return MetricFit(result.depth[0, 0], float(result.scale[0]), float(result.shift[0]), n)


def write_metric(out: Path, name: str, depth: Tensor) -> tuple[Path, Path]:
    """Write ``DIR/depth_metric/NAME_metric.npy`` (float32 m) and ``NAME_metric_mm.png`` (uint16 mm)."""
    npy = out / "depth_metric" / f"{name}_metric.npy"
    png = out / "depth_metric" / f"{name}_metric_mm.png"
    npy.parent.mkdir(parents=True, exist_ok=True)
    metres = depth.detach().cpu().double().numpy()
    np.save(npy, metres.astype(np.float32))
    mm = np.round(np.clip(np.nan_to_num(metres * 1000.0, nan=0.0), 0, 65535)).astype(np.uint16)
    Image.fromarray(mm).save(png)
    return npy, png
