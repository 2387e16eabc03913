"""Procedural 3-D scenes with exact geometry, written in the on-disk layouts of real depth datasets.

Real training and evaluation data (Hypersim, Virtual KITTI 2, NYUv2, KITTI, ETH3D, ScanNet, DIODE) cannot be
downloaded here, so this
package renders stand-ins whose *geometry is exact*: every pixel's ray distance and planar depth come from analytic
ray/primitive intersections, not from an estimate. The images are simple but structured (textured rooms with
furniture and lamps, streets with lanes, pavements, facades, cars and poles) so that depth models have something
to learn and readers have something real to read.

By concern:

* :mod:`~d3epth.data.synthetic.geometry`: random streams, cameras, poses, materials, primitives, scenes;
* :mod:`~d3epth.data.synthetic.render`: vectorised ray casting and shading in numpy;
* :mod:`~d3epth.data.synthetic.indoor`: indoor rooms (Hypersim, NYUv2);
* :mod:`~d3epth.data.synthetic.street`: streets (Virtual KITTI 2, KITTI);
* :mod:`~d3epth.data.synthetic.writers`: the four training / NYU / KITTI layouts and the split-list reader;
* :mod:`~d3epth.data.synthetic.eval_sets`: the ETH3D, ScanNet and DIODE evaluation layouts;
* :mod:`~d3epth.data.synthetic.contact_sheet`: a PNG of every generated dataset, read back from disk.

The same seed gives the same bytes on disk, whatever the number of workers.
"""

from d3epth.data.synthetic.eval_sets import write_diode, write_eth3d, write_scannet
from d3epth.data.synthetic.geometry import (
    KITTI_CAMERA,
    NYU_CAMERA,
    VKITTI_BASELINE,
    VKITTI_CAMERA,
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
    hypersim_camera,
    scene_rng,
)
from d3epth.data.synthetic.indoor import make_indoor_scene, render_hypersim_frame
from d3epth.data.synthetic.render import RenderedFrame, render
from d3epth.data.synthetic.street import (
    StreetLayout,
    make_street_scene,
    render_street_frame,
    street_scene_with_lighting,
)
from d3epth.data.synthetic.writers import (
    HYPERSIM_CSV_COLUMNS,
    VKITTI_SCENES,
    VKITTI_VARIATIONS,
    hypersim_scene_names,
    iter_split_rows,
    lidar_mask,
    write_hypersim_raw,
    write_kitti,
    write_nyuv2,
    write_vkitti2,
)

__all__ = [
    "HYPERSIM_CSV_COLUMNS",
    "KITTI_CAMERA",
    "NYU_CAMERA",
    "VKITTI_BASELINE",
    "VKITTI_CAMERA",
    "VKITTI_SCENES",
    "VKITTI_VARIATIONS",
    "Box",
    "CameraPose",
    "Cylinder",
    "Material",
    "PinholeCamera",
    "PointLight",
    "Primitive",
    "Rect",
    "RenderedFrame",
    "Scene",
    "Sphere",
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
    "write_diode",
    "write_eth3d",
    "write_hypersim_raw",
    "write_kitti",
    "write_nyuv2",
    "write_scannet",
    "write_vkitti2",
]
