"""Tests of d3epth.data.prepare.hypersim and tools/prepare_hypersim.py: conversions against hand-worked values, the
render → raw → PNG round trip, Marigold's filter, resumability and error reporting."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from d3epth.data import synthetic as S
from d3epth.data.prepare import hypersim as ph
from tests.tool_loader import load_tool

tool = load_tool("prepare_hypersim")

W, H = 32, 24
GEN = {"seed": 0, "scenes": (3, 1, 1), "cameras_per_scene": 2, "frames_per_camera": 2, "width": W, "height": H}


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hypersim_raw")
    S.write_hypersim_raw(root, missing_frames=1, progress=False, **GEN)
    return root


@pytest.fixture(scope="module")
def prepared(raw: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, ph.SplitSummary]]:
    out = tmp_path_factory.mktemp("hypersim")
    return out, ph.prepare_hypersim(raw, out, workers=1, progress=False)


# --------------------------------------------------------------------------------------------------------------------
# Conversions
# --------------------------------------------------------------------------------------------------------------------
def test_focal_length_from_width() -> None:
    assert ph.focal_length(1024) == pytest.approx(886.81, abs=1e-3)  # Marigold's FOCAL_LENGTH
    assert ph.focal_length(128) == pytest.approx(886.81 / 8, abs=1e-3)
    with pytest.raises(ValueError, match="width"):
        ph.focal_length(0)


def test_distance_to_depth_corner_pixel_by_hand() -> None:
    """Top-left pixel of a 1024x768 frame, 10 m away along its ray.

    x = 0 - 512 + 0.5 = -511.5, y = 0 - 384 + 0.5 = -383.5, f = 886.81
    norm = sqrt(261632.25 + 147072.25 + 786431.9761) = sqrt(1195136.4761) = 1093.22298
    depth = 10 * 886.81 / 1093.22298 = 8.111886 m (the corner shrinks by ~19 %).
    """
    dist = np.full((768, 1024), 10.0)
    depth = ph.distance_to_depth(dist, 886.81)
    assert depth[0, 0] == pytest.approx(8.111886, abs=2e-6)
    assert depth[767, 1023] == pytest.approx(depth[0, 0])  # the opposite corner is symmetric
    # The four centre pixels are half a pixel off the axis: depth = 10 f / sqrt(0.5 + f^2).
    assert depth[383, 511] == pytest.approx(10 * 886.81 / math.sqrt(0.5 + 886.81**2))
    with pytest.raises(ValueError, match="H, W"):
        ph.distance_to_depth(np.zeros(5), 1.0)


def test_tone_map_against_formula() -> None:
    """Grey pixels with brightness 0.1, 0.2, 0.3 (valid) and 50 (invalid): p90 of the valid ones is 0.28."""
    rgb = np.array([[[0.1] * 3, [0.2] * 3], [[0.3] * 3, [50.0] * 3]])
    entity = np.array([[1, 2], [3, -1]])
    p90 = 0.2 + 0.8 * (0.3 - 0.2)  # linear interpolation at rank 0.9 * (3 - 1) = 1.8
    scale = 0.8**2.2 / p90
    expected = np.clip((scale * rgb) ** (1 / 2.2), 0, 1)
    out = ph.tone_map(rgb, entity)
    np.testing.assert_allclose(out, expected, rtol=1e-12)
    assert out[1, 1, 0] == 1.0  # the bright invalid pixel does not set the exposure and clips
    # All pixels invalid: scale 1. Black image: scale 0 (no division by ~0). Negative radiance clamps to 0.
    np.testing.assert_allclose(ph.tone_map(rgb * 0.01, np.full((2, 2), -1)), np.clip((rgb * 0.01) ** (1 / 2.2), 0, 1))
    assert (ph.tone_map(np.full((2, 2, 3), 1e-6), entity) == 0).all()
    assert (ph.tone_map(-rgb, entity) == 0).all()


# --------------------------------------------------------------------------------------------------------------------
# Round trip and lists
# --------------------------------------------------------------------------------------------------------------------
def test_round_trip_depth_within_a_millimetre(prepared: tuple[Path, dict[str, ph.SplitSummary]]) -> None:
    out, _ = prepared
    names = S.hypersim_scene_names(*GEN["scenes"])
    n_invalid = 0
    for split in ("train", "val", "test"):
        for si, scene in enumerate(names[split]):
            for ci in range(2):
                for fi in range(2):
                    path = out / split / scene / f"depth_plane_cam_{ci:02d}_fr{fi:04d}.png"
                    if split == "train" and si == ci == fi == 0:
                        assert not path.exists()  # written without color.hdf5: skipped
                        continue
                    stored = _read(path)
                    assert stored.dtype == np.uint16 and stored.shape == (H, W)
                    frame = S.render_hypersim_frame(GEN["seed"], split, si, ci, fi, 2, 2, W, H)
                    valid = frame.entity_id >= 0
                    # Marigold truncates (astype uint16): 0 <= true - stored < 1 mm, plus float32 storage of the
                    # distance in the HDF5 file (relative 6e-8, i.e. < 1e-6 m here).
                    err = frame.depth[valid] - stored[valid] / 1000.0
                    assert err.min() > -1e-6 and err.max() < 1e-3 + 1e-6
                    assert (stored[~valid] == 0).all()
                    n_invalid += int((~valid).sum())
                    rgb = _read(out / split / scene / f"rgb_cam_{ci:02d}_fr{fi:04d}.png")
                    assert rgb.shape == (H, W, 3) and rgb.dtype == np.uint8
    assert n_invalid > 0  # the generated rooms have windows/skylights, so the invalid path is exercised


def test_rgb_png_is_the_tone_mapped_radiance(raw: Path, prepared: tuple[Path, dict[str, ph.SplitSummary]]) -> None:
    out, _ = prepared
    scene = S.hypersim_scene_names(*GEN["scenes"])["test"][0]
    with h5py.File(raw / scene / "images/scene_cam_01_final_hdf5/frame.0001.color.hdf5") as f:
        color = f["dataset"][()].astype(np.float64)
    with h5py.File(raw / scene / "images/scene_cam_01_geometry_hdf5/frame.0001.render_entity_id.hdf5") as f:
        entity = f["dataset"][()]
    expected = (ph.tone_map(color, entity) * 255).astype(np.uint8)
    assert np.array_equal(_read(out / "test" / scene / "rgb_cam_01_fr0001.png"), expected)


def test_lists_meta_and_filter(raw: Path, prepared: tuple[Path, dict[str, ph.SplitSummary]]) -> None:
    out, summaries = prepared
    assert len(summaries["train"].missing) == 1 and "color.hdf5" in summaries["train"].missing[0]
    assert summaries["train"].converted == 3 * 2 * 2 - 1 and summaries["val"].converted == 4
    for split in ("train", "val", "test"):
        listed = [ln.split() for ln in (out / split / f"filename_list_{split}.txt").read_text().splitlines()]
        with open(out / split / f"filename_meta_{split}.csv", newline="") as f:
            meta = list(csv.DictReader(f))
        assert [[m["rgb_path"], m["depth_path"]] for m in meta] == listed
        assert all(m["included_in_public_release"] == "True" and m["split_partition_name"] == split for m in meta)
        filtered = (out / f"filename_list_{split}_filtered.txt").read_text().splitlines()
        # Marigold's filter, recomputed independently from the PNGs.
        expect = []
        for rgb_rel, depth_rel in listed:
            depth = _read(out / split / depth_rel) / 1000.0
            rgb = _read(out / split / rgb_rel).astype(int)
            valid = depth > 0
            ok = (
                depth[valid].max() - depth[valid].min() >= 0.5
                and rgb.max() - rgb.min() >= 10
                and 1 - valid.mean() <= 0.03
            )
            if ok:
                expect.append(f"{rgb_rel} {depth_rel}")
        assert filtered == expect
    all_meta = [m for s in ("train", "val", "test") for m in csv.DictReader(open(out / s / f"filename_meta_{s}.csv"))]
    assert any(float(m["invalid_ratio"]) > 0.03 for m in all_meta)  # some frames are filtered out ...
    assert (
        sum(len((out / f"filename_list_{s}_filtered.txt").read_text().splitlines()) for s in ("train", "val", "test"))
        > 0
    )
    first = all_meta[0]
    depth = _read(out / "train" / first["depth_path"]) / 1000.0
    assert float(first["depth_max"]) == pytest.approx(depth.max()) and float(first["depth_mean"]) == pytest.approx(
        depth.mean()
    )


def test_unreleased_rows_are_skipped(prepared: tuple[Path, dict[str, ph.SplitSummary]]) -> None:
    out, _ = prepared
    scene = S.hypersim_scene_names(*GEN["scenes"])["val"][0]
    # Row (cam_00, frame 2) is marked included_in_public_release = False and has no files: not listed, no PNG.
    assert not (out / "val" / scene / "rgb_cam_00_fr0002.png").exists()
    assert "fr0002" not in (out / "val" / "filename_list_val.txt").read_text()


def test_through_hypersim_reader(prepared: tuple[Path, dict[str, ph.SplitSummary]]) -> None:
    from d3epth.data.hypersim import HypersimDataset

    out, summaries = prepared
    ds = HypersimDataset(out, "test")
    assert len(ds) == summaries["test"].filtered
    sample = ds[0]
    scene, name = sample["path"].split("/")  # list-relative "ai_VVV_NNN/rgb_cam_CC_frFFFF.png"
    ci, fi = int(name[8:10]), int(name[13:17])  # rgb_cam_0C_frFFFF.png
    frame = S.render_hypersim_frame(GEN["seed"], "test", 0, ci, fi, 2, 2, W, H)
    valid = sample["valid_mask"][0].numpy()
    assert scene == S.hypersim_scene_names(*GEN["scenes"])["test"][0]
    assert np.array_equal(valid, frame.entity_id >= 0)
    assert np.abs(sample["depth"][0].numpy()[valid] - frame.depth[valid]).max() < 1e-3 + 1e-6
    assert float(sample["intrinsics"][0, 0]) == pytest.approx(ph.focal_length(W))


# --------------------------------------------------------------------------------------------------------------------
# Resumability, parallelism, errors, CLI
# --------------------------------------------------------------------------------------------------------------------
def test_resume_skips_done_frames_and_redoes_broken_ones(raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = ph.prepare_hypersim(raw, out, splits=["val"], progress=False)
    meta_before = (out / "val/filename_meta_val.csv").read_text()
    pngs = sorted((out / "val").rglob("*.png"))
    stamps = {p: p.stat().st_mtime_ns for p in pngs}
    second = ph.prepare_hypersim(raw, out, splits=["val"], progress=False)
    assert second["val"].resumed == second["val"].converted == first["val"].converted == 4
    assert all(p.stat().st_mtime_ns == stamps[p] for p in pngs)
    assert (out / "val/filename_meta_val.csv").read_text() == meta_before
    # A truncated PNG (an interrupted write) is detected and converted again, giving the same bytes.
    victim = next(p for p in pngs if p.name.startswith("depth_plane"))
    good = victim.read_bytes()
    victim.write_bytes(good[: len(good) // 2])
    third = ph.prepare_hypersim(raw, out, splits=["val"], workers=2, progress=False)
    assert third["val"].resumed == 3 and victim.read_bytes() == good
    assert not list(out.rglob("*.tmp"))


def test_resumed_invalid_ratio_counts_entity_ids_as_a_fresh_run(raw: Path, tmp_path: Path) -> None:
    """NaN / Inf distances on valid entities become depth 0 but are not Marigold's invalid pixels (entity -1)."""
    import shutil

    import h5py

    copy = tmp_path / "raw"
    shutil.copytree(raw, copy)

    def converted(path: Path) -> bool:  # the generator leaves one frame without its colour file (skipped)
        colour = path.parent.parent / path.parent.name.replace("_geometry_", "_final_")
        return (colour / path.name.replace("depth_meters", "color")).is_file()

    distance = next(p for p in sorted(copy.rglob("frame.*.depth_meters.hdf5")) if converted(p))
    with h5py.File(distance, "r+") as f:
        values = np.asarray(f["dataset"])
        values[:2, :3] = np.nan
        values[2, :2] = np.inf
        f["dataset"][...] = values
    out = tmp_path / "out"
    ph.prepare_hypersim(copy, out, progress=False)
    split = next(p.parent.name for p in out.rglob("filename_meta_*.csv") if distance.parts[-4] in p.read_text())
    meta = out / split / f"filename_meta_{split}.csv"
    fresh = meta.read_text()
    assert ph.prepare_hypersim(copy, out, splits=[split], progress=False)[split].resumed > 0
    assert meta.read_text() == fresh


def test_parallel_equals_serial(raw: Path, prepared: tuple[Path, dict[str, ph.SplitSummary]], tmp_path: Path) -> None:
    out, _ = prepared
    ph.prepare_hypersim(raw, tmp_path, splits=["train"], workers=2, progress=False)
    for rel in ("train/filename_list_train.txt", "train/filename_meta_train.csv", "filename_list_train_filtered.txt"):
        assert (tmp_path / rel).read_text() == (out / rel).read_text()
    for p in (out / "train").rglob("*.png"):
        assert (tmp_path / p.relative_to(out)).read_bytes() == p.read_bytes()


def test_clear_errors(raw: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"dataset directory not found: .*nowhere"):
        ph.prepare_hypersim(tmp_path / "nowhere", tmp_path / "out", progress=False)
    with pytest.raises(FileNotFoundError, match=r"split CSV not found: .*nope\.csv"):
        ph.prepare_hypersim(raw, tmp_path / "out", split_csv=tmp_path / "nope.csv", progress=False)
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("scene_name,camera_name\nai_001_001,cam_00\n")
    with pytest.raises(ValueError, match="missing column"):
        ph.prepare_hypersim(raw, tmp_path / "out", split_csv=bad_csv, progress=False)
    # A corrupt HDF5 file is an error naming the file (unlike a missing one, which is skipped).
    scene = S.hypersim_scene_names(*GEN["scenes"])["test"][0]
    copy = tmp_path / "raw"
    for p in raw.rglob("*"):
        if p.is_file() and (scene in p.parts or p.suffix == ".csv"):
            dst = copy / p.relative_to(raw)
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(p.read_bytes())
    broken = copy / scene / "images/scene_cam_00_geometry_hdf5/frame.0001.depth_meters.hdf5"
    broken.write_bytes(b"this is not an HDF5 file")
    with pytest.raises(ValueError, match=r"frame\.0001\.depth_meters\.hdf5"):
        ph.prepare_hypersim(copy, tmp_path / "out2", splits=["test"], progress=False)
    with h5py.File(broken, "w") as f:
        f.create_dataset("data", data=np.zeros((H, W)))
    with pytest.raises(ValueError, match="no 'dataset' key"):
        ph.prepare_hypersim(copy, tmp_path / "out3", splits=["test"], progress=False)


def test_main_cli(raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Marigold's underscore spellings are accepted too.
    rc = tool.main(
        [
            "--dataset_dir",
            str(raw),
            "--output-dir",
            str(tmp_path),
            "--splits",
            "test",
            "--no-progress",
            "--max-invalid-ratio",
            "1.0",
        ]
    )
    assert rc == 0
    assert "test: 4 frames" in capsys.readouterr().out
    listed = (tmp_path / "test/filename_list_test.txt").read_text().splitlines()
    filtered = (tmp_path / "filename_list_test_filtered.txt").read_text().splitlines()
    assert len(listed) == 4 and set(filtered) <= set(listed)
    with pytest.raises(SystemExit):
        tool.main(["--output-dir", str(tmp_path)])  # --dataset-dir is required
