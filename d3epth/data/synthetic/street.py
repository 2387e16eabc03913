"""Streets (the Virtual KITTI 2 and KITTI stand-ins): road, pavements, facades, cars, poles, trees and a sky.

Road with lane marks, raised pavements, building facades with windows, car-like boxes, poles, trees, a sun with
shadows and a sky at infinity (entity id -1). Lighting and camera heading follow the Virtual KITTI 2 variations
(Cabon et al., "Virtual KITTI 2", arXiv:2001.10773): ``15-deg-left`` / ``15-deg-right`` turn the camera, the
others relight the same geometry.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from d3epth.data.synthetic.geometry import (
    VKITTI_BASELINE,
    Box,
    CameraPose,
    Cylinder,
    Material,
    PinholeCamera,
    Primitive,
    Rect,
    Scene,
    Sphere,
    _Ids,
    scene_rng,
)
from d3epth.data.synthetic.render import RenderedFrame, render
from d3epth.data.vkitti2 import VARIATIONS as VKITTI_VARIATIONS

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


@functools.lru_cache(maxsize=8)
def _street_cached(seed: int, dataset: str, split: str, index: int) -> tuple[list[Primitive], StreetLayout]:
    return make_street_scene(scene_rng(seed, dataset, split, index))


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
