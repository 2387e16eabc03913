"""Tests of the procedural renderer and the sample-data writers (d3epth/data/synthetic/, tools/make_sample_data.py).

Geometry is checked against hand-built scenes with known answers; the writers are checked by reading their files
back (directly, and through the dataset readers of d3epth.data).
"""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from d3epth.data import synthetic as S
from tests.tool_loader import load_tool


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def _digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# --------------------------------------------------------------------------------------------------------------------
# Camera and exact geometry
# --------------------------------------------------------------------------------------------------------------------
def test_hypersim_camera_focal_and_pixel_centres() -> None:
    cam = S.hypersim_camera(1024, 768)
    assert cam.fx == pytest.approx(886.81, abs=1e-3)  # 512 / tan(30°)
    d = cam.ray_directions().reshape(3, 768, 1024)
    # Corner pixel (0, 0): image-plane x = -511.5, y = -383.5 (pixel centres), so the ray is (x, y, f)/norm.
    expected = np.array([-511.5, -383.5, cam.fx]) / math.sqrt(511.5**2 + 383.5**2 + cam.fx**2)
    np.testing.assert_allclose(d[:, 0, 0], expected, rtol=1e-12)
    # Scaling the intrinsics to half size keeps the field of view.
    half = cam.scaled(512, 384)
    assert half.fx == pytest.approx(cam.fx / 2) and half.cx == pytest.approx(255.5)


def test_vkitti_camera_scaling_matches_native() -> None:
    cam = S.VKITTI_CAMERA.scaled(1242, 375)
    assert (cam.fx, cam.fy, cam.cx, cam.cy) == pytest.approx((725.0087, 725.0087, 620.5, 187.0))
    third = S.VKITTI_CAMERA.scaled(414, 125)
    assert third.fx == pytest.approx(725.0087 / 3) and third.cx == pytest.approx((620.5 + 0.5) / 3 - 0.5)


def test_planar_depth_of_a_wall_is_constant() -> None:
    """A wall 5 m ahead, perpendicular to the optical axis: planar depth is 5 everywhere, distance is 5/cos."""
    wall = S.Rect(1, 5.0, (-50, -50), (50, 50), 7, S.Material((0.5, 0.5, 0.5)))
    cam = S.PinholeCamera.from_horizontal_fov(40, 30, 60.0)
    frame = S.render(S.Scene([wall]), cam, S.CameraPose((0.0, 0.0, 0.0), 0.0, 0.0))
    np.testing.assert_allclose(frame.depth, 5.0, rtol=1e-12)
    x = np.arange(40) - 20 + 0.5
    y = np.arange(30) - 15 + 0.5
    f = cam.fx
    np.testing.assert_allclose(frame.distance, 5.0 * np.sqrt(x[None] ** 2 + y[:, None] ** 2 + f**2) / f, rtol=1e-12)
    assert (frame.entity_id == 7).all()


def test_sphere_box_cylinder_centre_hits() -> None:
    """Centre-pixel distances to a sphere, a rotated cube and a cylinder equal centre distance minus the extent."""
    cam = S.PinholeCamera(9, 9, 10.0, 10.0, 4.0, 4.0)  # odd size: the centre pixel looks exactly along +y
    pose = S.CameraPose((0.0, 0.0, 1.0), 0.0, 0.0)
    mat = S.Material((0.5, 0.5, 0.5))
    cases = [
        (S.Sphere((0.0, 6.0, 1.0), 1.5, 1, mat), 4.5),
        (S.Box((0.0, 6.0, 1.0), (0.5, 0.5, 0.5), math.pi / 2, 1, mat), 5.5),  # a cube turned 90° is the same cube
        (S.Box((0.0, 6.0, 1.0), (0.5, 0.5, 0.5), math.pi / 4, 1, mat), 6.0 - 0.5 * math.sqrt(2)),  # corner first
        (S.Cylinder((0.0, 6.0, 0.0), 0.8, 2.0, 1, mat), 5.2),
    ]
    for prim, expected in cases:
        frame = S.render(S.Scene([prim]), cam, pose)
        assert frame.distance[4, 4] == pytest.approx(expected, abs=1e-9), type(prim).__name__
        assert frame.entity_id[0, 0] == -1  # the corner ray passes by every one of them
        assert np.isinf(frame.depth[0, 0])


def test_rect_hole_gives_invalid_pixels_and_occlusion_order() -> None:
    """A wall with a window hole shows -1 through the hole; a nearer box occludes the wall."""
    mat = S.Material((0.5, 0.5, 0.5))
    wall = S.Rect(1, 4.0, (-10, -10), (10, 10), 1, mat, holes=[((-0.5, -0.5), (0.5, 0.5))])
    box = S.Box((1.5, 2.0, 0.0), (0.3, 0.3, 0.3), 0.0, 2, mat)
    cam = S.PinholeCamera.from_horizontal_fov(64, 48, 90.0)
    frame = S.render(S.Scene([wall, box]), cam, S.CameraPose((0.0, 0.0, 0.0), 0.0, 0.0))
    assert frame.entity_id[24, 32] == -1 and frame.entity_id[24, 31] == -1  # through the window
    assert (frame.entity_id == 2).any() and (frame.entity_id == 1).any()
    assert frame.depth[frame.entity_id == 2].max() < 2.31  # the box's front face is at y = 1.7 .. its back 2.3
    assert (frame.radiance[frame.entity_id == -1] == 0).all()  # indoors, no sky: nothing behind the hole


def test_rendered_frames_are_plausible() -> None:
    room = S.render_hypersim_frame(3, "train", 0, 0, 0, 1, 1, 64, 48)
    valid = room.entity_id >= 0
    assert valid.mean() > 0.9
    assert 0.2 < room.depth[valid].min() and room.depth[valid].max() < 15.0  # inside a room of at most 7 x 8 m
    assert np.all(room.depth[valid] <= room.distance[valid] + 1e-12)
    assert np.isfinite(room.radiance).all() and (room.radiance >= 0).all()
    assert room.rgb.dtype == np.uint8 and room.rgb.std() > 5
    street = S.render_street_frame(3, "vkitti2", "train", 0, 0, S.VKITTI_CAMERA.scaled(124, 38))
    sky = street.entity_id == -1
    assert sky[0].mean() > 0 and not sky[-1].any()  # sky at the top rows, road at the bottom
    # Sky is brighter than the road; linear radiance, so compare luminance.
    lum = street.radiance @ np.array([0.3, 0.59, 0.11])
    assert lum[sky].mean() > lum[-5:].mean()


def test_determinism_and_split_separation() -> None:
    a = S.render_hypersim_frame(5, "train", 1, 0, 0, 1, 2, 32, 24)
    b = S.render_hypersim_frame(5, "train", 1, 0, 0, 1, 2, 32, 24)
    c = S.render_hypersim_frame(5, "val", 1, 0, 0, 1, 2, 32, 24)
    assert np.array_equal(a.radiance, b.radiance) and np.array_equal(a.distance, b.distance)
    assert not np.array_equal(a.distance, c.distance)
    names = S.hypersim_scene_names(12, 3, 3)
    assert len(set(names["train"]) | set(names["val"]) | set(names["test"])) == 18
    with pytest.raises(ValueError, match="seed"):
        S.scene_rng(-1, "hypersim", "train", 0)


# --------------------------------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------------------------------
def test_hypersim_raw_layout(tmp_path: Path) -> None:
    csv_path = S.write_hypersim_raw(
        tmp_path,
        seed=1,
        scenes=(2, 1, 1),
        cameras_per_scene=2,
        frames_per_camera=2,
        width=32,
        height=24,
        missing_frames=1,
        progress=False,
    )
    lines = csv_path.read_text().splitlines()
    assert lines[0] == ",".join(S.HYPERSIM_CSV_COLUMNS)
    rows = [ln.split(",") for ln in lines[1:]]
    assert len(rows) == 4 * (2 * 2 + 1)  # 4 scenes x (2 cameras x 2 frames + one unreleased row)
    assert sum(r[3] == "False" for r in rows) == 4
    assert {r[5] for r in rows} == {"train", "val", "test"}
    scene, cam, fid = rows[-2][0], rows[-2][1], int(rows[-2][2])  # a released test frame
    geom = tmp_path / scene / "images" / f"scene_{cam}_geometry_hdf5"
    with h5py.File(geom / f"frame.{fid:04d}.depth_meters.hdf5") as f:
        dist = f["dataset"][()]
    with h5py.File(geom / f"frame.{fid:04d}.render_entity_id.hdf5") as f:
        ent = f["dataset"][()]
    with h5py.File(tmp_path / scene / "images" / f"scene_{cam}_final_hdf5" / f"frame.{fid:04d}.color.hdf5") as f:
        color = f["dataset"][()]
    assert dist.shape == ent.shape == (24, 32) and color.shape == (24, 32, 3)
    assert np.array_equal(np.isnan(dist), ent == -1)
    frame = S.render_hypersim_frame(1, "test", 0, int(cam[-2:]), fid, 2, 2, 32, 24)
    np.testing.assert_allclose(dist[ent >= 0], frame.distance[ent >= 0], rtol=1e-6)  # float32 storage
    # The "missing" train frame has geometry but no colour file.
    first = tmp_path / rows[0][0] / "images"
    assert not (first / "scene_cam_00_final_hdf5" / "frame.0000.color.hdf5").exists()
    assert (first / "scene_cam_00_geometry_hdf5" / "frame.0000.depth_meters.hdf5").exists()


def test_same_seed_same_bytes_any_worker_count(tmp_path: Path) -> None:
    kw = {
        "seed": 4,
        "scenes": (1, 1, 0),
        "cameras_per_scene": 1,
        "frames_per_camera": 3,
        "width": 24,
        "height": 16,
        "progress": False,
    }
    S.write_hypersim_raw(tmp_path / "a", workers=1, **kw)
    S.write_hypersim_raw(tmp_path / "b", workers=2, **kw)
    S.write_hypersim_raw(tmp_path / "c", **{**kw, "seed": 5})
    da, db, dc = _digest(tmp_path / "a"), _digest(tmp_path / "b"), _digest(tmp_path / "c")
    assert da == db
    assert da.keys() == dc.keys() and da != dc


def test_vkitti2_round_trip(tmp_path: Path) -> None:
    w, h = 62, 20
    train_list, val_list = S.write_vkitti2(tmp_path, seed=2, frames_per_sequence=1, width=w, height=h, progress=False)
    train = [ln.split() for ln in train_list.read_text().splitlines()]
    val = [ln.split() for ln in val_list.read_text().splitlines()]
    assert len(train) == 4 * 6 * 2 and len(val) == 6 * 2
    assert all("/Scene01/" in r[0] for r in val) and not any("/Scene01/" in r[0] for r in train)
    assert {r[0].split("/")[2] for r in train} == set(S.VKITTI_VARIATIONS)
    rgb_rel, depth_rel = train[0]
    assert rgb_rel == "rgb/Scene02/clone/frames/rgb/Camera_0/rgb_00000.jpg"
    assert depth_rel == "depth/Scene02/clone/frames/depth/Camera_0/depth_00000.png"
    stored = _read(tmp_path / depth_rel)
    assert stored.dtype == np.uint16 and stored.shape == (h, w) and _read(tmp_path / rgb_rel).shape == (h, w, 3)
    frame = S.render_street_frame(2, "vkitti2", "train", 0, 0, S.VKITTI_CAMERA.scaled(w, h), "clone", "Camera_0")
    hit = frame.entity_id >= 0
    assert (stored[~hit] == 65535).all() and (~hit).any()  # sky = 655.35 m
    assert np.abs(stored[hit] / 100.0 - frame.depth[hit]).max() <= 0.005 + 1e-9  # 1 cm quantum, rounded
    intr = (tmp_path / "textgt/Scene02/clone/intrinsic.txt").read_text().splitlines()
    assert intr[0] == "frame cameraID K[0,0] K[1,1] K[0,2] K[1,2]"
    cam = S.VKITTI_CAMERA.scaled(w, h)
    assert [float(v) for v in intr[1].split()] == pytest.approx([0, 0, cam.fx, cam.fy, cam.cx, cam.cy], abs=1e-4)
    right = _read(tmp_path / "depth/Scene02/clone/frames/depth/Camera_1/depth_00000.png")
    assert not np.array_equal(right, stored)  # the stereo partner sees the scene from 0.53 m to the right


def test_nyuv2_round_trip(tmp_path: Path) -> None:
    lst = S.write_nyuv2(tmp_path, seed=0, num_frames=3, width=64, height=48, frames_per_scene=2, progress=False)
    rows = [ln.split() for ln in lst.read_text().splitlines()]
    assert rows[0] == [
        "test/kitchen_0004/rgb_0001.png",
        "test/kitchen_0004/depth_0001.png",
        "test/kitchen_0004/filled_0001.png",
    ]
    assert len(rows) == 3 and rows[2][0].startswith("test/bedroom_")
    raw, filled = _read(tmp_path / rows[0][1]), _read(tmp_path / rows[0][2])
    frame = S.render_hypersim_frame(0, "test", 0, 0, 0, 1, 2, 64, 48, "nyuv2", S.NYU_CAMERA.scaled(64, 48))
    measured = raw > 0
    assert 0.5 < measured.mean() < 1.0  # holes exist but most pixels are measured
    assert np.abs(raw[measured] / 1000.0 - frame.depth[measured]).max() <= 0.0005 + 1e-9
    assert (filled > 0).all() and np.array_equal(filled[measured], raw[measured])


def test_kitti_round_trip(tmp_path: Path) -> None:
    w, h = 208, 64
    lst = S.write_kitti(tmp_path, seed=0, num_frames=3, width=w, height=h, frames_per_drive=2, progress=False)
    rows = [ln.split() for ln in lst.read_text().splitlines()]
    assert rows[0][0] == "2011_09_26/2011_09_26_drive_0002_sync/image_02/data/0000000069.png"
    assert float(rows[0][2]) == pytest.approx(721.5377 * w / 1242, abs=1e-4)
    assert rows[-1][1] == "None" and (tmp_path / rows[-1][0]).is_file()
    assert not (tmp_path / "2011_09_26_drive_0009_sync").exists()  # no ground truth written for the None row
    gt = _read(tmp_path / rows[0][1])
    valid = gt > 0
    assert 0.05 <= valid.mean() <= 0.30  # sparse, LiDAR-like
    assert not valid[: h // 4].any()  # no beams above +2° elevation: the top of the image is empty
    frame = S.render_street_frame(0, "kitti", "test", 0, 0, S.KITTI_CAMERA.scaled(w, h), "clone", None)
    assert np.abs(gt[valid] / 256.0 - frame.depth[valid]).max() <= 0.5 / 256 + 1e-9


def test_writer_argument_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 8x8"):
        S.write_hypersim_raw(tmp_path, width=4, height=4, progress=False)
    with pytest.raises(ValueError, match="variations"):
        S.write_vkitti2(tmp_path, variations=["fog"], progress=False)
    with pytest.raises(ValueError, match="num_without_gt"):
        S.write_kitti(tmp_path, num_frames=1, num_without_gt=2, progress=False)


# --------------------------------------------------------------------------------------------------------------------
# Through the dataset readers
# --------------------------------------------------------------------------------------------------------------------
def test_generated_data_through_readers(tmp_path: Path) -> None:
    from d3epth.data.kitti import KITTIDataset
    from d3epth.data.nyu import NYUv2Dataset
    from d3epth.data.vkitti2 import VirtualKITTI2Dataset

    S.write_vkitti2(tmp_path / "vkitti2", seed=0, frames_per_sequence=1, width=62, height=20, progress=False)
    vk = VirtualKITTI2Dataset(tmp_path / "vkitti2", "val", kb_crop=False)
    assert len(vk) == 12
    s = vk[0]
    frame = S.render_street_frame(0, "vkitti2", "val", 0, 0, S.VKITTI_CAMERA.scaled(62, 20), "clone", "Camera_0")
    sky = torch.from_numpy(frame.entity_id == -1)
    assert not s["valid_mask"][0][sky].any()  # sky is invalid
    assert (s["depth_norm"][0][sky] == 1).all()  # and sits on the far plane
    ok = s["valid_mask"][0].numpy()
    np.testing.assert_allclose(s["depth"][0].numpy()[ok], frame.depth[ok], atol=0.005 + 1e-6)
    assert float(s["intrinsics"][0, 0]) == pytest.approx(725.0087 * 62 / 1242, abs=1e-4)  # from intrinsic.txt

    S.write_nyuv2(tmp_path / "nyuv2", num_frames=2, width=64, height=48, progress=False)
    nyu = NYUv2Dataset(tmp_path / "nyuv2", eigen_crop=True, load_filled=True)
    n = nyu[1]
    assert len(nyu) == 2 and n["image"].shape == (3, 48, 64)
    assert not n["valid_mask"][0, :3].any()  # the Eigen crop (rows 45:471 of 480) scaled to 48 rows
    assert (n["depth_filled"] > 0).all()

    S.write_kitti(tmp_path / "kitti", num_frames=3, width=104, height=32, progress=False)
    kitti = KITTIDataset(tmp_path / "kitti", kb_crop=False)
    assert len(kitti) == 2  # the None row is dropped
    k = kitti[0]
    assert 0.02 < k["valid_mask"].float().mean() < 0.3
    with pytest.raises(ValueError):  # the KB crop is larger than these small frames
        KITTIDataset(tmp_path / "kitti", kb_crop=True)[0]


# --------------------------------------------------------------------------------------------------------------------
# The generator CLI
# --------------------------------------------------------------------------------------------------------------------
def test_make_sample_data_main(tmp_path: Path) -> None:
    main = load_tool("make_sample_data").main

    out = tmp_path / "sd"
    argv = [
        "--out",
        str(out),
        "--workers",
        "1",
        "--no-progress",
        "--hypersim-scenes",
        "2",
        "1",
        "1",
        "--hypersim-cameras",
        "1",
        "--hypersim-frames",
        "2",
        "--hypersim-size",
        "32",
        "24",
        "--vkitti-frames",
        "1",
        "--vkitti-size",
        "62",
        "20",
        "--nyu-frames",
        "2",
        "--nyu-size",
        "32",
        "24",
        "--kitti-frames",
        "2",
        "--kitti-size",
        "104",
        "32",
        "--contact-frames",
        "2",
    ]
    assert main(argv) == 0
    for rel in [
        "hypersim_raw/metadata_images_split_scene_v1.csv",
        "hypersim/train/filename_list_train.txt",
        "hypersim/train/filename_meta_train.csv",
        "hypersim/filename_list_val_filtered.txt",
        "vkitti2/vkitti_train.txt",
        "vkitti2/vkitti_val.txt",
        "nyuv2/filename_list_test.txt",
        "kitti/eigen_test_files_with_gt.txt",
    ]:
        assert (out / rel).is_file(), rel
    sheet = _read(out / "contact_sheet.png")
    assert sheet.ndim == 3 and sheet.shape[0] >= 4 * 24  # one band per dataset
    first = (out / "hypersim/train/filename_list_train.txt").read_text().split()[0]
    assert (out / "hypersim/train" / first).is_file()


@pytest.mark.slow
def test_thousand_low_res_hypersim_frames_within_a_minute(tmp_path: Path) -> None:
    """The sample-data budget: ~1,000 128x96 Hypersim training frames in at most a minute on 2 cores."""
    budget = {"scenes": (50, 0, 0), "cameras_per_scene": 2, "frames_per_camera": 10, "width": 128, "height": 96}
    start = time.perf_counter()
    S.write_hypersim_raw(tmp_path, seed=0, workers=2, progress=False, **budget)
    elapsed = time.perf_counter() - start
    assert len(list(tmp_path.rglob("*.depth_meters.hdf5"))) == 1000
    assert elapsed < 60.0, f"{elapsed:.1f} s"
