"""FolderDepthDataset: each depth encoding read back in metres, masks, list files, sub-folders, errors, a YAML fit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from d3epth.data import FolderDepthDataset
from d3epth.data.synthetic.folder import write_own_folder
from d3epth.errors import DataError, MissingFileError
from tests.helpers import CONF
from tests.helpers.data import write_png16, write_rgb
from tests.tool_loader import load_tool

H, W = 4, 6
#: Metres per pixel: a ramp from 0.5 m to 12 m, and 0 (no depth) in the top-left corner.
METRES = np.linspace(0.5, 12.0, H * W, dtype=np.float32).reshape(H, W)
METRES[0, 0] = 0.0


def rgb(root: Path, stem: str, folder: str = "rgb", suffix: str = ".png") -> None:
    write_rgb(root / folder / f"{stem}{suffix}", np.full((H, W, 3), 100, np.uint8))


def expected_valid(depth: np.ndarray, lo: float = 1e-3, hi: float = 80.0) -> torch.Tensor:
    return torch.from_numpy((depth > lo) & (depth < hi))[None]


@pytest.mark.parametrize("scale", [1000.0, 256.0])
def test_uint16_png_is_divided_by_depth_scale(tmp_path: Path, scale: float) -> None:
    rgb(tmp_path, "a")
    stored = np.round(METRES * scale).astype(np.uint16)  # e.g. 12 m -> 12000 (mm) or 3072 (KITTI /256)
    write_png16(tmp_path / "depth" / "a.png", stored)
    sample = FolderDepthDataset(tmp_path, depth_scale=scale)[0]
    torch.testing.assert_close(sample["depth"][0], torch.from_numpy(stored / np.float32(scale)).float())
    assert torch.equal(sample["valid_mask"], expected_valid(METRES))
    assert sample["image"].shape == (3, H, W) and sample["path"] == "a" and sample["dataset"] == "folder"


def test_npy_metres_with_non_finite_values_as_no_depth(tmp_path: Path) -> None:
    rgb(tmp_path, "a")
    depth = METRES.copy()
    depth[1, 1], depth[2, 2], depth[3, 3] = np.nan, np.inf, -np.inf
    (tmp_path / "depth").mkdir()
    np.save(tmp_path / "depth" / "a.npy", depth[None])  # [1,H,W] is accepted as [H,W]
    sample = FolderDepthDataset(tmp_path, depth_scale=1.0, max_depth=10.0)[0]
    clean = np.where(np.isfinite(depth), depth, 0.0)
    valid = expected_valid(clean, hi=10.0)
    assert torch.equal(sample["valid_mask"], valid)
    assert not valid[0, 1, 1] and not valid[0, 2, 2] and not valid[0, 0, 0] and not valid[0, -1, -1]  # > 10 m
    torch.testing.assert_close(sample["depth"][valid], torch.from_numpy(clean)[None][valid])
    assert torch.isfinite(sample["depth"]).all() and torch.isfinite(sample["depth_norm"]).all()


def test_float_tiff_metres_and_a_mask_folder(tmp_path: Path) -> None:
    rgb(tmp_path, "a")
    (tmp_path / "depth").mkdir()
    Image.fromarray(METRES, mode="F").save(tmp_path / "depth" / "a.tif")
    mask = np.ones((H, W), np.uint8) * 255
    mask[:, :2] = 0  # the two left columns are not to be trusted
    (tmp_path / "mask").mkdir()
    Image.fromarray(mask).save(tmp_path / "mask" / "a.png")
    sample = FolderDepthDataset(tmp_path, mask_dir="mask")[0]
    valid = expected_valid(METRES) & torch.from_numpy(mask > 0)[None]
    assert torch.equal(sample["valid_mask"], valid)
    torch.testing.assert_close(sample["depth"][valid], torch.from_numpy(METRES)[None][valid])
    assert (sample["depth"][~valid] == 0).all()


def test_list_file_and_recursive_pairing(tmp_path: Path) -> None:
    for sub in ("x", "y"):
        rgb(tmp_path, f"{sub}/001", suffix=".jpg")
        write_png16(tmp_path / "depth" / sub / "001.png", np.full((H, W), 2000, np.uint16))
    found = FolderDepthDataset(tmp_path, recursive=True)
    assert [e["rel"] for e in found.entries] == ["x/001", "y/001"]
    (tmp_path / "pairs.txt").write_text("# rgb depth\nrgb/y/001.jpg depth/y/001.png\n")
    listed = FolderDepthDataset(tmp_path, list_file="pairs.txt", split="train")
    assert len(listed) == 1 and float(listed[0]["depth"].max()) == 2.0
    assert listed.split == "train"
    # Listed files of the same stem in two folders keep two names (the teacher cache keys its targets by name).
    (tmp_path / "pairs.txt").write_text("rgb/x/001.jpg depth/x/001.png\nrgb/y/001.jpg depth/y/001.png\n")
    both = FolderDepthDataset(tmp_path, list_file="pairs.txt")
    assert [both[i]["path"] for i in range(2)] == ["rgb/x/001", "rgb/y/001"]


def test_a_tar_root_reads_like_the_folder(tmp_path: Path) -> None:
    """Folder pairing (recursive, with .npy masks) and a list file, from an uncompressed .tar read in place."""
    from d3epth.data.storage import write_tar

    root = tmp_path / "own"
    for k, sub in enumerate(("x", "y")):
        rgb(root, f"{sub}/001")
        write_png16(root / "depth" / sub / "001.png", np.full((H, W), 1500 + 1000 * k, np.uint16))
        (root / "mask" / sub).mkdir(parents=True)
        np.save(root / "mask" / sub / "001.npy", np.eye(H, W))
    (root / "pairs.txt").write_text("rgb/x/001.png depth/x/001.png\nrgb/y/001.png depth/y/001.png\n")
    archive = write_tar(root, tmp_path / "own.tar")
    for options in ({"recursive": True, "mask_dir": "mask"}, {"list_file": "pairs.txt"}):
        folder, packed = FolderDepthDataset(root, **options), FolderDepthDataset(archive, **options)
        assert len(packed) == len(folder) == 2
        for a, b in zip(folder, packed, strict=True):
            assert a["path"] == b["path"]
            for key in ("image", "depth", "valid_mask"):
                assert torch.equal(a[key], b[key]), (options, key)
    assert int(packed[0]["valid_mask"].sum()) == H * W and int(folder[1]["depth"].max() * 1000) == 2500


def test_errors_are_one_line_and_name_the_problem(tmp_path: Path) -> None:
    rgb(tmp_path, "a")
    rgb(tmp_path, "b")
    write_png16(tmp_path / "depth" / "a.png", np.ones((H, W), np.uint16))
    write_png16(tmp_path / "depth" / "c.png", np.ones((H, W), np.uint16))
    with pytest.raises(DataError) as err:
        FolderDepthDataset(tmp_path)
    message = str(err.value)
    assert "\n" not in message and "1 RGB file(s) without depth" in message and ": b;" in message
    assert "1 depth file(s) without RGB" in message and ": c;" in message and "same stem" in message

    with pytest.raises(MissingFileError, match=r"depth_dir folder .*/nope does not exist"):
        FolderDepthDataset(tmp_path, depth_dir="nope")
    (tmp_path / "pairs.txt").write_text("rgb/a.png depth/a.exr\n")
    (tmp_path / "depth" / "a.exr").write_bytes(b"")
    with pytest.raises(DataError, match=r"a\.exr: unknown depth file type '\.exr'; expected one of"):
        FolderDepthDataset(tmp_path, list_file="pairs.txt")
    with pytest.raises(DataError, match="have no mask of the same stem"):
        (tmp_path / "mask").mkdir()
        FolderDepthDataset(tmp_path, list_file="pairs.txt", mask_dir="mask")
    with pytest.raises(DataError, match="depth_scale must be > 0"):
        FolderDepthDataset(tmp_path, depth_scale=0)


@pytest.mark.parametrize("depth_format", ["png", "npy", "tiff"])
def test_sample_own_folder_reads_the_same_in_every_format(tmp_path: Path, depth_format: str) -> None:
    write_own_folder(tmp_path / "png", 1, 0, width=16, height=12)
    write_own_folder(tmp_path / depth_format, 1, 0, width=16, height=12, depth_format=depth_format)
    reference = FolderDepthDataset(tmp_path / "png" / "train")[0]["depth"]
    sample = FolderDepthDataset(tmp_path / depth_format / "train")[0]
    torch.testing.assert_close(sample["depth"], reference, atol=5e-4, rtol=0)  # mm quantisation of the PNG
    assert sample["valid_mask"].float().mean() > 0.5


def test_own_data_trains_from_yaml_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_own_folder(tmp_path / "own", train_frames=4, val_frames=2, width=40, height=32)
    monkeypatch.setenv("D3EPTH_TEST_OWN", str(tmp_path / "own"))
    monkeypatch.setenv("D3EPTH_TEST_LOGS", str(tmp_path / "logs"))
    fit = load_tool("fit")
    assert fit.main(["--config", str(CONF / "own_data_tiny.yaml")]) == 0
    run = tmp_path / "logs" / "own" / "version_0"
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 2
    assert "FolderDepthDataset" in checkpoint["d3epth_config"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = EventAccumulator(str(run)).Reload().Tags()["scalars"]
    assert "val/own/abs_rel" in scalars and "train/loss" in scalars
