"""Write tiny ETH3D, ScanNet and DIODE sets in Marigold's evaluation layouts for tests, with plain numpy and PIL.

Independent of ``d3epth.data.synthetic``; each writer returns what it stored (RGB uint8, depth in metres as stored,
DIODE's mask) so tests compare the readers' output against it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from tests.helpers.data import make_rgb, write_png16, write_rgb


def write_lossless(path: Path, rgb: np.ndarray) -> None:
    """PNG data under any name (readers decode by content, as PIL does), so tests compare RGB values exactly."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, format="PNG")


@dataclass
class EvalWritten:
    """One written frame: list-relative paths and the stored arrays."""

    rgb_rel: str
    depth_rel: str
    rgb: np.ndarray  # uint8 [H,W,3]
    depth: np.ndarray  # as stored: float32 metres (ETH3D, DIODE [H,W,1]) or uint16 mm (ScanNet)
    mask: np.ndarray | None = None  # DIODE's shipped mask
    extra: dict = field(default_factory=dict)


def write_eth3d(root: Path, n: int = 2, size: tuple[int, int] = (16, 24), seed: int = 0) -> list[EvalWritten]:
    """ETH3D: ``.JPG``-named RGB (PNG data, so values round-trip exactly) and raw little-endian float32 depth.

    Depth is 0.5-20 m with an ``inf`` block (no ground truth) and one exact 1e-5 m pixel (not > min_depth).
    """
    rng = np.random.default_rng(seed)
    height, width = size
    written = []
    for i in range(n):
        name = f"DSC_{219 + i:04d}.JPG"
        rgb_rel = f"rgb/office/images/dslr_images/{name}"
        depth_rel = f"depth/office_dslr_depth/office/ground_truth_depth/dslr_images/{name}"
        rgb = make_rgb(height, width, rng)
        depth = rng.uniform(0.5, 20.0, size=(height, width)).astype(np.float32)
        depth[:3, :5] = np.inf
        depth[-1, -1] = 1e-5
        write_lossless(root / rgb_rel, rgb)
        (root / depth_rel).parent.mkdir(parents=True, exist_ok=True)
        (root / depth_rel).write_bytes(depth.astype("<f4").tobytes())
        written.append(EvalWritten(rgb_rel, depth_rel, rgb, depth))
    (root / "eth3d_filename_list.txt").write_text("\n".join(f"{w.rgb_rel} {w.depth_rel}" for w in written))
    return written


def write_scannet(root: Path, n: int = 2, size: tuple[int, int] = (12, 16), seed: int = 0) -> list[EvalWritten]:
    """ScanNet: ``.jpg``-named colour (PNG data, exact), uint16-mm depth with zeros, up to 12 m (beyond the range)."""
    rng = np.random.default_rng(seed)
    height, width = size
    written = []
    for i in range(n):
        scene = f"scene{406 + i:04d}_02"
        rgb_rel, depth_rel = f"{scene}/color/000300.jpg", f"{scene}/depth/000300.png"
        rgb = make_rgb(height, width, rng)
        depth = rng.integers(0, 12000, size=(height, width)).astype(np.uint16)
        depth[0, :4] = (0, 1, 10000, 9999)  # 0 and 1 mm (not > 1e-3 m), 10 m (not < 10 m), 9.999 m (valid)
        write_lossless(root / rgb_rel, rgb)
        write_png16(root / depth_rel, depth)
        written.append(EvalWritten(rgb_rel, depth_rel, rgb, depth))
    lines = "\n".join(f"{w.rgb_rel} {w.depth_rel}" for w in written)
    (root / "scannet_val_sampled_list_800_1.txt").write_text(lines)
    return written


def write_diode(root: Path, n: int = 2, size: tuple[int, int] = (12, 16), seed: int = 0) -> list[EvalWritten]:
    """DIODE: PNG RGB, float32 depth [H,W,1] in metres (0.1-400 m), a float 0/1 mask that hides some in-range pixels."""
    rng = np.random.default_rng(seed)
    height, width = size
    written, lines = [], []
    for i in range(n):
        kind = "indoors" if i % 2 == 0 else "outdoor"
        base = f"{kind}/scene_00021/scan_{189 + i:05d}/00021_{189 + i:05d}_{kind}_200_010"
        rgb = make_rgb(height, width, rng)
        depth = rng.uniform(0.1, 400.0, size=(height, width, 1)).astype(np.float32)
        depth[0, :3, 0] = (0.6, 350.0, 5.0)  # range ends (invalid) and an in-range pixel
        mask = (rng.random((height, width)) > 0.2).astype(np.float32)
        mask[0, 2] = 0.0  # in range but masked out
        write_rgb(root / f"{base}.png", rgb)
        np.save(root / f"{base}_depth.npy", depth)
        np.save(root / f"{base}_depth_mask.npy", mask)
        written.append(EvalWritten(f"{base}.png", f"{base}_depth.npy", rgb, depth, mask))
        lines.append(f"{base}.png {base}_depth.npy {base}_depth_mask.npy")
    (root / "diode_val_all_filename_list.txt").write_text("\n".join(lines))
    return written
