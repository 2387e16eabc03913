"""Indoor rooms (the Hypersim and NYUv2 stand-ins): walls, floor, ceiling, furniture, lamps and camera paths.

Walls, floor, ceiling, box furniture, spheres, cylinders; procedural albedo; point lights with hard shadows; an
optional window hole or skylight through which rays hit nothing (entity id -1, the invalid pixels of Hypersim,
whose ``render_entity_id`` is -1 where there is no geometry).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from d3epth.data.synthetic.geometry import (
    Box,
    CameraPose,
    Cylinder,
    Material,
    PinholeCamera,
    PointLight,
    Primitive,
    Rect,
    Scene,
    Sphere,
    _Ids,
    hypersim_camera,
    scene_rng,
)
from d3epth.data.synthetic.render import RenderedFrame, render

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
# Cached per-process scene construction (each worker builds a scene once and renders many frames of it)
# --------------------------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def _indoor_cached(
    seed: int, dataset: str, split: str, index: int, n_cameras: int, n_frames: int
) -> tuple[Scene, list[list[CameraPose]]]:
    return make_indoor_scene(scene_rng(seed, dataset, split, index), n_cameras, n_frames)


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
