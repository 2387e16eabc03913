"""Scene geometry of the procedural sample data: random streams, cameras, poses, materials and primitives.

Conventions: world frame x east, y north, z up (metres). Camera frame x right, y down, z forward (OpenCV). Pixel
``u`` has its centre at image-plane coordinate ``u`` and the principal point ``cx`` is given in the same
coordinates, so ``cx = (W - 1) / 2`` is the image centre; for Hypersim this is exactly the image-plane coordinate
``x = u - W/2 + 0.5`` of Marigold's distance-to-depth conversion (Marigold
``script/depth/dataset_preprocess/hypersim/hypersim_util.py``, ``dist_2_depth``).

Determinism: every scene draws from ``numpy.random.SeedSequence(seed, spawn_key=(dataset, split, scene))``, so the
same seed gives identical bytes on disk regardless of the number of workers, and train/val/test (and the
different datasets) use disjoint random streams and disjoint scene names.

Primitives are intersected exactly and vectorised over rays: origins ``o`` ``[3,1]`` or ``[3,N]``, unit directions
``d`` ``[3,N]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

_T_EPS = 1e-6  # minimum ray parameter (metres) so a ray never re-hits the surface it starts on
_DATASET_CODES = {"hypersim": 1, "vkitti2": 2, "nyuv2": 3, "kitti": 4, "eth3d": 5, "scannet": 6, "diode": 7}
_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}

VKITTI_BASELINE = 0.532725
"""Stereo baseline of Virtual KITTI 2 (metres): Camera_1 sits this far to the right of Camera_0."""


# --------------------------------------------------------------------------------------------------------------------
# Random streams
# --------------------------------------------------------------------------------------------------------------------
def scene_rng(seed: int, dataset: str, split: str, index: int) -> np.random.Generator:
    """Random generator of one scene; streams of different datasets, splits or scenes never overlap.

    Args:
        seed: Base seed, a non-negative integer.
        dataset: One of ``hypersim``, ``vkitti2``, ``nyuv2``, ``kitti``, ``eth3d``, ``scannet``, ``diode``.
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
            float64 [3,H*W]; the z component is cos(angle to the optical axis), i.e. depth / distance.
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
        """Camera-to-world rotation, float64 [3,3]; columns are the camera's right, down and forward axes."""
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


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise dot product of [3,N] (or [3,1]) arrays → [N]; cheaper than ``(a * b).sum(axis=0)``."""
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


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
        """Geometric unit normal [3,N] at surface points p [3,N] (orientation is fixed later, towards the ray)."""
        raise NotImplementedError

    def surface_uv(self, p: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Texture coordinates (metres) at points p [3,N] with normals n [3,N]."""
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
        """See :meth:`Primitive.intersect`."""
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (self.value - o[self.axis]) / d[self.axis]
            pa = o[self.a] + t * d[self.a]
            pb = o[self.b] + t * d[self.b]
        ok = (t > _T_EPS) & (pa >= self.lo[0]) & (pa <= self.hi[0]) & (pb >= self.lo[1]) & (pb <= self.hi[1])
        for h0, h1 in self.holes:
            ok &= ~((pa > h0[0]) & (pa < h1[0]) & (pb > h0[1]) & (pb < h1[1]))
        return np.where(ok, t, np.inf)

    def normal(self, p: np.ndarray) -> np.ndarray:
        """See :meth:`Primitive.normal`."""
        n = np.zeros_like(p)
        n[self.axis] = 1.0
        return n

    def surface_uv(self, p: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """See :meth:`Primitive.surface_uv`."""
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
        """See :meth:`Primitive.intersect`."""
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
        """See :meth:`Primitive.normal`."""
        return self._to_world(self._local_normal(self._to_local(p - self.center)))

    def surface_uv(self, p: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """See :meth:`Primitive.surface_uv`."""
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
        """See :meth:`Primitive.intersect`."""
        oc = o - self.center
        b = _dot(oc, d)
        c = _dot(oc, oc) - self.radius**2
        disc = b * b - c
        root = np.sqrt(np.maximum(disc, 0.0))
        t = -b - root
        t = np.where(t > _T_EPS, t, -b + root)
        return np.where((disc >= 0.0) & (t > _T_EPS), t, np.inf)

    def normal(self, p: np.ndarray) -> np.ndarray:
        """See :meth:`Primitive.normal`."""
        return (p - self.center) / self.radius

    def surface_uv(self, p: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """See :meth:`Primitive.surface_uv`."""
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
        """See :meth:`Primitive.intersect`."""
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
        """See :meth:`Primitive.normal`."""
        q = p - self.base
        on_cap = (np.abs(q[2]) < 1e-7) | (np.abs(q[2] - self.height) < 1e-7)
        radial = np.stack([q[0], q[1], np.zeros_like(q[0])]) / self.radius
        cap = np.stack([np.zeros_like(q[0]), np.zeros_like(q[0]), np.ones_like(q[0])])
        return np.where(on_cap, cap, radial)

    def surface_uv(self, p: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """See :meth:`Primitive.surface_uv`."""
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


class _Ids:
    """Entity id counter; ids start at 1 because -1 means "no geometry" (and Marigold asserts ids != 0)."""

    def __init__(self) -> None:
        self.next = 1

    def __call__(self) -> int:
        self.next += 1
        return self.next - 1
