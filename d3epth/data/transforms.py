"""Joint transforms on sample dicts, and the per-image depth normalisation.

A *sample* is the dict of :mod:`d3epth.data.sample`: ``image`` float32 [3,H,W] in [-1,1], ``depth`` float32
[1,H,W] (metres), ``valid_mask`` bool [1,H,W], optional ``intrinsics`` float32 [3,3] and further rasters (e.g.
``depth_filled``).
Every geometric transform here moves *all* rasters of the sample together, so image, depth and mask stay aligned,
and updates ``intrinsics`` to match. A raster is any 3-D tensor whose spatial size equals the image's; a 3-D tensor
of another size (e.g. a cached latent) cannot be resized or cropped consistently and is refused with an error.

Intrinsics follow the OpenCV convention: pixel centres sit at integer coordinates, so the principal point of a
W-pixel-wide centred camera is ``cx = (W - 1) / 2`` (Virtual KITTI 2 stores ``cx = 620.5`` for W = 1242).

Randomness (flip, crop) is drawn from torch's default generator. ``DepthDataModule``'s training loader seeds it for
each sample from the sample's position in the epoch's batch order (:mod:`d3epth.data.resume`), so the draws are
reproducible whatever the number of workers and survive a mid-epoch resume; called directly, they follow the global
seed (``seed_everything``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from d3epth.data.crops import KB_CROP_SIZE, kb_crop_window
from d3epth.data.sample import FLIP_PAIRS, Sample
from d3epth.errors import ConfigError


class Transform:
    """Base class of the joint transforms: a callable ``sample -> sample``.

    Configs name transforms by ``class_path``; one is accepted when it subclasses this class, a user's own included
    (a plain function is never called from a config). In Python any callable ``sample -> sample`` works too.
    """

    def __call__(self, sample: Sample) -> Sample:
        """Return the transformed sample."""
        raise NotImplementedError


#: Interpolation modes accepted for the RGB image (``torch.nn.functional.interpolate`` names).
IMAGE_INTERPOLATIONS: tuple[str, ...] = ("bilinear", "bicubic", "area", "nearest-exact", "nearest")

#: Quantiles of Marigold's ScaleShiftDepthNormalizer.
NORM_QUANTILES: tuple[float, float] = (0.02, 0.98)


def _size_of(sample: Sample) -> tuple[int, int]:
    """Spatial size ``(H, W)`` of the sample's image (or depth when there is no image)."""
    for key in ("image", "depth"):
        value = sample.get(key)
        if isinstance(value, Tensor) and value.ndim == 3:
            return int(value.shape[-2]), int(value.shape[-1])
    raise ValueError(f"sample has no 'image' or 'depth' tensor of shape [C,H,W]; keys: {sorted(sample)}")


def _raster_keys(sample: Sample, op: str) -> list[str]:
    """Keys of the 3-D tensors sharing the image's size; refuse 3-D tensors of another size (cannot be aligned)."""
    height, width = _size_of(sample)
    keys = []
    for key, value in sample.items():
        if not isinstance(value, Tensor) or value.ndim != 3:
            continue
        if tuple(value.shape[-2:]) != (height, width):
            raise ValueError(
                f"{op}: sample key '{key}' has spatial size {tuple(value.shape[-2:])}, but the image is "
                f"{(height, width)}; it cannot be transformed consistently with the image"
            )
        keys.append(key)
    return keys


def _check_size(size: Sequence[int], name: str) -> tuple[int, int]:
    if len(size) != 2 or any(int(s) != s or int(s) <= 0 for s in size):
        raise ValueError(f"{name} must be [height, width] with two positive integers, got {list(size)}")
    return int(size[0]), int(size[1])


def crop_sample(sample: Sample, top: int, left: int, height: int, width: int) -> Sample:
    """Crop every raster of ``sample`` to rows ``top:top+height`` and columns ``left:left+width``.

    Args:
        sample: sample dict (not modified; a new dict is returned).
        top: first row of the window, pixels.
        left: first column of the window, pixels.
        height: window height, pixels; the window must fit inside the image.
        width: window width, pixels.

    Returns:
        The cropped sample; ``intrinsics`` get ``cx -= left``, ``cy -= top``.
    """
    img_h, img_w = _size_of(sample)
    if top < 0 or left < 0 or top + height > img_h or left + width > img_w:
        where = f" ({sample['path']})" if "path" in sample else ""
        raise ValueError(
            f"crop window {height}x{width} at (top={top}, left={left}) does not fit the {img_h}x{img_w} image{where}"
        )
    out = dict(sample)
    for key in _raster_keys(sample, "crop"):
        out[key] = sample[key][:, top : top + height, left : left + width]
    if "intrinsics" in sample:
        k = sample["intrinsics"].clone()
        k[0, 2] -= left
        k[1, 2] -= top
        out["intrinsics"] = k
    return out


class Compose(Transform):
    """Apply transforms in order.

    Args:
        transforms: callables ``sample -> sample`` (e.g. from this module; in YAML, a list of class nodes).
    """

    def __init__(self, transforms: Sequence[Transform]) -> None:
        for i, t in enumerate(transforms):
            if not callable(t):
                raise ConfigError(f"Compose: transform {i} ({t!r}) is not callable")
        self.transforms = list(transforms)

    def __call__(self, sample: Sample) -> Sample:
        """Apply the transforms in order."""
        for t in self.transforms:
            sample = t(sample)
        return sample

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class Resize(Transform):
    """Resize every raster to ``size``: the image with ``image_interpolation``, all other rasters nearest-exact.

    Depth and masks use nearest-neighbour (``nearest-exact``, the pixel-centre-correct variant, as Marigold's
    ``InterpolationMode.NEAREST_EXACT``) so no depth value is invented across an edge and the mask stays the range
    test of the resized depth. Marigold resizes the RGB nearest-exact too; bilinear with antialiasing (the default
    here, and what inference-time resizing in diffusers' Marigold pipeline uses) avoids aliasing when shrinking.

    Args:
        size: ``[height, width]`` in pixels.
        image_interpolation: one of :data:`IMAGE_INTERPOLATIONS`.
        antialias: low-pass before down-sampling (bilinear / bicubic only).
    """

    def __init__(self, size: Sequence[int], image_interpolation: str = "bilinear", antialias: bool = True) -> None:
        self.size = _check_size(size, "Resize size")
        if image_interpolation not in IMAGE_INTERPOLATIONS:
            raise ValueError(
                f"Resize: image_interpolation must be one of {IMAGE_INTERPOLATIONS}, got {image_interpolation!r}"
            )
        self.image_interpolation = image_interpolation
        self.antialias = antialias

    def __call__(self, sample: Sample) -> Sample:
        """Apply the transform to every raster of ``sample``; returns a new dict."""
        height, width = _size_of(sample)
        if (height, width) == self.size:
            return sample
        out = dict(sample)
        for key in _raster_keys(sample, "Resize"):
            value = sample[key]
            if key == "image":
                mode = self.image_interpolation
                kwargs: dict[str, Any] = {}
                if mode in ("bilinear", "bicubic"):
                    kwargs = {"align_corners": False, "antialias": self.antialias}
                resized = F.interpolate(value[None].float(), size=self.size, mode=mode, **kwargs)[0]
                # Bicubic can overshoot; the image contract is [-1, 1].
                out[key] = resized.clamp_(-1.0, 1.0).to(value.dtype)
            else:
                resized = F.interpolate(value[None].float(), size=self.size, mode="nearest-exact")[0]
                out[key] = resized.bool() if value.dtype == torch.bool else resized.to(value.dtype)
        if "intrinsics" in sample:
            # Continuous coordinates (pixel corners at integers) scale by s; OpenCV centres are offset by 0.5.
            k = sample["intrinsics"].clone()
            sy, sx = self.size[0] / height, self.size[1] / width
            k[0, 0] *= sx
            k[1, 1] *= sy
            k[0, 2] = (k[0, 2] + 0.5) * sx - 0.5
            k[1, 2] = (k[1, 2] + 0.5) * sy - 0.5
            out["intrinsics"] = k
        return out

    def __repr__(self) -> str:
        return f"Resize(size={list(self.size)}, image_interpolation={self.image_interpolation!r})"


class HorizontalFlip(Transform):
    """Mirror every raster left-right with probability ``p`` (Marigold's only depth augmentation, p = 0.5).

    Flips *every* 3-D tensor in the sample, whatever its size (a mirrored latent grid stays aligned with a mirrored
    image), except the pairs of :data:`FLIP_PAIRS` (a cached teacher target and the target of the mirrored image),
    which are swapped; one of a pair without the other is an error. ``intrinsics`` get ``cx' = W - 1 - cx``.

    Args:
        p: probability of flipping, in [0, 1].
    """

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"HorizontalFlip: p must be in [0, 1], got {p}")
        self.p = float(p)

    def __call__(self, sample: Sample) -> Sample:
        """Mirror ``sample`` with probability ``p``; returns a new dict (or ``sample`` unchanged)."""
        if self.p <= 0.0 or (self.p < 1.0 and torch.rand(()).item() >= self.p):
            return sample
        _, width = _size_of(sample)
        out = dict(sample)
        swapped: set[str] = set()
        for key, partner in FLIP_PAIRS.items():
            if key in sample and partner not in sample:
                raise ValueError(
                    f"HorizontalFlip: sample has '{key}' without '{partner}'; a teacher target cannot be mirrored (the "
                    "teacher is not flip-equivariant). Cache both flip states with tools/cache_teacher.py, or set "
                    "hflip_p: 0"
                )
            if key in sample:
                # Swap, don't flip: the diffusion teacher is not flip-equivariant, so the target for the mirrored image
                # is the teacher's output *for the mirrored image* (precomputed by the teacher cache), which differs
                # from the mirror of its output for the original image.
                out[key], out[partner] = sample[partner], sample[key]
                swapped.update((key, partner))
        for key, value in sample.items():
            if key not in swapped and isinstance(value, Tensor) and value.ndim == 3:
                out[key] = value.flip(-1)
        if "intrinsics" in sample:
            k = sample["intrinsics"].clone()
            k[0, 2] = width - 1 - k[0, 2]
            out["intrinsics"] = k
        return out

    def __repr__(self) -> str:
        return f"HorizontalFlip(p={self.p})"


class RandomCrop(Transform):
    """Crop a random ``size`` window (uniform over positions) from every raster.

    Args:
        size: ``[height, width]``; must not exceed the image size.
    """

    def __init__(self, size: Sequence[int]) -> None:
        self.size = _check_size(size, "RandomCrop size")

    def __call__(self, sample: Sample) -> Sample:
        """Apply the transform to every raster of ``sample``; returns a new dict."""
        img_h, img_w = _size_of(sample)
        height, width = self.size
        if height > img_h or width > img_w:
            where = f" ({sample['path']})" if "path" in sample else ""
            raise ValueError(f"RandomCrop: crop {height}x{width} is larger than the {img_h}x{img_w} image{where}")
        top = int(torch.randint(0, img_h - height + 1, ()).item())
        left = int(torch.randint(0, img_w - width + 1, ()).item())
        return crop_sample(sample, top, left, height, width)

    def __repr__(self) -> str:
        return f"RandomCrop(size={list(self.size)})"


class KBCrop(Transform):
    """KITTI benchmark crop (Marigold ``kitti_benchmark_crop``): keep the bottom ``height`` rows, centre horizontally.

    The window is :func:`~d3epth.data.crops.kb_crop_window`: ``top = H - height``, ``left = (W - width) // 2``; for a
    375x1242 frame that is top 23, left 13.

    Args:
        height, width: crop size; 352x1216 is the KITTI benchmark size.
    """

    def __init__(self, height: int = KB_CROP_SIZE[0], width: int = KB_CROP_SIZE[1]) -> None:
        self.height, self.width = _check_size([height, width], "KBCrop size")

    def __call__(self, sample: Sample) -> Sample:
        """Apply the transform to every raster of ``sample``; returns a new dict."""
        img_h, img_w = _size_of(sample)
        if img_h < self.height or img_w < self.width:
            where = f"{sample['path']}: " if "path" in sample else ""
            raise ValueError(
                f"{where}image is {img_h}x{img_w}, smaller than the KB crop {self.height}x{self.width}; "
                "set kb_crop: false for frames smaller than the KITTI benchmark size"
            )
        top, left = kb_crop_window(img_h, img_w, self.height, self.width)
        return crop_sample(sample, top, left, self.height, self.width)

    def __repr__(self) -> str:
        return f"KBCrop(height={self.height}, width={self.width})"


#: ``torch.quantile`` refuses inputs with more elements than this.
_TORCH_QUANTILE_MAX = 2**24


def _quantiles(values: Tensor, qs: Sequence[float]) -> list[float]:
    """Linear-interpolation quantiles of a 1-D tensor (as ``torch.quantile`` / ``numpy.quantile``).

    Up to 2**24 elements on the CPU the result equals ``torch.quantile``'s bit for bit, computed as it does (ranks
    ``q (n - 1)`` in float64 from ``q`` in the values' dtype, ``lerp`` in the values' dtype of the order statistics
    below and above; ``tests/data/test_transforms.py`` checks the equality) but with the order statistics selected by
    ``numpy.partition`` (linear time) instead of a full sort (1.4x faster at 480x640, saving ~2 ms per training
    sample). Beyond 2**24 elements two ``kthvalue`` calls per quantile.
    """
    n = values.numel()
    if n <= _TORCH_QUANTILE_MAX and values.device.type == "cpu" and not values.requires_grad:
        ranks = torch.tensor(list(qs), dtype=values.dtype).double() * (n - 1)
        below, above = ranks.long(), ranks.ceil().long()  # ranks >= 0: truncation is the floor, as in torch
        order = torch.from_numpy(np.partition(values.numpy(), sorted({*below.tolist(), *above.tolist()})))
        return order[below].lerp(order[above], (ranks - below).to(values.dtype)).tolist()
    if n <= _TORCH_QUANTILE_MAX:
        return torch.quantile(values, torch.tensor(list(qs), dtype=values.dtype)).tolist()
    out = []
    for q in qs:
        pos = q * (n - 1)
        lo = int(pos)
        hi = min(lo + 1, n - 1)
        v_lo = values.kthvalue(lo + 1).values
        v_hi = values.kthvalue(hi + 1).values if hi != lo else v_lo
        out.append(float(v_lo + (v_hi - v_lo) * (pos - lo)))
    return out


def normalize_depth(
    depth: Tensor, valid_mask: Tensor, quantiles: tuple[float, float] = NORM_QUANTILES, eps: float = 1e-6
) -> Tensor:
    """Per-image affine normalisation to [-1, 1] by the 2 % / 98 % depth quantiles (Marigold, paper Eq. 3).

    ``d2, d98`` are the quantiles over the valid pixels; every pixel maps to ``(d - d2) / (d98 - d2) * 2 - 1``,
    clipped to [-1, 1]. Invalid pixels are normalised too (Marigold's ``depth_raw_norm``): holes stored as 0 go to -1,
    Virtual KITTI sky (655.35 m) to +1.

    Degenerate images get an all-zero map: no valid pixel, or ``d98 - d2 < eps`` (a flat depth has no defined
    normalisation). Such a sample should be skipped by the losses through its mask (an all-False ``valid_mask`` for
    the no-valid-pixel case).

    Args:
        depth: float [1,H,W] (or any shape), metres.
        valid_mask: bool, same shape.
        quantiles: lower and upper quantile.
        eps: smallest quantile spread in metres treated as non-degenerate.

    Returns:
        float32 tensor of the shape of ``depth`` in [-1, 1].
    """
    if depth.shape != valid_mask.shape:
        raise ValueError(f"normalize_depth: depth {tuple(depth.shape)} and mask {tuple(valid_mask.shape)} differ")
    values = depth[valid_mask & (depth > 0)].float()
    if values.numel() == 0:
        return torch.zeros_like(depth, dtype=torch.float32)
    d_lo, d_hi = _quantiles(values, quantiles)
    if d_hi - d_lo < eps:
        return torch.zeros_like(depth, dtype=torch.float32)
    return ((depth.float() - d_lo) / (d_hi - d_lo) * 2.0 - 1.0).clamp_(-1.0, 1.0)
