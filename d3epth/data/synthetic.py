"""Procedural 3-D scenes with exact geometry, written in the on-disk layouts of real depth datasets.

Real training and evaluation data (Hypersim, Virtual KITTI 2, NYUv2, KITTI) cannot be downloaded here, so this
module renders stand-ins whose *geometry is exact*: every pixel's ray distance and planar depth come from analytic
ray/primitive intersections, not from an estimate. The images are simple but structured (textured rooms with
furniture and lamps, streets with lanes, pavements, facades, cars and poles) so that depth models have something
to learn and readers have something real to read.

Two scene families are rendered by vectorised ray casting in numpy (no external renderer):

* **indoor rooms** (Hypersim, NYUv2): walls, floor, ceiling, box furniture, spheres, cylinders; procedural
  checker/stripe/plank/noise albedo; point lights with hard shadows; an optional window hole or skylight through
  which rays hit nothing (entity id -1, the invalid pixels of Hypersim). Linear HDR radiance is kept, not tone
  mapped, as Hypersim's ``color.hdf5`` is.
* **streets** (Virtual KITTI 2, KITTI): road with lane marks, raised pavements, building facades with windows,
  car-like boxes, poles, trees, a sun with shadows and a sky at infinity (entity id -1).

Conventions: world frame x east, y north, z up (metres). Camera frame x right, y down, z forward (OpenCV). Pixel
``u`` has its centre at image-plane coordinate ``u`` and the principal point ``cx`` is given in the same
coordinates, so ``cx = (W - 1) / 2`` is the image centre; for Hypersim this is exactly the brief's
``x = u - W/2 + 0.5``.

Determinism: every scene draws from ``numpy.random.SeedSequence(seed, spawn_key=(dataset, split, scene))``, so the
same seed gives identical bytes on disk regardless of the number of workers, and train/val/test (and the
different datasets) use disjoint random streams and disjoint scene names.

The writers at the bottom produce the layouts agreed for the sample data (raw Hypersim HDF5 + split CSV,
Virtual KITTI 2, NYUv2-like and KITTI-like folders and split lists).
"""

from __future__ import annotations

import csv
import functools
import math
import multiprocessing
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from PIL import Image
from tqdm.auto import tqdm

__all__ = [
    "HYPERSIM_CSV_COLUMNS",
    "KITTI_CAMERA",
    "NYU_CAMERA",
    "VKITTI_BASELINE",
    "VKITTI_CAMERA",
    "VKITTI_SCENES",
    "VKITTI_VARIATIONS",
    "CameraPose",
    "PinholeCamera",
    "RenderedFrame",
    "Scene",
    "StreetLayout",
    "hypersim_camera",
    "hypersim_scene_names",
    "iter_split_rows",
    "lidar_mask",
    "make_indoor_scene",
    "make_street_scene",
    "render",
    "render_hypersim_frame",
    "render_street_frame",
    "scene_rng",
    "street_scene_with_lighting",
    "write_hypersim_raw",
    "write_kitti",
    "write_nyuv2",
    "write_vkitti2",
]

_T_EPS = 1e-6  # minimum ray parameter (metres) so a ray never re-hits the surface it starts on
_DATASET_CODES = {"hypersim": 1, "vkitti2": 2, "nyuv2": 3, "kitti": 4}
_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}

HYPERSIM_CSV_COLUMNS = (
    "scene_name",
    "camera_name",
    "frame_id",
    "included_in_public_release",
    "exclude_reason",
    "split_partition_name",
)
"""Columns of Hypersim's ``metadata_images_split_scene_v1.csv`` (the ones Marigold reads, plus ``exclude_reason``)."""

VKITTI_SCENES = {"train": ("Scene02", "Scene06", "Scene18", "Scene20"), "val": ("Scene01",)}
"""Marigold's Virtual KITTI 2 split by scene (domain brief §1.4)."""

VKITTI_VARIATIONS = ("clone", "15-deg-left", "15-deg-right", "morning", "overcast", "sunset")
"""The six variations in Marigold's lists (fog, rain, 30-deg-* are excluded there and not generated here)."""

VKITTI_BASELINE = 0.532725
"""Stereo baseline of Virtual KITTI 2 (metres): Camera_1 sits this far to the right of Camera_0."""


# --------------------------------------------------------------------------------------------------------------------
# Random streams
# --------------------------------------------------------------------------------------------------------------------
def scene_rng(seed: int, dataset: str, split: str, index: int) -> np.random.Generator:
    """Random generator of one scene; streams of different datasets, splits or scenes never overlap.

    Args:
        seed: Base seed, a non-negative integer.
        dataset: One of ``hypersim``, ``vkitti2``, ``nyuv2``, ``kitti``.
        split: One of ``train``, ``val``, ``test``.
        index: Scene index within the split (non-negative).

    Returns:
        A generator seeded from ``SeedSequence(seed, spawn_key=(dataset, split, index))``.
    """
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if dataset not in _DATASET_CODES:
        raise ValueError(f"dataset must be one of {sorted(_DATASET_CODES)}, got {dataset!r}")
    if split not in _SPLIT_CODES:
        raise ValueError(f"split must be one of {sorted(_SPLIT_CODES)}, got {split!r}")
    key = (_DATASET_CODES[dataset], _SPLIT_CODES[split], int(index))
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=key))


# --------------------------------------------------------------------------------------------------------------------
# Camera
# --------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PinholeCamera:
    """Pinhole intrinsics. ``cx, cy`` are in pixel-index coordinates (pixel ``u`` is centred at ``u``).

    Attributes:
        width: Image width W in pixels.
        height: Image height H in pixels.
        fx: Horizontal focal length in pixels.
        fy: Vertical focal length in pixels.
        cx: Principal point x in pixels; ``(W - 1) / 2`` is the image centre.
        cy: Principal point y in pixels; ``(H - 1) / 2`` is the image centre.
    """

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float

    def __post_init__(self) -> None:
        if self.width < 1 or self.height < 1:
            raise ValueError(f"camera size must be positive, got {self.width}x{self.height}")
        if self.fx <= 0 or self.fy <= 0:
            raise ValueError(f"focal lengths must be positive, got fx={self.fx}, fy={self.fy}")

    @classmethod
    def from_horizontal_fov(cls, width: int, height: int, fov_deg: float) -> PinholeCamera:
        """Centred camera with square pixels and the given horizontal field of view (degrees)."""
        f = 0.5 * width / math.tan(math.radians(fov_deg) / 2.0)
        return cls(width, height, f, f, (width - 1) / 2.0, (height - 1) / 2.0)

    def scaled(self, width: int, height: int) -> PinholeCamera:
        """Intrinsics of the same camera after resizing its image to ``width`` x ``height``."""
        sx, sy = width / self.width, height / self.height
        # Pixel-index convention: the image edge is at -0.5, so scale about -0.5 rather than 0.
        return PinholeCamera(
            width, height, self.fx * sx, self.fy * sy, (self.cx + 0.5) * sx - 0.5, (self.cy + 0.5) * sy - 0.5
        )

    def ray_directions(self) -> np.ndarray:
        """Unit ray directions in the camera frame, row-major over pixels.

        Returns:
            float64 [3, H*W]; the z component is cos(angle to the optical axis), i.e. depth / distance.
        """
        x = (np.arange(self.width) - self.cx) / self.fx
        y = (np.arange(self.height) - self.cy) / self.fy
        xx, yy = np.meshgrid(x, y)
        d = np.stack([xx.ravel(), yy.ravel(), np.ones(xx.size)])
        return d / np.linalg.norm(d, axis=0, keepdims=True)


VKITTI_CAMERA = PinholeCamera(1242, 375, 725.0087, 725.0087, 620.5, 187.0)
"""Virtual KITTI 2 intrinsics at the native 1242x375 (``intrinsic.txt``)."""

KITTI_CAMERA = PinholeCamera(1242, 375, 721.5377, 721.5377, 609.5593, 172.854)
"""KITTI ``image_02`` intrinsics of the 2011_09_26 drives (focal 721.5377 as in Marigold's Eigen list)."""

NYU_CAMERA = PinholeCamera(640, 480, 518.8579, 519.4696, 325.5824, 253.7362)
"""NYUv2 Kinect colour intrinsics at 640x480."""


def hypersim_camera(width: int, height: int) -> PinholeCamera:
    """Hypersim's camera: 60 degree horizontal field of view, square pixels, centred (886.81 px at 1024 wide)."""
    return PinholeCamera.from_horizontal_fov(width, height, 60.0)


@dataclass(frozen=True)
class CameraPose:
    """Camera position and orientation in the world (z up).

    Attributes:
        position: Optical centre (x, y, z) in metres.
        yaw: Heading in radians; 0 looks along +y, positive turns left (counter-clockwise seen from above).
        pitch: Elevation of the optical axis in radians, positive looks up.
    """

    position: tuple[float, float, float]
    yaw: float
    pitch: float = 0.0

    def rotation(self) -> np.ndarray:
        """Camera-to-world rotation, float64 [3, 3]; columns are the camera's right, down and forward axes."""
        cy, sy, cp, sp = math.cos(self.yaw), math.sin(self.yaw), math.cos(self.pitch), math.sin(self.pitch)
        forward = np.array([-sy * cp, cy * cp, sp])
        right = np.array([cy, sy, 0.0])
        down = np.cross(forward, right)
        return np.stack([right, down, forward], axis=1)

    def shifted(self, right: float) -> CameraPose:
        """The same pose moved ``right`` metres along the camera's right axis (a stereo partner)."""
        r = self.rotation()[:, 0]
        p = np.asarray(self.position) + right * r
        return CameraPose((float(p[0]), float(p[1]), float(p[2])), self.yaw, self.pitch)


# --------------------------------------------------------------------------------------------------------------------
# Materials and procedural textures
# --------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Material:
    """Procedural albedo (linear RGB in [0, 1]) and optional emission.

    Attributes:
        color: Base albedo.
        color2: Second albedo for two-tone patterns (checker tiles, stripes, window glass, lane marks).
        pattern: ``plain``, ``checker``, ``stripes``, ``planks``, ``noise``, ``windows``, ``road`` or ``grass``.
        scale: Pattern period in metres (for ``road``: half the road width).
        emission: Emitted radiance as a multiple of ``color`` (lamp shades).
        seed: Seed of the pattern's noise phases.
    """

    color: tuple[float, float, float]
    color2: tuple[float, float, float] = (0.0, 0.0, 0.0)
    pattern: str = "plain"
    scale: float = 0.5
    emission: float = 0.0
    seed: int = 0


def _hash2(i: np.ndarray, j: np.ndarray | float, seed: int) -> np.ndarray:
    """Cheap deterministic per-cell random numbers in [0, 1) for integer lattice cells."""
    x = np.sin(i * 12.9898 + j * 78.233 + seed * 37.719) * 43758.5453
    return x - np.floor(x)


def _noise(u: np.ndarray, v: np.ndarray, scale: float, seed: int) -> np.ndarray:
    """Smooth band-limited noise in about [-1, 1]: four octaves of products of randomly oriented sines."""
    rng = np.random.default_rng(seed)
    out = np.zeros_like(u)
    amp, total = 1.0, 0.0
    for octave in range(4):
        k = 2.0 * math.pi * (2.0**octave) / scale
        a, b = rng.uniform(0.0, 2.0 * math.pi, 2)
        pa, pb = rng.uniform(0.0, 2.0 * math.pi, 2)
        out += (
            amp
            * np.sin(k * (u * math.cos(a) + v * math.sin(a)) + pa)
            * np.sin(k * (u * math.cos(b) + v * math.sin(b)) + pb)
        )
        total += amp
        amp *= 0.5
    return out / total * 2.0


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise dot product of [3, N] (or [3, 1]) arrays → [N]; cheaper than ``(a * b).sum(axis=0)``."""
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _mix(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Linear blend of two colours: a [3] or [3,N], b likewise, t [N] in [0, 1] → [3, N]."""
    return a.reshape(3, -1) * (1.0 - t) + b.reshape(3, -1) * t


def _albedo(mat: Material, u: np.ndarray, v: np.ndarray, p: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Albedo of ``mat`` at surface coordinates (u, v) [N] (metres), world points p [3,N], normals n [3,N]."""
    c1 = np.asarray(mat.color, dtype=np.float64)
    c2 = np.asarray(mat.color2, dtype=np.float64)
    s = mat.scale
    if mat.pattern == "plain":
        return c1[:, None] * (1.0 + 0.05 * _noise(u, v, 0.7, mat.seed))
    if mat.pattern == "checker":
        cell = (np.floor(u / s) + np.floor(v / s)) % 2
        grout = (np.abs((u / s) - np.round(u / s)) < 0.03) | (np.abs((v / s) - np.round(v / s)) < 0.03)
        out = _mix(c1, c2, cell) * (1.0 + 0.06 * _noise(u, v, s, mat.seed))
        return np.where(grout, out * 0.55, out)
    if mat.pattern == "stripes":
        band = np.floor(u / s) % 2
        return _mix(c1, c2, band) * (1.0 + 0.04 * _noise(u, v, 0.5, mat.seed))
    if mat.pattern == "planks":
        i = np.floor(u / s)
        j = np.floor((v + 3.0 * _hash2(i, 0.0, mat.seed)) / (6.0 * s))
        tint = 0.7 + 0.6 * _hash2(i, j, mat.seed)
        grain = 1.0 + 0.12 * np.sin(v * 40.0 / (1.0 + 0.5 * _hash2(i, j + 1, mat.seed)) + 5.0 * u)
        seam = np.abs(u / s - np.round(u / s)) < 0.04
        return np.where(seam, 0.5, 1.0) * _mix(c1, c2, _hash2(i, j + 7, mat.seed)) * tint * grain
    if mat.pattern == "noise":
        return _mix(c1, c2, np.clip(0.5 + 0.5 * _noise(u, v, s, mat.seed), 0.0, 1.0))
    if mat.pattern == "windows":
        # Facades: a grid of glass panes (color2) on vertical faces, plain wall elsewhere (roofs).
        fu = u / 2.8 - np.floor(u / 2.8)
        fv = v / 3.2 - np.floor(v / 3.2)
        glass = (np.abs(n[2]) < 0.5) & (fu > 0.22) & (fu < 0.78) & (fv > 0.3) & (fv < 0.82) & (v > 1.5)
        shade = 0.8 + 0.4 * _hash2(np.floor(u / 2.8), np.floor(v / 3.2), mat.seed)
        wall = c1[:, None] * (1.0 + 0.08 * _noise(u, v, 1.5, mat.seed))
        return np.where(glass, c2[:, None] * shade, wall)
    if mat.pattern == "road":
        # World-aligned: road along +y centred on x = 0, half width = scale; dashed centre line, solid edge lines.
        x, y = p[0], p[1]
        asphalt = c1[:, None] * (1.0 + 0.15 * _noise(x, y, 0.8, mat.seed))
        dash = (np.abs(x) < 0.08) & ((y / 9.0 - np.floor(y / 9.0)) < 0.4)
        edge = np.abs(np.abs(x) - (s - 0.3)) < 0.08
        return np.where(dash | edge, c2[:, None], asphalt)
    if mat.pattern == "grass":
        t = np.clip(0.5 + 0.5 * _noise(u, v, 2.0, mat.seed), 0.0, 1.0)
        return _mix(c1, c2, t)
    raise ValueError(f"unknown material pattern {mat.pattern!r}")


# --------------------------------------------------------------------------------------------------------------------
# Primitives: vectorised intersections. Rays: origins o [3,1] or [3,N], unit directions d [3,N].
# --------------------------------------------------------------------------------------------------------------------
class Primitive:
    """A surface with an entity id, a material and a bounding sphere used to cull rays before exact tests."""

    entity_id: int
    material: Material
    casts_shadow: bool
    bound_center: np.ndarray
    bound_radius: float

    def intersect(self, o: np.ndarray, d: np.ndarray) -> np.ndarray:
        """Ray parameter of the first hit beyond ``_T_EPS``, float64 [N]; ``inf`` where the ray misses."""
        raise NotImplementedError

    def normal(self, p: np.ndarray) -> np.ndarray:
        """Geometric unit normal [3, N] at surface points p [3, N] (orientation is fixed later, towards the ray)."""
        raise NotImplementedError

    def surface_uv(self, p: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Texture coordinates (metres) at points p [3, N] with normals n [3, N]."""
        raise NotImplementedError


def _planar_uv(q: np.ndarray, n_local: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project local points q [3,N] on the plane of their dominant normal axis: (x,y) on tops, (horizontal, z) else."""
    ax = np.abs(n_local)
    along_x = ax[0] >= np.maximum(ax[1], ax[2])
    along_y = ~along_x & (ax[1] >= ax[2])
    u = np.where(along_x, q[1], q[0])
    v = np.where(along_x | along_y, q[2], q[1])
    return u, v


class Rect(Primitive):
    """Axis-aligned rectangle (two-sided) with optional rectangular holes that rays pass through.

    Args:
        axis: Normal axis (0 = x, 1 = y, 2 = z).
        value: Plane coordinate along ``axis`` (metres).
        lo: Lower bounds on the two other axes, in increasing axis order.
        hi: Upper bounds on the two other axes.
        entity_id: Id written to the entity map.
        material: Surface material.
        holes: Rectangles ``(lo, hi)`` in the same two coordinates where the surface is missing.
        casts_shadow: Whether it blocks shadow rays.
    """

    def __init__(
        self,
        axis: int,
        value: float,
        lo: Sequence[float],
        hi: Sequence[float],
        entity_id: int,
        material: Material,
        holes: Sequence[tuple[Sequence[float], Sequence[float]]] = (),
        casts_shadow: bool = False,
    ) -> None:
        self.axis, self.value = axis, float(value)
        self.a, self.b = [k for k in range(3) if k != axis]
        self.lo, self.hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
        self.holes = [(np.asarray(h0, dtype=np.float64), np.asarray(h1, dtype=np.float64)) for h0, h1 in holes]
        self.entity_id, self.material, self.casts_shadow = entity_id, material, casts_shadow
        center = np.zeros(3)
        center[axis] = self.value
        center[self.a], center[self.b] = (self.lo + self.hi) / 2
        self.bound_center = center
        self.bound_radius = float(np.linalg.norm(self.hi - self.lo) / 2)

    def intersect(self, o: np.ndarray, d: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (self.value - o[self.axis]) / d[self.axis]
            pa = o[self.a] + t * d[self.a]
            pb = o[self.b] + t * d[self.b]
        ok = (t > _T_EPS) & (pa >= self.lo[0]) & (pa <= self.hi[0]) & (pb >= self.lo[1]) & (pb <= self.hi[1])
        for h0, h1 in self.holes:
            ok &= ~((pa > h0[0]) & (pa < h1[0]) & (pb > h0[1]) & (pb < h1[1]))
        return np.where(ok, t, np.inf)

    def normal(self, p: np.ndarray) -> np.ndarray:
        n = np.zeros_like(p)
        n[self.axis] = 1.0
        return n

    def surface_uv(self, p: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return p[self.a], p[self.b]


class Box(Primitive):
    """Box rotated by ``yaw`` about the vertical axis.

    Args:
        center: Centre (x, y, z) in metres.
        half: Half extents along the box's local x, y, z.
        yaw: Rotation about z in radians.
        entity_id: Id written to the entity map.
        material: Surface material.
        casts_shadow: Whether it blocks shadow rays.
    """

    def __init__(
        self,
        center: Sequence[float],
        half: Sequence[float],
        yaw: float,
        entity_id: int,
        material: Material,
        casts_shadow: bool = True,
    ) -> None:
        self.center = np.asarray(center, dtype=np.float64).reshape(3, 1)
        self.half = np.asarray(half, dtype=np.float64).reshape(3, 1)
        self.c, self.s = math.cos(yaw), math.sin(yaw)
        self.entity_id, self.material, self.casts_shadow = entity_id, material, casts_shadow
        self.bound_center = self.center[:, 0]
        self.bound_radius = float(np.linalg.norm(self.half))

    def _to_local(self, v: np.ndarray) -> np.ndarray:
        return np.stack([self.c * v[0] + self.s * v[1], -self.s * v[0] + self.c * v[1], v[2]])

    def _to_world(self, v: np.ndarray) -> np.ndarray:
        return np.stack([self.c * v[0] - self.s * v[1], self.s * v[0] + self.c * v[1], v[2]])

    def intersect(self, o: np.ndarray, d: np.ndarray) -> np.ndarray:
        q = self._to_local(o - self.center)
        dl = self._to_local(d)
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = 1.0 / dl
            t1 = (-self.half - q) * inv
            t2 = (self.half - q) * inv
        t_near = np.minimum(t1, t2).max(axis=0)
        t_far = np.maximum(t1, t2).min(axis=0)
        hit = t_far >= np.maximum(t_near, _T_EPS)
        return np.where(hit, np.where(t_near > _T_EPS, t_near, t_far), np.inf)

    def _local_normal(self, q: np.ndarray) -> np.ndarray:
        k = np.argmax(np.abs(q) / self.half, axis=0)
        n = np.zeros_like(q)
        n[k, np.arange(q.shape[1])] = np.sign(q[k, np.arange(q.shape[1])])
        return n

    def normal(self, p: np.ndarray) -> np.ndarray:
        return self._to_world(self._local_normal(self._to_local(p - self.center)))

    def surface_uv(self, p: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        q = self._to_local(p - self.center)
        return _planar_uv(q + self.half, self._local_normal(q))


class Sphere(Primitive):
    """Sphere. Args: center (x, y, z) and radius in metres, entity id, material, whether it casts shadows."""

    def __init__(
        self, center: Sequence[float], radius: float, entity_id: int, material: Material, casts_shadow: bool = True
    ) -> None:
        self.center = np.asarray(center, dtype=np.float64).reshape(3, 1)
        self.radius = float(radius)
        self.entity_id, self.material, self.casts_shadow = entity_id, material, casts_shadow
        self.bound_center, self.bound_radius = self.center[:, 0], self.radius

    def intersect(self, o: np.ndarray, d: np.ndarray) -> np.ndarray:
        oc = o - self.center
        b = _dot(oc, d)
        c = _dot(oc, oc) - self.radius**2
        disc = b * b - c
        root = np.sqrt(np.maximum(disc, 0.0))
        t = -b - root
        t = np.where(t > _T_EPS, t, -b + root)
        return np.where((disc >= 0.0) & (t > _T_EPS), t, np.inf)

    def normal(self, p: np.ndarray) -> np.ndarray:
        return (p - self.center) / self.radius

    def surface_uv(self, p: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        q = p - self.center
        return self.radius * np.arctan2(q[1], q[0]), q[2]


class Cylinder(Primitive):
    """Vertical capped cylinder. Args: base centre (x, y, z0), radius, height (metres), entity id, material."""

    def __init__(
        self,
        base: Sequence[float],
        radius: float,
        height: float,
        entity_id: int,
        material: Material,
        casts_shadow: bool = True,
    ) -> None:
        self.base = np.asarray(base, dtype=np.float64).reshape(3, 1)
        self.radius, self.height = float(radius), float(height)
        self.entity_id, self.material, self.casts_shadow = entity_id, material, casts_shadow
        self.bound_center = self.base[:, 0] + np.array([0.0, 0.0, height / 2])
        self.bound_radius = math.hypot(radius, height / 2)

    def intersect(self, o: np.ndarray, d: np.ndarray) -> np.ndarray:
        q = o - self.base
        r2 = self.radius**2
        a = d[0] ** 2 + d[1] ** 2
        b = q[0] * d[0] + q[1] * d[1]
        c = q[0] ** 2 + q[1] ** 2 - r2
        with np.errstate(divide="ignore", invalid="ignore"):
            disc = b * b - a * c
            root = np.sqrt(np.maximum(disc, 0.0))
            best = np.full(d.shape[1], np.inf)
            for t in ((-b - root) / a, (-b + root) / a):
                z = q[2] + t * d[2]
                ok = (disc >= 0.0) & (a > 0.0) & (t > _T_EPS) & (z >= 0.0) & (z <= self.height)
                best = np.where(ok & (t < best), t, best)
            for zc in (0.0, self.height):
                t = (zc - q[2]) / d[2]
                x, y = q[0] + t * d[0], q[1] + t * d[1]
                ok = (t > _T_EPS) & (x * x + y * y <= r2)
                best = np.where(ok & (t < best), t, best)
        return best

    def normal(self, p: np.ndarray) -> np.ndarray:
        q = p - self.base
        on_cap = (np.abs(q[2]) < 1e-7) | (np.abs(q[2] - self.height) < 1e-7)
        radial = np.stack([q[0], q[1], np.zeros_like(q[0])]) / self.radius
        cap = np.stack([np.zeros_like(q[0]), np.zeros_like(q[0]), np.ones_like(q[0])])
        return np.where(on_cap, cap, radial)

    def surface_uv(self, p: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        q = p - self.base
        return np.where(np.abs(n[2]) > 0.5, q[0], self.radius * np.arctan2(q[1], q[0])), np.where(
            np.abs(n[2]) > 0.5, q[1], q[2]
        )


# --------------------------------------------------------------------------------------------------------------------
# Scenes and rendering
# --------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PointLight:
    """Isotropic point light: radiant intensity ``color`` (linear RGB), inverse-square falloff."""

    position: tuple[float, float, float]
    color: tuple[float, float, float]


@dataclass
class Scene:
    """Primitives plus lighting.

    Attributes:
        primitives: Surfaces; entity ids are >= 1 (-1 is reserved for "no geometry").
        lights: Point lights (indoor).
        sun_direction: Unit vector towards the sun, or None.
        sun_color: Sun irradiance (linear RGB).
        ambient: Ambient irradiance (linear RGB), scaled by an up-facing term.
        sky_zenith: Sky radiance straight up; None renders misses black (indoor: no geometry behind holes).
        sky_horizon: Sky radiance at the horizon.
    """

    primitives: list[Primitive]
    lights: list[PointLight] = field(default_factory=list)
    sun_direction: tuple[float, float, float] | None = None
    sun_color: tuple[float, float, float] = (0.0, 0.0, 0.0)
    ambient: tuple[float, float, float] = (0.1, 0.1, 0.1)
    sky_zenith: tuple[float, float, float] | None = None
    sky_horizon: tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclass
class RenderedFrame:
    """One rendered view.

    Attributes:
        rgb: uint8 [H, W, 3], display image (exposure + soft clip + gamma 2.2; not Hypersim's tone map).
        radiance: float32 [H, W, 3], linear HDR radiance (not tone mapped); 0 where nothing is hit indoors.
        distance: float64 [H, W], ray distance from the optical centre in metres; ``inf`` where nothing is hit.
        depth: float64 [H, W], planar depth (z in the camera frame) in metres; ``inf`` where nothing is hit.
        entity_id: int32 [H, W], id of the visible primitive; -1 where nothing is hit.
        camera: The intrinsics used.
        points: float64 [3, H*W] world hit points (NaN where nothing is hit), for sensor simulation.
    """

    rgb: np.ndarray
    radiance: np.ndarray
    distance: np.ndarray
    depth: np.ndarray
    entity_id: np.ndarray
    camera: PinholeCamera
    points: np.ndarray


def _pixel_candidates(prim: Primitive, o: np.ndarray, rot: np.ndarray, camera: PinholeCamera) -> np.ndarray | None:
    """Pixels whose rays can meet ``prim``: those inside the projection of its bounding sphere's bounding box.

    Returns:
        Flat pixel indices [K], or None for "all pixels" (the bound straddles the camera plane or is huge).
    """
    if prim.bound_radius > 50.0:
        return None
    c = rot.T @ (prim.bound_center - o[:, 0])
    r = prim.bound_radius
    if c[2] + r <= 0.0:
        return np.empty(0, dtype=np.int64)
    if c[2] - r <= 0.05:
        return None
    # x/z over the box [x-r, x+r] x [z-r, z+r] (z > 0) is extreme at its corners: a conservative image rectangle.
    zs = (c[2] - r, c[2] + r)
    xs = [(c[0] + sx * r) / z for sx in (-1, 1) for z in zs]
    ys = [(c[1] + sy * r) / z for sy in (-1, 1) for z in zs]
    u0 = max(math.floor(camera.cx + camera.fx * min(xs)), 0)
    u1 = min(math.ceil(camera.cx + camera.fx * max(xs)), camera.width - 1)
    v0 = max(math.floor(camera.cy + camera.fy * min(ys)), 0)
    v1 = min(math.ceil(camera.cy + camera.fy * max(ys)), camera.height - 1)
    if u1 < u0 or v1 < v0:
        return np.empty(0, dtype=np.int64)
    return (np.arange(v0, v1 + 1)[:, None] * camera.width + np.arange(u0, u1 + 1)[None, :]).ravel()


def _closest_hit(
    prims: Sequence[Primitive], o: np.ndarray, d: np.ndarray, rot: np.ndarray, camera: PinholeCamera
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest hit of the camera rays over ``prims``: ray parameter [N] (inf on miss), primitive index [N] (-1)."""
    n = d.shape[1]
    t_best = np.full(n, np.inf)
    idx = np.full(n, -1, dtype=np.int64)
    for i, prim in enumerate(prims):
        cand = _pixel_candidates(prim, o, rot, camera)
        if cand is None:
            t = prim.intersect(o, d)
            closer = np.flatnonzero(t < t_best)
            t_best[closer] = t[closer]
            idx[closer] = i
            continue
        if cand.size == 0:
            continue
        t = prim.intersect(o, d[:, cand])
        closer = t < t_best[cand]
        sel = cand[closer]
        t_best[sel] = t[closer]
        idx[sel] = i
    return t_best, idx


def _basis(direction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors orthogonal to ``direction`` [3] and to each other."""
    helper = np.array([1.0, 0.0, 0.0]) if abs(direction[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e1 = np.cross(direction, helper)
    e1 /= np.linalg.norm(e1)
    return e1, np.cross(direction, e1)


def _occluded(
    prims: Sequence[Primitive], o: np.ndarray, d: np.ndarray, t_max: np.ndarray, direction: np.ndarray | None = None
) -> np.ndarray:
    """Whether each shadow ray (origins o [3,M], unit directions d [3,M]) is blocked before t_max [M].

    With ``direction`` (all rays parallel, the sun), rays are culled per occluder by the orthographic projection
    of their origins (sorted once, so each occluder only looks at the rays in its shadow's strip); otherwise by
    the distance from the bounding-sphere centre to each ray.
    """
    m = d.shape[1]
    blocked = np.zeros(m, dtype=bool)
    if m == 0:
        return blocked
    if direction is not None:
        e1, e2 = _basis(direction)
        a, b, s = e1 @ o, e2 @ o, direction @ o
        order = np.argsort(a, kind="stable")
        a_sorted = a[order]
    for prim in prims:
        c, r = prim.bound_center, prim.bound_radius
        if r > 50.0:
            cand = np.flatnonzero(~blocked)
        elif direction is not None:
            lo, hi = np.searchsorted(a_sorted, [e1 @ c - r, e1 @ c + r])
            cand = order[lo:hi]
            cand = cand[(np.abs(b[cand] - e2 @ c) <= r) & (s[cand] <= direction @ c + r) & ~blocked[cand]]
        else:
            oc = c.reshape(3, 1) - o
            along = _dot(oc, d)
            perp2 = _dot(oc, oc) - along * along
            cand = np.flatnonzero((perp2 <= r * r) & (along >= -r) & (along <= t_max + r) & ~blocked)
        if cand.size == 0:
            continue
        t = prim.intersect(o[:, cand], d[:, cand])
        blocked[cand[t < t_max[cand]]] = True
    return blocked


def _camera_response(radiance: np.ndarray) -> np.ndarray:
    """Display image from linear radiance [H,W,3]: auto exposure, soft highlight roll-off, gamma 2.2 → uint8."""
    lum = radiance @ np.array([0.3, 0.59, 0.11])
    key = float(np.percentile(lum, 75.0))
    exposure = 0.9 / key if key > 1e-8 else 1.0
    x = 1.0 - np.exp(-exposure * np.maximum(radiance, 0.0))
    return np.round(np.clip(x, 0.0, 1.0) ** (1.0 / 2.2) * 255.0).astype(np.uint8)


def render(scene: Scene, camera: PinholeCamera, pose: CameraPose) -> RenderedFrame:
    """Ray-cast ``scene`` from ``pose`` with ``camera``: exact distance/depth, entity ids and shaded radiance.

    Args:
        scene: The scene.
        camera: Intrinsics (one ray through each pixel centre).
        pose: Extrinsics.

    Returns:
        The rendered frame (see :class:`RenderedFrame`).
    """
    h, w = camera.height, camera.width
    d_cam = camera.ray_directions()
    rot = pose.rotation()
    d = rot @ d_cam
    o = np.asarray(pose.position, dtype=np.float64).reshape(3, 1)
    prims = scene.primitives
    t, idx = _closest_hit(prims, o, d, rot, camera)
    hit = idx >= 0
    hi = np.flatnonzero(hit)
    p = o + d[:, hi] * t[hi]
    dh = d[:, hi]
    idx_h = idx[hi]

    normal = np.zeros_like(p)
    albedo = np.zeros_like(p)
    emission = np.zeros_like(p)
    for i in np.unique(idx_h):
        sel = np.flatnonzero(idx_h == i)
        prim = prims[i]
        n = prim.normal(p[:, sel])
        n *= -np.sign(_dot(n, dh[:, sel]) + 1e-12)  # face the viewer: surfaces are two-sided
        u, v = prim.surface_uv(p[:, sel], n)
        normal[:, sel] = n
        alb = _albedo(prim.material, u, v, p[:, sel], n)
        albedo[:, sel] = np.clip(alb, 0.0, 1.0)
        if prim.material.emission > 0:
            emission[:, sel] = np.asarray(prim.material.color).reshape(3, 1) * prim.material.emission

    occluders = [q for q in prims if q.casts_shadow]
    start = p + normal * 1e-4  # lift shadow-ray origins off the surface to avoid self-shadowing
    irradiance = np.asarray(scene.ambient, dtype=np.float64).reshape(3, 1) * (0.75 + 0.25 * normal[2])
    for light in scene.lights:
        to_l = np.asarray(light.position, dtype=np.float64).reshape(3, 1) - p
        dist = np.linalg.norm(to_l, axis=0)
        ldir = to_l / np.maximum(dist, 1e-9)
        ndl = np.maximum(_dot(normal, ldir), 0.0)
        lit = np.flatnonzero(ndl > 0)
        vis = np.zeros_like(ndl)
        vis[lit] = ~_occluded(occluders, start[:, lit], ldir[:, lit], dist[lit])
        irradiance += np.asarray(light.color).reshape(3, 1) * (ndl * vis / np.maximum(dist**2, 0.25))
    if scene.sun_direction is not None:
        sdir = np.asarray(scene.sun_direction, dtype=np.float64).reshape(3, 1)
        ndl = np.maximum(_dot(normal, sdir), 0.0)
        lit = np.flatnonzero(ndl > 0)
        vis = np.zeros_like(ndl)
        sun_rays = np.repeat(sdir, lit.size, axis=1)
        vis[lit] = ~_occluded(occluders, start[:, lit], sun_rays, np.full(lit.size, np.inf), sdir[:, 0])
        irradiance += np.asarray(scene.sun_color).reshape(3, 1) * (ndl * vis)

    radiance = np.zeros((3, h * w))
    radiance[:, hi] = albedo * irradiance + emission
    if scene.sky_zenith is not None:
        mi = np.flatnonzero(~hit)
        elev = np.clip(d[2, mi], 0.0, 1.0) ** 0.6
        sky = _mix(np.asarray(scene.sky_horizon), np.asarray(scene.sky_zenith), elev)
        if scene.sun_direction is not None:
            glow = np.maximum(_dot(d[:, mi], np.asarray(scene.sun_direction).reshape(3, 1)), 0.0) ** 64
            sky = sky + np.asarray(scene.sun_color).reshape(3, 1) * 0.5 * glow
        radiance[:, mi] = sky

    ent_table = np.array([q.entity_id for q in prims] + [-1], dtype=np.int32)
    entity = ent_table[idx].reshape(h, w)  # idx -1 picks the trailing -1
    distance = t.reshape(h, w)
    depth = (t * d_cam[2]).reshape(h, w)
    points = np.full((3, h * w), np.nan)
    points[:, hi] = p
    rad_img = radiance.T.reshape(h, w, 3).astype(np.float32)
    return RenderedFrame(
        rgb=_camera_response(rad_img),
        radiance=rad_img,
        distance=distance,
        depth=depth,
        entity_id=entity,
        camera=camera,
        points=points,
    )


# --------------------------------------------------------------------------------------------------------------------
# Indoor scenes
# --------------------------------------------------------------------------------------------------------------------
_WALL_COLORS = [(0.75, 0.72, 0.65), (0.62, 0.68, 0.72), (0.78, 0.7, 0.58), (0.55, 0.62, 0.5), (0.8, 0.78, 0.76)]
_FLOOR_COLORS = [((0.45, 0.3, 0.18), (0.6, 0.42, 0.25)), ((0.7, 0.7, 0.68), (0.25, 0.25, 0.27))]
_FURNITURE_COLORS = [
    (0.55, 0.35, 0.2),
    (0.3, 0.2, 0.12),
    (0.2, 0.3, 0.55),
    (0.6, 0.15, 0.12),
    (0.25, 0.45, 0.3),
    (0.75, 0.72, 0.66),
    (0.15, 0.15, 0.17),
    (0.7, 0.55, 0.2),
]


class _Ids:
    """Entity id counter; ids start at 1 because -1 means "no geometry" (and Marigold asserts ids != 0)."""

    def __init__(self) -> None:
        self.next = 1

    def __call__(self) -> int:
        self.next += 1
        return self.next - 1


def _rand_material(rng: np.random.Generator, patterns: Sequence[str], palette: Sequence[Any]) -> Material:
    """A random material from a palette of base colours, with a lighter/darker second colour."""
    c = np.asarray(palette[rng.integers(len(palette))], dtype=np.float64) * rng.uniform(0.8, 1.15)
    c2 = np.clip(c * rng.uniform(0.45, 0.75) + rng.uniform(-0.05, 0.05, 3), 0.0, 1.0)
    return Material(
        tuple(np.clip(c, 0, 1).tolist()),
        tuple(c2.tolist()),
        str(rng.choice(list(patterns))),
        float(rng.uniform(0.08, 0.3)),
        seed=int(rng.integers(1 << 30)),
    )


def _local_to_world(x: float, y: float, yaw: float, lx: float, ly: float) -> tuple[float, float]:
    c, s = math.cos(yaw), math.sin(yaw)
    return x + c * lx - s * ly, y + s * lx + c * ly


def _furniture(
    kind: str, x: float, y: float, yaw: float, room_h: float, rng: np.random.Generator, ids: _Ids
) -> tuple[list[Primitive], list[PointLight], float, tuple[float, float]]:
    """Primitives of one furniture item at (x, y) facing ``yaw``.

    Items that stand against a wall (bed, sofa, cabinet) take (x, y) as the point on the wall behind them and
    move into the room by their own depth along local +y, so they touch the wall instead of crossing it.

    Returns:
        (primitives, lights, footprint radius, footprint centre (x, y)).
    """
    mat = _rand_material(rng, ("plain", "planks", "noise", "stripes"), _FURNITURE_COLORS)
    prims: list[Primitive] = []
    lights: list[PointLight] = []
    offset = [0.0]  # local +y shift from the wall point to the item centre (set once the size is drawn)

    def box(lx: float, ly: float, z0: float, sx: float, sy: float, sz: float, m: Material = mat) -> None:
        cx, cy = _local_to_world(x, y, yaw, lx, ly + offset[0])
        prims.append(Box((cx, cy, z0 + sz / 2), (sx / 2, sy / 2, sz / 2), yaw, ids(), m))

    def centre() -> tuple[float, float]:
        return _local_to_world(x, y, yaw, 0.0, offset[0])

    if kind == "table":
        w, dp, h = rng.uniform(0.9, 1.8), rng.uniform(0.6, 1.0), rng.uniform(0.7, 0.78)
        box(0, 0, h - 0.05, w, dp, 0.05)
        for sx in (-1, 1):
            for sy in (-1, 1):
                box(sx * (w / 2 - 0.06), sy * (dp / 2 - 0.06), 0.0, 0.06, 0.06, h - 0.05)
        for _ in range(int(rng.integers(0, 3))):  # things on the table
            ox, oy = rng.uniform(-w / 2 + 0.15, w / 2 - 0.15), rng.uniform(-dp / 2 + 0.15, dp / 2 - 0.15)
            cx, cy = _local_to_world(x, y, yaw, ox, oy)
            m = _rand_material(rng, ("plain", "stripes"), _FURNITURE_COLORS)
            if rng.random() < 0.5:
                r = rng.uniform(0.05, 0.12)
                prims.append(Cylinder((cx, cy, h), r, rng.uniform(0.1, 0.35), ids(), m))
            else:
                r = rng.uniform(0.06, 0.14)
                prims.append(Sphere((cx, cy, h + r), r, ids(), m))
        return prims, lights, math.hypot(w, dp) / 2, centre()
    if kind == "bed":
        w, ln = rng.uniform(1.0, 1.8), rng.uniform(1.9, 2.2)
        offset[0] = ln / 2 + 0.1
        sheet = _rand_material(rng, ("stripes", "checker", "noise"), _FURNITURE_COLORS)
        box(0, 0, 0.0, w, ln, 0.3)
        box(0, 0, 0.3, w - 0.04, ln - 0.04, 0.2, sheet)
        box(0, -ln / 2 - 0.04, 0.0, w + 0.1, 0.08, rng.uniform(0.8, 1.2))
        cx, cy = _local_to_world(x, y, yaw, 0.0, -ln / 2 + 0.3 + offset[0])
        prims.append(Sphere((cx, cy, 0.55), 0.14, ids(), Material((0.85, 0.85, 0.82))))
        return prims, lights, math.hypot(w, ln) / 2, centre()
    if kind == "sofa":
        w, dp = rng.uniform(1.5, 2.4), rng.uniform(0.8, 1.0)
        offset[0] = dp / 2 + 0.02
        box(0, 0, 0.0, w, dp, 0.45)
        box(0, -dp / 2 + 0.1, 0.45, w, 0.2, 0.4)
        for sx in (-1, 1):
            box(sx * (w / 2 - 0.1), 0, 0.45, 0.2, dp, 0.2)
        return prims, lights, math.hypot(w, dp) / 2, centre()
    if kind == "cabinet":
        w, dp, h = rng.uniform(0.5, 1.4), rng.uniform(0.35, 0.6), rng.uniform(0.8, min(2.1, room_h - 0.2))
        offset[0] = dp / 2 + 0.02
        box(0, 0, 0.0, w, dp, h, Material(mat.color, mat.color2, "stripes", float(rng.uniform(0.2, 0.5)), seed=1))
        return prims, lights, math.hypot(w, dp) / 2, centre()
    if kind == "round_table":
        r, h = rng.uniform(0.35, 0.6), rng.uniform(0.7, 0.78)
        prims.append(Cylinder((x, y, h - 0.04), r, 0.04, ids(), mat))
        prims.append(Cylinder((x, y, 0.0), 0.06, h - 0.04, ids(), mat))
        prims.append(Cylinder((x, y, 0.0), 0.25, 0.03, ids(), mat))
        return prims, lights, r, (x, y)
    if kind == "lamp":
        h = rng.uniform(1.3, 1.7)
        prims.append(Cylinder((x, y, 0.0), 0.02, h, ids(), Material((0.1, 0.1, 0.1))))
        prims.append(Cylinder((x, y, 0.0), 0.18, 0.03, ids(), Material((0.1, 0.1, 0.1))))
        warm = (1.0, 0.85, 0.6)
        # The shade glows and holds a light; it must not shadow its own light.
        prims.append(Sphere((x, y, h + 0.14), 0.16, ids(), Material(warm, emission=8.0), casts_shadow=False))
        lights.append(PointLight((x, y, h + 0.14), tuple(float(c * rng.uniform(2.0, 4.0)) for c in warm)))
        return prims, lights, 0.25, (x, y)
    if kind == "ball":
        r = rng.uniform(0.12, 0.35)
        prims.append(Sphere((x, y, r), r, ids(), _rand_material(rng, ("stripes", "checker"), _FURNITURE_COLORS)))
        return prims, lights, r, (x, y)
    if kind == "plant":
        pot_r = rng.uniform(0.12, 0.2)
        prims.append(Cylinder((x, y, 0.0), pot_r, 0.35, ids(), Material((0.6, 0.3, 0.18))))
        crown = Material((0.12, 0.35, 0.1), (0.25, 0.5, 0.15), "noise", 0.15, seed=int(rng.integers(1 << 30)))
        prims.append(Sphere((x, y, 0.35 + 0.35), rng.uniform(0.28, 0.4), ids(), crown))
        return prims, lights, 0.4, (x, y)
    if kind == "pillar":
        r = rng.uniform(0.15, 0.3)
        prims.append(Cylinder((x, y, 0.0), r, room_h, ids(), Material((0.8, 0.8, 0.78), pattern="plain")))
        return prims, lights, r, (x, y)
    raise ValueError(f"unknown furniture kind {kind!r}")


_AGAINST_WALL = {"bed", "sofa", "cabinet"}
_FURNITURE_KINDS = ("table", "bed", "sofa", "cabinet", "round_table", "lamp", "ball", "plant", "pillar")
_FURNITURE_WEIGHTS = np.array([3, 1.5, 2, 3, 1.5, 1.5, 1.5, 1.5, 0.7])


def _camera_path(
    rng: np.random.Generator, size: tuple[float, float, float], n_frames: int, margin: float = 0.6
) -> list[CameraPose]:
    """A short, smooth camera trajectory inside a room of ``size`` (W, D, H)."""
    w, dp, _ = size
    start = np.array([rng.uniform(margin, w - margin), rng.uniform(margin, dp - margin)])
    heading = rng.uniform(0, 2 * math.pi)
    step = rng.uniform(0.05, 0.2) * np.array([math.cos(heading), math.sin(heading)])
    z = rng.uniform(1.1, 1.7)
    # Look roughly towards the room centre so most of the view is inside the room.
    to_center = np.array([w / 2, dp / 2]) - start
    yaw0 = math.atan2(-to_center[0], to_center[1]) + rng.uniform(-0.8, 0.8)
    yaw_rate, pitch = rng.uniform(-0.08, 0.08), rng.uniform(-0.35, 0.05)
    poses = []
    for k in range(n_frames):
        xy = np.clip(start + k * step, [margin, margin], [w - margin, dp - margin])
        poses.append(CameraPose((float(xy[0]), float(xy[1]), float(z)), yaw0 + k * yaw_rate, pitch))
    return poses


def make_indoor_scene(
    rng: np.random.Generator,
    n_cameras: int = 1,
    n_frames: int = 1,
    window_prob: float = 0.6,
    skylight_prob: float = 0.2,
) -> tuple[Scene, list[list[CameraPose]]]:
    """A furnished, lit room and camera trajectories inside it.

    Args:
        rng: Random generator of this scene.
        n_cameras: Number of camera trajectories.
        n_frames: Frames per trajectory.
        window_prob: Probability of a window hole (rays through it hit nothing → entity -1).
        skylight_prob: Probability of an opening in the ceiling (also entity -1).

    Returns:
        The scene and ``poses[camera][frame]``.
    """
    ids = _Ids()
    w, dp, h = rng.uniform(3.5, 7.0), rng.uniform(3.5, 8.0), rng.uniform(2.5, 3.2)
    wall = Material(
        tuple(float(c) for c in np.asarray(_WALL_COLORS[rng.integers(len(_WALL_COLORS))]) * rng.uniform(0.85, 1.1)),
        (0.5, 0.5, 0.5),
        str(rng.choice(["plain", "plain", "stripes", "noise"])),
        float(rng.uniform(0.1, 0.3)),
        seed=int(rng.integers(1 << 30)),
    )
    wall = Material(wall.color, tuple(float(c) * 0.8 for c in wall.color), wall.pattern, wall.scale, seed=wall.seed)
    fa, fb = _FLOOR_COLORS[rng.integers(len(_FLOOR_COLORS))]
    floor_pattern = str(rng.choice(["planks", "checker"]))
    floor = Material(fa, fb, floor_pattern, float(rng.uniform(0.15, 0.5)), seed=int(rng.integers(1 << 30)))
    ceiling = Material((0.85, 0.85, 0.83))

    walls = [  # (axis, value, lo, hi) of the four walls: x=0, x=W, y=0, y=D
        (0, 0.0, (0.0, 0.0), (dp, h)),
        (0, w, (0.0, 0.0), (dp, h)),
        (1, 0.0, (0.0, 0.0), (w, h)),
        (1, dp, (0.0, 0.0), (w, h)),
    ]
    window_wall = int(rng.integers(4)) if rng.random() < window_prob else -1
    prims: list[Primitive] = [Rect(2, 0.0, (0, 0), (w, dp), ids(), floor)]
    for k, (axis, value, lo, hi) in enumerate(walls):
        holes = []
        if k == window_wall:
            length = hi[0]
            ww = rng.uniform(0.6, min(2.0, length - 0.4))
            c = rng.uniform(0.2 + ww / 2, length - 0.2 - ww / 2)
            sill = rng.uniform(0.8, 1.1)
            holes.append(((c - ww / 2, sill), (c + ww / 2, min(sill + rng.uniform(0.8, 1.3), h - 0.15))))
        prims.append(Rect(axis, value, lo, hi, ids(), wall, holes))
    ceil_holes = []
    if rng.random() < skylight_prob:
        sx, sy = rng.uniform(0.6, 1.5), rng.uniform(0.6, 1.5)
        cx, cy = rng.uniform(sx, w - sx), rng.uniform(sy, dp - sy)
        ceil_holes.append(((cx - sx / 2, cy - sy / 2), (cx + sx / 2, cy + sy / 2)))
    prims.append(Rect(2, h, (0, 0), (w, dp), ids(), ceiling, ceil_holes))

    poses = [_camera_path(rng, (w, dp, h), n_frames) for _ in range(n_cameras)]
    keep_clear = np.array([p.position[:2] for cam in poses for p in cam])

    lights = [PointLight((w / 2, dp / 2, h - 0.3), tuple(float(c) for c in rng.uniform(5.0, 9.0) * np.ones(3)))]
    placed: list[tuple[float, float, float]] = []
    n_items = int(rng.integers(4, 10))
    for _ in range(n_items):
        kind = str(rng.choice(_FURNITURE_KINDS, p=_FURNITURE_WEIGHTS / _FURNITURE_WEIGHTS.sum()))
        for _attempt in range(25):
            probe = np.random.default_rng(int(rng.integers(1 << 62)))
            if kind in _AGAINST_WALL:
                side = int(probe.integers(4))
                yaw = [-(math.pi / 2), math.pi / 2, 0.0, math.pi][side]  # local -y (the back) faces the wall
                if side < 2:
                    x, y = (0.0 if side == 0 else w), probe.uniform(0.8, dp - 0.8)
                else:
                    x, y = probe.uniform(0.8, w - 0.8), (0.0 if side == 2 else dp)
            else:
                x, y, yaw = probe.uniform(0.4, w - 0.4), probe.uniform(0.4, dp - 0.4), probe.uniform(0, 2 * math.pi)
            new, new_lights, radius, (x, y) = _furniture(kind, x, y, yaw, h, probe, _Ids())
            clear_cam = np.min(np.hypot(keep_clear[:, 0] - x, keep_clear[:, 1] - y)) > radius + 0.8
            clear_items = all(math.hypot(px - x, py - y) > radius + pr + 0.05 for px, py, pr in placed)
            if clear_cam and clear_items:
                # Re-issue entity ids from the scene counter so ids stay unique and deterministic.
                for prim in new:
                    prim.entity_id = ids()
                prims.extend(new)
                lights.extend(new_lights)
                placed.append((x, y, radius))
                break
    # Aim each trajectory at a piece of furniture (when there is one) so views show more than bare walls.
    if placed:
        for ci, cam in enumerate(poses):
            tx, ty, _ = placed[int(rng.integers(len(placed)))]
            if rng.random() < 0.35:  # keep some views of the room at large (and of its windows)
                continue
            x0, y0, z0 = cam[0].position
            yaw0 = math.atan2(-(tx - x0), ty - y0) + rng.uniform(-0.3, 0.3)
            pitch = -math.atan2(z0 - 0.5, math.hypot(tx - x0, ty - y0)) * rng.uniform(0.5, 0.9)
            rate = cam[1].yaw - cam[0].yaw if len(cam) > 1 else 0.0
            poses[ci] = [CameraPose(p.position, yaw0 + k * rate, pitch) for k, p in enumerate(cam)]
    if rng.random() < 0.6:  # a second ceiling light off centre
        lights.append(
            PointLight(
                (rng.uniform(0.5, w - 0.5), rng.uniform(0.5, dp - 0.5), h - 0.25),
                tuple(float(c) for c in rng.uniform(2.0, 5.0) * np.array([1.0, 0.95, 0.85])),
            )
        )
    ambient = tuple(float(c) for c in rng.uniform(0.15, 0.3) * np.array([1.0, 0.98, 0.95]))
    return Scene(prims, lights, ambient=ambient), poses


# --------------------------------------------------------------------------------------------------------------------
# Street scenes
# --------------------------------------------------------------------------------------------------------------------
_FACADE_COLORS = [(0.55, 0.3, 0.22), (0.7, 0.68, 0.62), (0.6, 0.55, 0.45), (0.45, 0.45, 0.48), (0.75, 0.65, 0.5)]
_CAR_COLORS = [(0.6, 0.05, 0.05), (0.05, 0.1, 0.4), (0.8, 0.8, 0.82), (0.08, 0.08, 0.09), (0.4, 0.42, 0.45)]
_STREET_LENGTH = 240.0


@dataclass(frozen=True)
class StreetLayout:
    """Geometry facts of a street scene that cameras need: road half width, driving-lane x and start of the route."""

    road_half_width: float
    lane_x: float
    start_y: float
    speed: float


def _street_lighting(variation: str, rng: np.random.Generator) -> dict[str, Any]:
    """Sun, ambient and sky radiance for a Virtual KITTI 2 style variation (clone lighting for the deg-* ones)."""
    az = rng.uniform(0, 2 * math.pi)
    if variation == "morning":
        elev, sun, amb, zen, hor = 0.25, (3.2, 2.6, 1.8), (0.5, 0.5, 0.55), (0.35, 0.5, 0.8), (0.95, 0.85, 0.7)
    elif variation == "sunset":
        elev, sun, amb, zen, hor = 0.08, (3.0, 1.6, 0.7), (0.35, 0.28, 0.3), (0.25, 0.25, 0.5), (1.2, 0.6, 0.3)
    elif variation == "overcast":
        elev, sun, amb, zen, hor = 0.8, (0.0, 0.0, 0.0), (1.3, 1.3, 1.35), (0.8, 0.82, 0.85), (1.0, 1.0, 1.02)
    else:  # clone, 15-deg-left, 15-deg-right
        elev, sun, amb, zen, hor = 0.75, (3.5, 3.3, 3.0), (0.55, 0.6, 0.7), (0.25, 0.45, 0.9), (0.75, 0.85, 1.0)
    sun_dir = (math.cos(elev) * math.cos(az), math.cos(elev) * math.sin(az), math.sin(elev))
    return {"sun_direction": sun_dir, "sun_color": sun, "ambient": amb, "sky_zenith": zen, "sky_horizon": hor}


def make_street_scene(rng: np.random.Generator) -> tuple[list[Primitive], StreetLayout]:
    """Geometry of a street along +y: road with lane marks, pavements, facades, parked cars, poles and trees.

    Lighting is chosen per view with :func:`street_scene_with_lighting` so that variations share geometry.

    Args:
        rng: Random generator of this scene.

    Returns:
        The primitives and the street layout.
    """
    ids = _Ids()
    half = rng.uniform(5.0, 7.0)  # two driving lanes plus a parking strip on each side
    pave = rng.uniform(2.0, 4.0)
    y0, y1 = -30.0, _STREET_LENGTH
    prims: list[Primitive] = [
        Rect(2, 0.0, (-half, y0), (half, y1), ids(), Material((0.16, 0.16, 0.17), (0.85, 0.85, 0.8), "road", half)),
        Rect(
            2,
            -0.02,
            (-400.0, -100.0),
            (400.0, 600.0),
            ids(),
            Material((0.2, 0.32, 0.1), (0.3, 0.4, 0.15), "grass", 2.0, seed=int(rng.integers(1 << 30))),
        ),
    ]
    curb = Material((0.5, 0.5, 0.48), (0.35, 0.35, 0.35), "checker", 1.0)
    for side in (-1, 1):
        xc = side * (half + pave / 2)
        prims.append(Box((xc, (y0 + y1) / 2, 0.075), (pave / 2, (y1 - y0) / 2, 0.075), 0.0, ids(), curb, False))
        # Building facades, with gaps that show the grass and sky behind.
        y = y0
        while y < y1:
            length = rng.uniform(8.0, 30.0)
            if rng.random() < 0.85:
                height, depth = rng.uniform(6.0, 24.0), rng.uniform(8.0, 15.0)
                setback = rng.uniform(0.0, 2.0)
                color = np.asarray(_FACADE_COLORS[rng.integers(len(_FACADE_COLORS))]) * rng.uniform(0.8, 1.1)
                glass = (0.12, 0.16, 0.22) if rng.random() < 0.7 else (0.35, 0.4, 0.45)
                mat = Material(tuple(color.tolist()), glass, "windows", seed=int(rng.integers(1 << 30)))
                xb = side * (half + pave + setback + depth / 2)
                prims.append(
                    Box((xb, y + length / 2, height / 2), (depth / 2, length / 2, height / 2), 0.0, ids(), mat)
                )
            y += length + (rng.uniform(2.0, 8.0) if rng.random() < 0.35 else 0.0)
        # Poles (street lamps) and trees along the pavement edge.
        y = y0 + rng.uniform(0, 10)
        while y < y1:
            xp = side * (half + 0.4)
            if rng.random() < 0.6:
                ph = rng.uniform(5.0, 8.0)
                prims.append(Cylinder((xp, y, 0.0), 0.09, ph, ids(), Material((0.3, 0.3, 0.32))))
            else:
                trunk = rng.uniform(2.0, 3.5)
                prims.append(Cylinder((xp, y, 0.0), 0.15, trunk, ids(), Material((0.3, 0.2, 0.12))))
                crown = Material((0.1, 0.3, 0.08), (0.25, 0.45, 0.12), "noise", 0.8, seed=int(rng.integers(1 << 30)))
                prims.append(Sphere((xp, y, trunk + 1.2), rng.uniform(1.2, 2.0), ids(), crown))
            y += rng.uniform(12.0, 30.0)
    # Cars: parked along both edges and some driving in the lanes ahead.
    parking = 2.2
    lane_x = (half - parking) / 2  # centre of the right driving lane
    for side in (-1, 1):
        y = y0 + rng.uniform(0, 15)
        while y < y1:
            if rng.random() < 0.55:
                _add_car(prims, ids, rng, side * (half - 1.1), y, 0.0)
            y += rng.uniform(5.5, 14.0)
    # Oncoming traffic in the left lane only, so the moving camera never drives into a car.
    for _ in range(int(rng.integers(1, 5))):
        _add_car(prims, ids, rng, -lane_x + rng.uniform(-0.3, 0.3), rng.uniform(0.0, 150.0), rng.uniform(-0.05, 0.05))
    return prims, StreetLayout(half, lane_x, rng.uniform(-5.0, 5.0), rng.uniform(0.6, 1.2))


def _add_car(prims: list[Primitive], ids: _Ids, rng: np.random.Generator, x: float, y: float, yaw: float) -> None:
    """A car-like object: body box, cabin box with darker glass, dark chassis (heading along y, turned by yaw)."""
    color = np.asarray(_CAR_COLORS[rng.integers(len(_CAR_COLORS))]) * rng.uniform(0.8, 1.2)
    paint = Material(tuple(np.clip(color, 0, 1).tolist()))
    glass = Material((0.08, 0.1, 0.12))
    ln, wd = rng.uniform(3.8, 4.8), rng.uniform(1.7, 1.9)
    prims.append(Box((x, y, 0.2), (wd / 2 - 0.05, ln / 2 - 0.1, 0.15), yaw, ids(), Material((0.05, 0.05, 0.05))))
    prims.append(Box((x, y, 0.72), (wd / 2, ln / 2, 0.37), yaw, ids(), paint))
    cy = y - rng.uniform(0.0, 0.4)
    prims.append(Box((x, cy, 1.3), (wd / 2 - 0.12, ln / 4 + 0.1, 0.22), yaw, ids(), glass))


def street_scene_with_lighting(prims: list[Primitive], variation: str, rng: np.random.Generator) -> Scene:
    """Wrap street geometry in the lighting of a variation (``clone``, ``morning``, ``sunset``, ``overcast`` ...)."""
    return Scene(prims, [], **_street_lighting(variation, rng))


def _street_pose(layout: StreetLayout, frame: int, yaw_deg: float, camera: str | None) -> CameraPose:
    """Pose of the driving camera at ``frame`` (moving along +y), turned by ``yaw_deg``; Camera_1 is the right eye."""
    # Long sequences loop over the first 150 m so the camera stays on the modelled street.
    y = layout.start_y + (frame * layout.speed) % 150.0
    pose = CameraPose((layout.lane_x, y, 1.65), math.radians(yaw_deg), -0.01)
    return pose.shifted(VKITTI_BASELINE) if camera == "Camera_1" else pose


# --------------------------------------------------------------------------------------------------------------------
# Cached per-process scene construction (each worker builds a scene once and renders many frames of it)
# --------------------------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def _indoor_cached(
    seed: int, dataset: str, split: str, index: int, n_cameras: int, n_frames: int
) -> tuple[Scene, list[list[CameraPose]]]:
    return make_indoor_scene(scene_rng(seed, dataset, split, index), n_cameras, n_frames)


@functools.lru_cache(maxsize=8)
def _street_cached(seed: int, dataset: str, split: str, index: int) -> tuple[list[Primitive], StreetLayout]:
    return make_street_scene(scene_rng(seed, dataset, split, index))


def render_hypersim_frame(
    seed: int,
    split: str,
    scene_index: int,
    camera_index: int,
    frame: int,
    n_cameras: int,
    n_frames: int,
    width: int,
    height: int,
    dataset: str = "hypersim",
    camera: PinholeCamera | None = None,
) -> RenderedFrame:
    """Render frame ``frame`` of camera ``camera_index`` in indoor scene ``scene_index`` of ``split``.

    Args:
        seed: Base seed.
        split: ``train``, ``val`` or ``test``.
        scene_index: Scene index within the split.
        camera_index: Camera trajectory index (< n_cameras).
        frame: Frame index (< n_frames).
        n_cameras: Trajectories in the scene (part of the scene's identity: the furniture avoids all of them).
        n_frames: Frames per trajectory.
        width: Image width in pixels.
        height: Image height in pixels.
        dataset: Random-stream namespace (``hypersim`` or ``nyuv2``).
        camera: Intrinsics; default Hypersim's 60 degree camera at this size.

    Returns:
        The rendered frame.
    """
    scene, poses = _indoor_cached(seed, dataset, split, scene_index, n_cameras, n_frames)
    cam = camera if camera is not None else hypersim_camera(width, height)
    return render(scene, cam, poses[camera_index][frame])


def render_street_frame(
    seed: int,
    dataset: str,
    split: str,
    scene_index: int,
    frame: int,
    camera: PinholeCamera,
    variation: str = "clone",
    stereo_camera: str | None = None,
) -> RenderedFrame:
    """Render one driving view: scene geometry from the seed, lighting and heading from the variation.

    Args:
        seed: Base seed.
        dataset: Random-stream namespace (``vkitti2`` or ``kitti``).
        split: ``train``, ``val`` or ``test``.
        scene_index: Scene index within the split.
        frame: Frame index along the drive (the camera advances ``speed`` metres per frame).
        camera: Intrinsics.
        variation: A Virtual KITTI 2 variation; ``15-deg-left``/``15-deg-right`` turn the camera by ±15 degrees.
        stereo_camera: ``Camera_1`` shifts the camera right by the stereo baseline; anything else is Camera_0.

    Returns:
        The rendered frame.
    """
    prims, layout = _street_cached(seed, dataset, split, scene_index)
    light_rng = scene_rng(seed, dataset, split, scene_index)
    # The turned-camera variations keep the clone lighting, as in Virtual KITTI 2.
    look = "clone" if variation.startswith("15-deg") else variation
    light_rng = np.random.default_rng(light_rng.integers(1 << 62) + VKITTI_VARIATIONS.index(look) + 1)
    scene = street_scene_with_lighting(prims, variation, light_rng)
    yaw = {"15-deg-left": 15.0, "15-deg-right": -15.0}.get(variation, 0.0)
    return render(scene, camera, _street_pose(layout, frame, yaw, stereo_camera))


# --------------------------------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------------------------------
def _map(fn: Callable[[Any], Any], tasks: Sequence[Any], workers: int, desc: str, progress: bool) -> list[Any]:
    """Run ``fn`` over ``tasks`` in order, in a process pool when ``workers > 1``, with a tqdm bar."""
    bar = functools.partial(tqdm, total=len(tasks), desc=desc, disable=not progress, unit="frame", leave=False)
    if workers <= 1 or len(tasks) <= 1:
        return [fn(t) for t in bar(tasks)]
    # Fork keeps start-up cheap (no re-import per worker); the workers only use numpy/h5py/PIL.
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
    chunk = max(1, len(tasks) // (workers * 16))
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        return list(bar(pool.map(fn, tasks, chunksize=chunk)))


def _check_size(name: str, width: int, height: int) -> None:
    if width < 8 or height < 8:
        raise ValueError(f"{name} resolution must be at least 8x8, got {width}x{height}")


def _save_png16(path: Path, arr: np.ndarray) -> None:
    """Save a uint16 [H, W] array as a 16-bit greyscale PNG."""
    Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint16)).save(path)


def _write_h5(path: Path, arr: np.ndarray) -> None:
    """Write ``arr`` under key ``"dataset"`` as Hypersim does (gzip, deterministic bytes)."""
    with h5py.File(path, "w") as f:
        f.create_dataset("dataset", data=arr, compression="gzip", compression_opts=1)


def hypersim_scene_names(n_train: int, n_val: int, n_test: int) -> dict[str, list[str]]:
    """Disjoint Hypersim-style scene names ``ai_VVV_NNN`` for each split (10 scenes per volume)."""
    names: dict[str, list[str]] = {}
    i = 0
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        names[split] = []
        for _ in range(n):
            names[split].append(f"ai_{i // 10 + 1:03d}_{i % 10 + 1:03d}")
            i += 1
    return names


def _hypersim_task(task: tuple[Any, ...]) -> None:
    """Worker: render one Hypersim frame and write its three HDF5 files (colour skipped for 'missing' frames)."""
    root, seed, split, si, scene, ci, fi, n_cam, n_fr, width, height, drop_color = task
    frame = render_hypersim_frame(seed, split, si, ci, fi, n_cam, n_fr, width, height)
    img_dir = Path(root) / scene / "images"
    final = img_dir / f"scene_cam_{ci:02d}_final_hdf5"
    geom = img_dir / f"scene_cam_{ci:02d}_geometry_hdf5"
    final.mkdir(parents=True, exist_ok=True)
    geom.mkdir(parents=True, exist_ok=True)
    if not drop_color:
        # Hypersim stores colour as float16 HDR radiance; depth here is float32 so 1 mm survives the round trip.
        _write_h5(final / f"frame.{fi:04d}.color.hdf5", frame.radiance.astype(np.float16))
    dist = np.where(frame.entity_id >= 0, frame.distance, np.nan).astype(np.float32)  # Hypersim: NaN where no geometry
    _write_h5(geom / f"frame.{fi:04d}.depth_meters.hdf5", dist)
    _write_h5(geom / f"frame.{fi:04d}.render_entity_id.hdf5", frame.entity_id.astype(np.int32))


def write_hypersim_raw(
    out_dir: str | os.PathLike[str],
    seed: int = 0,
    scenes: tuple[int, int, int] = (8, 2, 2),
    cameras_per_scene: int = 2,
    frames_per_camera: int = 8,
    width: int = 128,
    height: int = 96,
    missing_frames: int = 0,
    workers: int = 1,
    progress: bool = True,
) -> Path:
    """Write procedural indoor frames in the raw Hypersim layout with its split CSV.

    Per scene, one extra CSV row (camera 0, the frame after the last) is marked
    ``included_in_public_release = False`` and has no files, as unreleased Hypersim frames do.

    Args:
        out_dir: Destination (e.g. ``sample_data/hypersim_raw``).
        seed: Base seed.
        scenes: Number of scenes in (train, val, test).
        cameras_per_scene: Camera trajectories per scene (``cam_00``, ``cam_01`` ...).
        frames_per_camera: Frames per trajectory.
        width: Image width (Hypersim: 1024).
        height: Image height (Hypersim: 768).
        missing_frames: Number of released train frames whose ``color.hdf5`` is left out, imitating the known
            Hypersim defect of missing files.
        workers: Processes used for rendering.
        progress: Show a tqdm bar.

    Returns:
        Path of the written ``metadata_images_split_scene_v1.csv``.
    """
    _check_size("Hypersim", width, height)
    if min(scenes) < 0 or cameras_per_scene < 1 or frames_per_camera < 1:
        raise ValueError(
            f"need scenes >= 0, cameras >= 1, frames >= 1; got {scenes}, {cameras_per_scene}, {frames_per_camera}"
        )
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    names = hypersim_scene_names(*scenes)
    rows: list[tuple[str, str, int, bool, str, str]] = []
    tasks = []
    dropped = 0
    for split in ("train", "val", "test"):
        for si, scene in enumerate(names[split]):
            for ci in range(cameras_per_scene):
                for fi in range(frames_per_camera):
                    drop = split == "train" and dropped < missing_frames
                    dropped += int(drop)
                    tasks.append(
                        (
                            str(root),
                            seed,
                            split,
                            si,
                            scene,
                            ci,
                            fi,
                            cameras_per_scene,
                            frames_per_camera,
                            width,
                            height,
                            drop,
                        )
                    )
                    rows.append((scene, f"cam_{ci:02d}", fi, True, "", split))
            rows.append((scene, "cam_00", frames_per_camera, False, "not released (synthetic sample)", split))
    _map(_hypersim_task, tasks, workers, "hypersim raw", progress)
    csv_path = root / "metadata_images_split_scene_v1.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(HYPERSIM_CSV_COLUMNS)
        for scene, cam, fi, inc, reason, split in rows:
            writer.writerow([scene, cam, fi, "True" if inc else "False", reason, split])
    return csv_path


def _vkitti_task(task: tuple[Any, ...]) -> None:
    """Worker: render one Virtual KITTI 2 view and write its JPEG and uint16-centimetre depth PNG."""
    root, seed, split, si, scene, variation, cam, fi, width, height = task
    frame = render_street_frame(seed, "vkitti2", split, si, fi, VKITTI_CAMERA.scaled(width, height), variation, cam)
    rgb_dir = Path(root) / "rgb" / scene / variation / "frames" / "rgb" / cam
    dep_dir = Path(root) / "depth" / scene / variation / "frames" / "depth" / cam
    rgb_dir.mkdir(parents=True, exist_ok=True)
    dep_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(frame.rgb).save(rgb_dir / f"rgb_{fi:05d}.jpg", quality=95)
    # Centimetres; the sky (no geometry) and anything beyond the range saturate at 65535 = 655.35 m as in VKITTI 2.
    cm = np.where(frame.entity_id >= 0, np.round(frame.depth * 100.0), 65535.0)
    _save_png16(dep_dir / f"depth_{fi:05d}.png", np.clip(cm, 0, 65535).astype(np.uint16))


def write_vkitti2(
    out_dir: str | os.PathLike[str],
    seed: int = 0,
    frames_per_sequence: int = 2,
    width: int = 416,
    height: int = 128,
    variations: Sequence[str] = VKITTI_VARIATIONS,
    workers: int = 1,
    progress: bool = True,
) -> tuple[Path, Path]:
    """Write procedural street frames in Virtual KITTI 2's layout plus Marigold's two list files.

    Train = Scenes 02/06/18/20, val = Scene01, each × ``variations`` × Camera_0/1 × ``frames_per_sequence``
    (all variations of a scene share geometry and trajectory, as in VKITTI 2). ``textgt/<scene>/<variation>/
    intrinsic.txt`` holds the intrinsics scaled to ``width`` x ``height``.

    Args:
        out_dir: Destination root (e.g. ``sample_data/vkitti2``), gets ``rgb/``, ``depth/``, ``textgt/``.
        seed: Base seed.
        frames_per_sequence: Frames per scene × variation × camera.
        width: Image width (VKITTI 2: 1242).
        height: Image height (VKITTI 2: 375).
        variations: Subset of :data:`VKITTI_VARIATIONS`.
        workers: Processes used for rendering.
        progress: Show a tqdm bar.

    Returns:
        Paths of ``vkitti_train.txt`` and ``vkitti_val.txt``.
    """
    _check_size("VKITTI", width, height)
    unknown = [v for v in variations if v not in VKITTI_VARIATIONS]
    if unknown or frames_per_sequence < 1:
        raise ValueError(
            f"variations must be from {VKITTI_VARIATIONS} and frames >= 1; got {list(variations)}, "
            f"{frames_per_sequence}"
        )
    root = Path(out_dir)
    cam = VKITTI_CAMERA.scaled(width, height)
    tasks, lists = [], {"train": [], "val": []}
    for split, scenes in VKITTI_SCENES.items():
        for si, scene in enumerate(scenes):
            for variation in variations:
                intr = root / "textgt" / scene / variation / "intrinsic.txt"
                intr.parent.mkdir(parents=True, exist_ok=True)
                lines = ["frame cameraID K[0,0] K[1,1] K[0,2] K[1,2]"]
                for fi in range(frames_per_sequence):
                    for c in (0, 1):
                        lines.append(f"{fi} {c} {cam.fx:.4f} {cam.fy:.4f} {cam.cx:.4f} {cam.cy:.4f}")
                intr.write_text("\n".join(lines) + "\n")
                for camera in ("Camera_0", "Camera_1"):
                    for fi in range(frames_per_sequence):
                        tasks.append((str(root), seed, split, si, scene, variation, camera, fi, width, height))
                        lists[split].append(
                            f"rgb/{scene}/{variation}/frames/rgb/{camera}/rgb_{fi:05d}.jpg "
                            f"depth/{scene}/{variation}/frames/depth/{camera}/depth_{fi:05d}.png"
                        )
    _map(_vkitti_task, tasks, workers, "vkitti2", progress)
    paths = []
    for split in ("train", "val"):
        path = root / f"vkitti_{split}.txt"
        path.write_text("\n".join(lists[split]))  # Marigold's lists have no final newline
        paths.append(path)
    return paths[0], paths[1]


_NYU_SCENES = ("kitchen", "bedroom", "living_room", "office", "bathroom", "dining_room", "classroom", "study")


def _nyu_task(task: tuple[Any, ...]) -> None:
    """Worker: render one NYUv2-like frame; write RGB, raw depth with Kinect-like holes and a hole-filled depth."""
    root, seed, si, fi_in_scene, n_frames, scene, index, width, height = task
    cam = NYU_CAMERA.scaled(width, height)
    frame = render_hypersim_frame(seed, "test", si, 0, fi_in_scene, 1, n_frames, width, height, "nyuv2", cam)
    depth = np.where(frame.entity_id >= 0, frame.depth, 0.0)
    rng = np.random.default_rng([seed, si, fi_in_scene])
    raw = depth.copy()
    raw[raw > 10.0] = 0.0  # beyond the Kinect's range
    # Holes at depth discontinuities (the projector's shadow) and a few random dropout blobs.
    from scipy import ndimage

    edges = ndimage.maximum_filter(depth, size=3) - ndimage.minimum_filter(depth, size=3) > 0.25
    raw[ndimage.binary_dilation(edges, iterations=max(1, width // 160))] = 0.0
    # Irregular dropout patches (specular or dark surfaces): thresholded smooth noise.
    yy, xx = np.mgrid[:height, :width] / max(width, height)
    blobs = _noise(xx * 4.0, yy * 4.0, 1.0, int(rng.integers(1 << 30)))
    raw[blobs > np.quantile(blobs, 1.0 - rng.uniform(0.005, 0.03))] = 0.0
    # "Filled" map: every hole takes the value of its nearest measured pixel.
    valid = raw > 0
    if valid.any():
        idx = ndimage.distance_transform_edt(~valid, return_distances=False, return_indices=True)
        filled = raw[idx[0], idx[1]]
    else:
        filled = raw
    out = Path(root) / "test" / scene
    out.mkdir(parents=True, exist_ok=True)
    Image.fromarray(frame.rgb).save(out / f"rgb_{index:04d}.png")
    _save_png16(out / f"depth_{index:04d}.png", np.round(np.clip(raw * 1000.0, 0, 65535)).astype(np.uint16))
    _save_png16(out / f"filled_{index:04d}.png", np.round(np.clip(filled * 1000.0, 0, 65535)).astype(np.uint16))


def write_nyuv2(
    out_dir: str | os.PathLike[str],
    seed: int = 0,
    num_frames: int = 8,
    width: int = 320,
    height: int = 240,
    frames_per_scene: int = 2,
    workers: int = 1,
    progress: bool = True,
) -> Path:
    """Write NYUv2-like indoor test frames: ``test/<scene>/{rgb,depth,filled}_NNNN.png`` (depth uint16 mm).

    Raw depth has holes (0) at depth edges, in random blobs, beyond 10 m and where nothing is hit; the filled
    map closes them with the nearest measured value. Intrinsics are NYUv2's Kinect scaled to the size.

    Args:
        out_dir: Destination root (e.g. ``sample_data/nyuv2``).
        seed: Base seed.
        num_frames: Number of frames.
        width: Image width (NYUv2: 640).
        height: Image height (NYUv2: 480).
        frames_per_scene: Frames per scene (scenes are named ``kitchen_0004``-style).
        workers: Processes used for rendering.
        progress: Show a tqdm bar.

    Returns:
        Path of ``filename_list_test.txt``.
    """
    _check_size("NYUv2", width, height)
    if num_frames < 1 or frames_per_scene < 1:
        raise ValueError(f"num_frames and frames_per_scene must be >= 1, got {num_frames}, {frames_per_scene}")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    tasks, lines = [], []
    for k in range(num_frames):
        si, fi = divmod(k, frames_per_scene)
        scene = f"{_NYU_SCENES[si % len(_NYU_SCENES)]}_{4 + 3 * si:04d}"
        index = k + 1
        tasks.append((str(root), seed, si, fi, frames_per_scene, scene, index, width, height))
        lines.append(
            f"test/{scene}/rgb_{index:04d}.png test/{scene}/depth_{index:04d}.png test/{scene}/filled_{index:04d}.png"
        )
    _map(_nyu_task, tasks, workers, "nyuv2", progress)
    path = root / "filename_list_test.txt"
    path.write_text("\n".join(lines))
    return path


_KITTI_DRIVES = (
    "2011_09_26_drive_0002_sync",
    "2011_09_26_drive_0009_sync",
    "2011_09_26_drive_0013_sync",
    "2011_09_26_drive_0020_sync",
    "2011_09_26_drive_0023_sync",
    "2011_09_26_drive_0027_sync",
    "2011_09_28_drive_0002_sync",
    "2011_09_29_drive_0071_sync",
    "2011_09_30_drive_0016_sync",
    "2011_10_03_drive_0047_sync",
)


def lidar_mask(frame: RenderedFrame, pose: CameraPose, rng: np.random.Generator, keep: float = 0.35) -> np.ndarray:
    """Pixels a Velodyne HDL-64-like scanner would measure: 64 beams from +2 to -24.8 degrees, random dropout.

    Args:
        frame: Rendered view (its world hit points are used).
        pose: Camera pose; the scanner sits 0.08 m above the camera.
        rng: Random generator for the dropout.
        keep: Fraction of in-beam pixels kept (KITTI's ground truth is sparse even after accumulation).

    Returns:
        bool [H, W], True where a depth value is recorded.
    """
    h, w = frame.depth.shape
    p = frame.points
    lidar = np.asarray(pose.position).reshape(3, 1) + np.array([[0.0], [0.0], [0.08]])
    q = p - lidar
    elev = np.degrees(np.arctan2(q[2], np.hypot(q[0], q[1])))
    beams = np.linspace(2.0, -24.8, 64)
    spacing = abs(beams[1] - beams[0])
    nearest = np.clip(np.round((2.0 - elev) / spacing), 0, 63)
    on_beam = np.abs(elev - (2.0 - nearest * spacing)) < 0.35 * spacing
    on_beam &= (elev <= 2.0 + 0.35 * spacing) & (elev >= -24.8 - 0.35 * spacing)
    mask = on_beam.reshape(h, w) & np.isfinite(frame.depth) & (frame.depth < 100.0) & (frame.entity_id >= 0)
    return mask & (rng.random((h, w)) < keep)


def _kitti_task(task: tuple[Any, ...]) -> None:
    """Worker: render one KITTI-like frame; write the RGB PNG and (unless ``with_gt`` is False) sparse GT."""
    root, seed, si, fi, drive, frame_id, width, height, with_gt = task
    cam = KITTI_CAMERA.scaled(width, height)
    frame = render_street_frame(seed, "kitti", "test", si, fi, cam, "clone", None)
    date = drive[:10]
    rgb_dir = Path(root) / date / drive / "image_02" / "data"
    rgb_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(frame.rgb).save(rgb_dir / f"{frame_id:010d}.png")
    if with_gt:
        _, layout = _street_cached(seed, "kitti", "test", si)
        mask = lidar_mask(frame, _street_pose(layout, fi, 0.0, None), np.random.default_rng([seed, si, fi]))
        gt = np.where(mask, np.round(frame.depth * 256.0), 0.0)
        gt_dir = Path(root) / drive / "proj_depth" / "groundtruth" / "image_02"
        gt_dir.mkdir(parents=True, exist_ok=True)
        _save_png16(gt_dir / f"{frame_id:010d}.png", np.clip(gt, 0, 65535).astype(np.uint16))


def write_kitti(
    out_dir: str | os.PathLike[str],
    seed: int = 0,
    num_frames: int = 8,
    width: int = 416,
    height: int = 128,
    frames_per_drive: int = 2,
    num_without_gt: int = 1,
    workers: int = 1,
    progress: bool = True,
) -> Path:
    """Write KITTI-like Eigen-test frames: RGB PNGs, sparse LiDAR-like uint16 (/256 m) ground truth, the list.

    The list ``eigen_test_files_with_gt.txt`` has "rgb depth focal" rows, the focal scaled to ``width``; the last
    ``num_without_gt`` rows have depth ``None`` and no ground-truth file, as 45 rows of the real list do.

    Args:
        out_dir: Destination root (e.g. ``sample_data/kitti``).
        seed: Base seed.
        num_frames: Number of frames (rows).
        width: Image width (KITTI: ~1242).
        height: Image height (KITTI: ~375).
        frames_per_drive: Consecutive frames per drive (scene).
        num_without_gt: Rows whose depth is ``None``.
        workers: Processes used for rendering.
        progress: Show a tqdm bar.

    Returns:
        Path of ``eigen_test_files_with_gt.txt``.
    """
    _check_size("KITTI", width, height)
    if num_frames < 1 or frames_per_drive < 1 or not 0 <= num_without_gt <= num_frames:
        raise ValueError(
            f"need num_frames >= 1, frames_per_drive >= 1, 0 <= num_without_gt <= num_frames; got "
            f"{num_frames}, {frames_per_drive}, {num_without_gt}"
        )
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    cam = KITTI_CAMERA.scaled(width, height)
    tasks, lines = [], []
    for k in range(num_frames):
        si, fi = divmod(k, frames_per_drive)
        drive = _KITTI_DRIVES[si % len(_KITTI_DRIVES)]
        if si >= len(_KITTI_DRIVES):  # more drives than names: keep them distinct
            drive = drive.replace("_sync", f"{si // len(_KITTI_DRIVES)}_sync")
        frame_id = 69 + 10 * fi
        with_gt = k < num_frames - num_without_gt
        tasks.append((str(root), seed, si, fi, drive, frame_id, width, height, with_gt))
        depth = f"{drive}/proj_depth/groundtruth/image_02/{frame_id:010d}.png" if with_gt else "None"
        lines.append(f"{drive[:10]}/{drive}/image_02/data/{frame_id:010d}.png {depth} {cam.fx:.4f}")
    _map(_kitti_task, tasks, workers, "kitti", progress)
    path = root / "eigen_test_files_with_gt.txt"
    path.write_text("\n".join(lines))
    return path


def iter_split_rows(path: str | os.PathLike[str]) -> Iterable[list[str]]:
    """Whitespace-split rows of a Marigold-style list file, skipping blank lines."""
    with open(path) as f:
        for line in f:
            if line.strip():
                yield line.split()
