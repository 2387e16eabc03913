"""Vectorised ray casting of a :class:`~d3epth.data.synthetic.geometry.Scene` in numpy (no external renderer).

Every pixel's ray distance and planar depth come from analytic ray/primitive intersections, not from an estimate.
Shading: procedural checker/stripe/plank/noise albedo, point lights and a sun with hard shadows, ambient light and
a sky gradient. Linear HDR radiance is kept, not tone mapped, as Hypersim's ``color.hdf5`` is (Roberts et al.,
"Hypersim", ICCV 2021; ``apple/ml-hypersim`` README); the display ``rgb`` is a simple exposure + gamma.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from d3epth.data.synthetic.geometry import (
    CameraPose,
    Material,
    PinholeCamera,
    Primitive,
    Scene,
    _dot,
)


# --------------------------------------------------------------------------------------------------------------------
# Materials and procedural textures
# --------------------------------------------------------------------------------------------------------------------
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


def _mix(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Linear blend of two colours: a [3] or [3,N], b likewise, t [N] in [0, 1] → [3,N]."""
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
# Scenes and rendering
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class RenderedFrame:
    """One rendered view.

    Attributes:
        rgb: uint8 [H,W,3], display image (exposure + soft clip + gamma 2.2; not Hypersim's tone map).
        radiance: float32 [H,W,3], linear HDR radiance (not tone mapped); 0 where nothing is hit indoors.
        distance: float64 [H,W], ray distance from the optical centre in metres; ``inf`` where nothing is hit.
        depth: float64 [H,W], planar depth (z in the camera frame) in metres; ``inf`` where nothing is hit.
        entity_id: int32 [H,W], id of the visible primitive; -1 where nothing is hit.
        camera: The intrinsics used.
        points: float64 [3,H*W] world hit points (NaN where nothing is hit), for sensor simulation.
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
