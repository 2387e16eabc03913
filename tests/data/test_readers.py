"""Dataset readers: units, valid ranges (strict), depth normalisation, intrinsics, crops and every bad-input error."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from d3epth.data import HypersimDataset, KITTIDataset, NYUv2Dataset, UnlabeledImageDataset, VirtualKITTI2Dataset
from d3epth.data.base import read_rgb
from tests.helpers.data import write_hypersim, write_kitti, write_nyu, write_png16, write_rgb, write_vkitti2


def _np(t: torch.Tensor) -> np.ndarray:
    return t.squeeze(0).numpy()


def _expected_norm(depth_m: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Marigold's normalisation, computed independently with numpy."""
    d2, d98 = np.quantile(depth_m[valid].astype(np.float64), [0.02, 0.98])
    return np.clip((depth_m - d2) / (d98 - d2) * 2 - 1, -1, 1)


# ----------------------------------------------------------------------------------------------- Hypersim


def test_hypersim_units_mask_and_norm(tmp_path: Path) -> None:
    written = write_hypersim(tmp_path / "hypersim", {"train": 2})["train"]
    ds = HypersimDataset(tmp_path / "hypersim", split="train")
    assert len(ds) == 2
    for i, w in enumerate(written):
        s = ds[i]
        metres = w.depth.astype(np.float64) / 1000.0
        valid = (metres > 1e-5) & (metres < 65.0)
        assert s["image"].dtype == torch.float32 and s["image"].shape == (3, 24, 32)
        np.testing.assert_allclose(s["image"].permute(1, 2, 0).numpy(), w.rgb / 127.5 - 1.0, atol=1e-6)
        np.testing.assert_array_equal(_np(s["valid_mask"]), valid)
        np.testing.assert_allclose(_np(s["depth"]), np.where(valid, metres, 0.0), rtol=1e-6)
        np.testing.assert_allclose(_np(s["depth_norm"]), _expected_norm(metres, valid), atol=1e-5)
        assert s["dataset"] == "hypersim" and s["path"] == w.rgb_rel
        assert not valid[:6, :8].any()  # the written hole is invalid


def test_hypersim_depth_norm_clips_two_percent_each_end(tmp_path: Path) -> None:
    # Distinct depths on a 40x50 frame: about 2 % of valid pixels at or below q02 and at or above q98.
    def distinct(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
        return (rng.permutation(h * w) + 1000).astype(np.uint16).reshape(h, w)

    write_hypersim(tmp_path / "hs", {"train": 1}, size=(40, 50), depth_fn=distinct)
    s = HypersimDataset(tmp_path / "hs")[0]
    norm = s["depth_norm"][s["valid_mask"]]
    assert norm.min() >= -1 and norm.max() <= 1
    n = norm.numel()
    assert abs((norm <= -1 + 1e-6).sum().item() / n - 0.02) < 0.005
    assert abs((norm >= 1 - 1e-6).sum().item() / n - 0.02) < 0.005


def test_hypersim_strict_range_boundaries(tmp_path: Path) -> None:
    def boundary(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
        d = np.full((h, w), 3000, dtype=np.uint16)
        d[0, 0], d[0, 1], d[0, 2], d[0, 3] = 2000, 2001, 1999, 5000  # 2 m is excluded, just above/below are not
        return d

    write_hypersim(tmp_path / "hs", {"train": 1}, depth_fn=boundary)
    s = HypersimDataset(tmp_path / "hs", min_depth=2.0, max_depth=5.0)[0]
    assert s["valid_mask"][0, 0, :4].tolist() == [False, True, False, False]
    assert s["valid_mask"][0, 1:].all()


def test_hypersim_prefers_filtered_list_and_intrinsics(tmp_path: Path) -> None:
    written = write_hypersim(tmp_path / "hs", {"train": 4}, size=(24, 32), filtered=True)["train"]
    ds = HypersimDataset(tmp_path / "hs", split="train")
    assert ds.split_file == tmp_path / "hs" / "filename_list_train_filtered.txt"
    assert [ds[i]["path"] for i in range(len(ds))] == [w.rgb_rel for w in written[::2]]
    k = ds[0]["intrinsics"]
    f = 16.0 / math.tan(math.radians(30.0))  # 60 degree horizontal FoV over 32 px
    torch.testing.assert_close(k, torch.tensor([[f, 0, 15.5], [0, f, 11.5], [0, 0, 1]]))
    unfiltered = HypersimDataset(tmp_path / "hs", split_file=tmp_path / "hs" / "train" / "filename_list_train.txt")
    assert len(unfiltered) == 4


def test_hypersim_reads_marigolds_per_split_tar(tmp_path: Path) -> None:
    """Marigold packs ``processed/train`` itself (``tar -cf hypersim_processed_train.tar .``): no ``train/`` inside."""
    from d3epth.data.storage import write_tar

    written = write_hypersim(tmp_path / "hs", {"train": 6}, size=(24, 32))["train"]
    assert len({w.rgb_rel.split("/")[0] for w in written}) > 1  # several scenes: the tar has no single top folder
    archive = write_tar(tmp_path / "hs" / "train", tmp_path / "hypersim_processed_train.tar")
    folder, packed = HypersimDataset(tmp_path / "hs", "train"), HypersimDataset(archive, "train")
    assert len(packed) == len(folder) == 6
    for a, b in zip(folder, packed, strict=True):
        assert a["path"] == b["path"] and torch.equal(a["image"], b["image"]) and torch.equal(a["depth"], b["depth"])
    # The split's folder itself as the root works the same way.
    assert len(HypersimDataset(tmp_path / "hs" / "train", "train")) == 6


def test_hypersim_resize_nearest_keeps_written_depths(tmp_path: Path) -> None:
    written = write_hypersim(tmp_path / "hs", {"train": 1}, size=(24, 32))["train"][0]
    s = HypersimDataset(tmp_path / "hs", resize=[12, 20])[0]
    assert s["image"].shape == (3, 12, 20) and s["depth"].shape == (1, 12, 20)
    stored = set((written.depth.astype(np.float32) / np.float32(1000)).ravel().tolist())
    assert set(s["depth"][s["valid_mask"]].tolist()) <= stored
    f = 16.0 / math.tan(math.radians(30.0))
    assert s["intrinsics"][0, 0].item() == pytest.approx(f * 20 / 32, rel=1e-5)


# ----------------------------------------------------------------------------------------------- VKITTI 2


def test_vkitti_units_sky_and_range(tmp_path: Path) -> None:
    written = write_vkitti2(tmp_path / "vk", "train", size=(24, 40))
    ds = VirtualKITTI2Dataset(tmp_path / "vk", split="train", kb_crop=False)
    assert len(ds) == len(written) == 2 * 2 * 2  # 2 scenes x 2 variations x 2 cameras
    s, w = ds[0], written[0]
    metres = w.depth.astype(np.float64) / 100.0
    valid = (metres > 1e-5) & (metres < 80.0)
    np.testing.assert_array_equal(_np(s["valid_mask"]), valid)
    np.testing.assert_allclose(_np(s["depth"]), np.where(valid, metres, 0.0), rtol=1e-6)
    assert not s["valid_mask"][0, :4].any()  # sky rows
    assert (s["depth_norm"][0, :4] == 1.0).all()  # sky normalised to the far plane, as in Marigold
    # JPEG: close to what was written, not bit-exact.
    assert (s["image"].permute(1, 2, 0).numpy() - (w.rgb / 127.5 - 1)).__abs__().mean() < 0.03


def test_vkitti_sky_invalid_even_with_large_max_depth(tmp_path: Path) -> None:
    write_vkitti2(tmp_path / "vk", "train", size=(24, 40))
    s = VirtualKITTI2Dataset(tmp_path / "vk", kb_crop=False, max_depth=1000.0)[0]
    assert not s["valid_mask"][0, :4].any() and s["valid_mask"][0, 4:].all()


def test_vkitti_max_depth_is_strict(tmp_path: Path) -> None:
    write_vkitti2(tmp_path / "vk", "train", size=(24, 40))
    path = tmp_path / "vk" / "depth/Scene02/clone/frames/depth/Camera_0/depth_00000.png"
    d = np.array(Image.open(path)).astype(np.uint16)
    d[10, :3] = [8000, 7999, 8001]  # 80.00 m, 79.99 m, 80.01 m
    write_png16(path, d)
    s = VirtualKITTI2Dataset(tmp_path / "vk", kb_crop=False)[0]
    assert s["valid_mask"][0, 10, :3].tolist() == [False, True, False]


def test_vkitti_kb_crop_and_intrinsics(tmp_path: Path) -> None:
    written = write_vkitti2(tmp_path / "vk", "val", size=(375, 1242), variations=("clone",))
    ds = VirtualKITTI2Dataset(tmp_path / "vk", split="val")  # kb_crop on by default
    s = ds[1]
    w = written[1]
    assert s["image"].shape == (3, 352, 1216)
    metres = w.depth[23:, 13:1229].astype(np.float64) / 100.0  # KB crop: top = 375 - 352, left = (1242 - 1216) // 2
    valid = (metres > 1e-5) & (metres < 80.0)
    np.testing.assert_allclose(_np(s["depth"]), np.where(valid, metres, 0.0), rtol=1e-6)
    # camera 1, frame 0: the written cx = (W - 1) / 2 + 1, cy = (H - 1) / 2, shifted by the crop offsets
    assert w.extra == {"frame": 0, "cam": 1}
    torch.testing.assert_close(
        s["intrinsics"], torch.tensor([[725.0087, 0, 620.5 + 1 - 13], [0, 725.0087, 187.0 - 23], [0, 0, 1]])
    )


def test_vkitti_kb_crop_too_large_fails_clearly(tmp_path: Path) -> None:
    write_vkitti2(tmp_path / "vk", "train", size=(24, 40))
    rgb = tmp_path / "vk" / "rgb/Scene02/clone/frames/rgb/Camera_0/rgb_00000.jpg"
    with pytest.raises(ValueError, match=rf"{rgb}: image is 24x40, smaller than the KB crop 352x1216.*kb_crop: false"):
        VirtualKITTI2Dataset(tmp_path / "vk")


def test_vkitti_folder_scan_follows_marigold_rule(tmp_path: Path) -> None:
    written = write_vkitti2(tmp_path / "vk", "train", list_file=False, extra_variations=("fog",))
    write_vkitti2(tmp_path / "vk", "val", list_file=False)
    ds = VirtualKITTI2Dataset(tmp_path / "vk", split="train", kb_crop=False)
    paths = sorted(ds[i]["path"] for i in range(len(ds)))
    assert paths == sorted(w.rgb_rel for w in written)  # no fog, no Scene01
    assert all("/fog/" not in p and "Scene01" not in p for p in paths)


def test_vkitti_without_intrinsics_files_has_no_key(tmp_path: Path) -> None:
    write_vkitti2(tmp_path / "vk", "train", intrinsics=False)
    assert "intrinsics" not in VirtualKITTI2Dataset(tmp_path / "vk", kb_crop=False)[0]


# ----------------------------------------------------------------------------------------------- NYUv2


def test_nyu_raw_depth_column_is_ground_truth(tmp_path: Path) -> None:
    written = write_nyu(tmp_path / "nyu", n=2)
    ds = NYUv2Dataset(tmp_path / "nyu", load_filled=True)
    s, w = ds[1], written[1]
    metres = w.depth.astype(np.float64) / 1000.0
    valid = (metres > 1e-3) & (metres < 10.0)
    np.testing.assert_array_equal(_np(s["valid_mask"]), valid)
    np.testing.assert_allclose(_np(s["depth"]), np.where(valid, metres, 0.0), rtol=1e-6)
    np.testing.assert_allclose(_np(s["depth_filled"]), w.extra["filled"] / 1000.0, rtol=1e-6)
    assert not s["valid_mask"][0, -2:].any()  # Kinect holes
    assert "depth_filled" not in NYUv2Dataset(tmp_path / "nyu")[0]


def test_nyu_range_boundaries_strict(tmp_path: Path) -> None:
    write_nyu(tmp_path / "nyu", n=1)
    path = tmp_path / "nyu" / "test/kitchen_0004/depth_0001.png"
    d = np.array(Image.open(path)).astype(np.uint16)
    d[0, :4] = [1, 2, 10000, 9999]  # 1 mm (= min, excluded), 2 mm, 10 m (= max, excluded), 9.999 m
    write_png16(path, d)
    s = NYUv2Dataset(tmp_path / "nyu")[0]
    assert s["valid_mask"][0, 0, :4].tolist() == [False, True, False, True]


def test_nyu_eigen_crop_mask(tmp_path: Path) -> None:
    write_nyu(tmp_path / "nyu", n=1, size=(48, 64))
    plain = NYUv2Dataset(tmp_path / "nyu")[0]["valid_mask"][0]
    cropped = NYUv2Dataset(tmp_path / "nyu", eigen_crop=True)[0]["valid_mask"][0]
    inside = torch.zeros_like(plain)
    inside[5:47, 4:60] = True  # 480x640 crop at 1/10 scale, half up: 4.5 -> 5, 47.1 -> 47, 4.1 -> 4, 60.1 -> 60
    assert torch.equal(cropped, plain & inside)


@pytest.mark.parametrize(
    ("size", "bounds"),
    [
        ((480, 640), (45, 471, 41, 601)),  # Marigold's fixed eval_mask[45:471, 41:601]
        ((240, 320), (23, 236, 21, 301)),  # all ties: 22.5, 235.5, 20.5, 300.5 (Python round: 22, 236, 20, 300)
        ((720, 960), (68, 707, 62, 902)),  # ties 67.5, 706.5, 61.5, 901.5 (Python round gives 706 for the bottom)
        ((193, 257), (18, 189, 16, 241)),  # odd size, no ties: 18.09, 189.38, 16.46, 241.34
    ],
)
def test_nyu_eigen_crop_reader_and_metrics_agree(
    tmp_path: Path, size: tuple[int, int], bounds: tuple[int, int, int, int]
) -> None:
    from d3epth.data.crops import CROPS
    from d3epth.metrics import BENCHMARKS, crop_mask

    assert CROPS["nyu_eigen"].bounds(*size) == bounds
    assert BENCHMARKS["nyu"].crop.bounds(*size) == bounds
    write_nyu(tmp_path / "nyu", n=1, size=size)
    plain = NYUv2Dataset(tmp_path / "nyu")[0]["valid_mask"][0]
    cropped = NYUv2Dataset(tmp_path / "nyu", eigen_crop=True)[0]["valid_mask"][0]
    metric = crop_mask("nyu_eigen", *size)
    assert torch.equal(cropped, plain & metric)
    top, bottom, left, right = bounds
    assert cropped[:top].sum() == cropped[bottom:].sum() == cropped[:, :left].sum() == cropped[:, right:].sum() == 0
    # The rows and columns just outside the crop hold valid ground truth, so a one-pixel disagreement would show.
    assert plain[top - 1].any() and plain[bottom].any() and plain[:, left - 1].any() and plain[:, right].any()


# ----------------------------------------------------------------------------------------------- KITTI


def test_kitti_units_sparse_and_none_rows_dropped(tmp_path: Path) -> None:
    written = write_kitti(tmp_path / "kitti", n=3, n_none=2)
    ds = KITTIDataset(tmp_path / "kitti", kb_crop=False)
    assert len(ds) == 3
    s, w = ds[2], written[2]
    metres = w.depth.astype(np.float64) / 256.0
    valid = (metres > 1e-5) & (metres < 80.0)
    np.testing.assert_array_equal(_np(s["valid_mask"]), valid)
    np.testing.assert_allclose(_np(s["depth"]), np.where(valid, metres, 0.0), rtol=1e-6)
    assert 0.2 < valid.mean() < 0.4  # sparse: ~70 % of pixels carry no LiDAR return
    assert s["path"] == w.rgb_rel


def test_kitti_kb_crop_and_garg_mask(tmp_path: Path) -> None:
    written = write_kitti(tmp_path / "kitti", n=1, n_none=0, size=(375, 1242))
    s = KITTIDataset(tmp_path / "kitti", eval_crop="garg")[0]
    metres = written[0].depth[23:, 13:1229].astype(np.float64) / 256.0
    valid = (metres > 1e-5) & (metres < 80.0)
    garg = np.zeros_like(valid)
    garg[int(0.40810811 * 352) : int(0.99189189 * 352), int(0.03594771 * 1216) : int(0.96405229 * 1216)] = True
    np.testing.assert_array_equal(_np(s["valid_mask"]), valid & garg)


# ----------------------------------------------------------------------------------------------- empty samples


def test_sample_without_valid_pixels_does_not_crash(tmp_path: Path) -> None:
    write_hypersim(tmp_path / "hs", {"train": 2}, depth_fn=lambda h, w, rng: np.zeros((h, w), np.uint16))
    ds = HypersimDataset(tmp_path / "hs")
    s = ds[0]
    assert not s["valid_mask"].any()
    assert torch.equal(s["depth_norm"], torch.zeros(1, 24, 32)) and torch.equal(s["depth"], torch.zeros(1, 24, 32))
    assert ds.check_files() == []  # empty samples are legal...
    problems = ds.check_files(raise_error=False, include_empty=True)  # ...but can be listed
    assert len(problems) == 2 and "depth_plane_cam_00_fr0000.png: no valid depth pixel" in problems[0]


# ----------------------------------------------------------------------------------------------- bad input


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=rf"root folder {tmp_path / 'nope'} does not exist"):
        HypersimDataset(tmp_path / "nope")


def test_missing_split_file(tmp_path: Path) -> None:
    (tmp_path / "nyu").mkdir()
    with pytest.raises(FileNotFoundError, match=r"split file .*filename_list_test\.txt not found.*rgb depth filled"):
        NYUv2Dataset(tmp_path / "nyu")


def test_unreadable_split_file(tmp_path: Path) -> None:
    write_hypersim(tmp_path / "hs", {"train": 1})
    bad = tmp_path / "list.txt"
    bad.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ValueError, match=r"cannot read split file .*list\.txt"):
        HypersimDataset(tmp_path / "hs", split_file=bad)


def test_unknown_split(tmp_path: Path) -> None:
    write_hypersim(tmp_path / "hs", {"train": 1})
    with pytest.raises(ValueError, match=r"split must be one of \['train', 'val', 'test'\], got 'training'"):
        HypersimDataset(tmp_path / "hs", split="training")


def test_wrong_column_count_names_file_and_line(tmp_path: Path) -> None:
    write_kitti(tmp_path / "kitti", n=2, n_none=0)
    lst = tmp_path / "kitti" / "eigen_test_files_with_gt.txt"
    lines = lst.read_text().splitlines()
    lines[1] = " ".join(lines[1].split()[:2])  # focal column missing
    lst.write_text("\n".join(lines))
    with pytest.raises(ValueError, match=rf"{lst}:2: expected 3 columns \(rgb depth focal\), got 2"):
        KITTIDataset(tmp_path / "kitti", kb_crop=False)


def test_missing_listed_file(tmp_path: Path) -> None:
    written = write_hypersim(tmp_path / "hs", {"train": 3})["train"]
    (tmp_path / "hs" / "train" / written[2].depth_rel).unlink()
    with pytest.raises(FileNotFoundError, match=r"1 listed file\(s\) missing.*depth_plane_cam_00_fr0002\.png"):
        HypersimDataset(tmp_path / "hs")


def test_corrupt_image_named(tmp_path: Path) -> None:
    written = write_hypersim(tmp_path / "hs", {"train": 3})["train"]
    first = tmp_path / "hs" / "train" / written[0].rgb_rel
    first.write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match=rf"{first}: unreadable or corrupt image"):
        HypersimDataset(tmp_path / "hs")


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "L"])
def test_read_rgb_gives_pil_pixels(tmp_path: Path, mode: str) -> None:
    # 8-bit RGB PNGs are decoded by torchvision (faster); every kind must still read as PIL's convert("RGB") does.
    pixels = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    path = tmp_path / "image.png"
    Image.fromarray(pixels).convert(mode).save(path)
    rgb = read_rgb(path)
    assert rgb.dtype == np.uint8 and rgb.flags.writeable and rgb.flags.c_contiguous
    np.testing.assert_array_equal(rgb, np.array(Image.open(path).convert("RGB")))
    if mode == "RGB":
        np.testing.assert_array_equal(rgb, pixels)


def test_truncated_rgb_png_named(tmp_path: Path) -> None:
    path = tmp_path / "image.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(ValueError, match=rf"^{path}: unreadable or corrupt image \((?!operator)[^/]*\)$"):
        read_rgb(path)


def test_corrupt_image_later_in_split_found_by_check_files(tmp_path: Path) -> None:
    written = write_hypersim(tmp_path / "hs", {"train": 3})["train"]
    bad = tmp_path / "hs" / "train" / written[2].depth_rel
    bad.write_bytes(bad.read_bytes()[:60])  # truncated PNG
    ds = HypersimDataset(tmp_path / "hs")  # quick check only decodes the first sample
    with pytest.raises(ValueError, match=rf"1 bad sample\(s\):\n  {bad}: unreadable or corrupt image"):
        ds.check_files()
    with pytest.raises(ValueError, match=rf"{bad}: unreadable or corrupt image"):
        ds[2]
    with pytest.raises(ValueError, match=rf"{bad}: unreadable"):
        HypersimDataset(tmp_path / "hs", check="full")


def test_rgb_depth_size_mismatch(tmp_path: Path) -> None:
    written = write_nyu(tmp_path / "nyu", n=1)
    rgb = tmp_path / "nyu" / written[0].rgb_rel
    write_rgb(rgb, np.zeros((20, 32, 3), np.uint8))
    with pytest.raises(ValueError, match=rf"{rgb} is 20x32 but its depth .*depth_0001\.png is 24x32"):
        NYUv2Dataset(tmp_path / "nyu")


def test_eight_bit_depth_refused(tmp_path: Path) -> None:
    written = write_vkitti2(tmp_path / "vk", "train")
    depth = tmp_path / "vk" / written[0].depth_rel
    Image.fromarray(np.full((24, 40), 50, np.uint8)).save(depth)
    with pytest.raises(ValueError, match=rf"{depth}: depth image is 8-bit grey .*expected a 16-bit"):
        VirtualKITTI2Dataset(tmp_path / "vk", kb_crop=False)


def test_bad_kitti_focal_and_eval_crop(tmp_path: Path) -> None:
    write_kitti(tmp_path / "kitti", n=1, n_none=0)
    with pytest.raises(ValueError, match=r"eval_crop must be one of \['eigen', 'garg'\]"):
        KITTIDataset(tmp_path / "kitti", eval_crop="bts")
    lst = tmp_path / "kitti" / "eigen_test_files_with_gt.txt"
    lst.write_text(lst.read_text().replace("721.5377", "f=721"))
    with pytest.raises(ValueError, match=rf"{lst}:1: third column \(focal length in pixels\) must be a number"):
        KITTIDataset(tmp_path / "kitti", kb_crop=False)


def test_malformed_vkitti_intrinsics(tmp_path: Path) -> None:
    write_vkitti2(tmp_path / "vk", "train")
    k = tmp_path / "vk" / "textgt" / "Scene02" / "clone" / "intrinsic.txt"
    k.write_text(k.read_text() + "3 0 725.0 oops 620.5 187\n")
    with pytest.raises(ValueError, match=rf"{k}:\d+: expected 'frame cameraID K\[0,0\]"):
        VirtualKITTI2Dataset(tmp_path / "vk", kb_crop=False)


@pytest.mark.parametrize("name", ["eigen", "garg"])
def test_kitti_eval_crop_is_the_metrics_crop(tmp_path: Path, name: str) -> None:
    from d3epth.metrics import crop_mask

    write_kitti(tmp_path / "kitti", n=1, size=(37, 53))
    plain = KITTIDataset(tmp_path / "kitti", kb_crop=False)[0]["valid_mask"][0]
    cropped = KITTIDataset(tmp_path / "kitti", kb_crop=False, eval_crop=name)[0]["valid_mask"][0]
    assert torch.equal(cropped, plain & crop_mask(f"kitti_{name}", 37, 53))


def test_kb_crop_window() -> None:
    from d3epth.data.crops import KB_CROP_SIZE, kb_crop_window

    assert KB_CROP_SIZE == (352, 1216)
    assert kb_crop_window(375, 1242) == (23, 13)  # VKITTI 2 / KITTI frames (Marigold kitti_benchmark_crop)
    assert kb_crop_window(376, 1241) == (24, 12)


# ----------------------------------------------------------------------------------------------- sample contract


def test_every_reader_returns_the_sample_contract(tmp_path: Path) -> None:
    from d3epth.data.sample import OPTIONAL_KEYS, REQUIRED_KEYS

    write_hypersim(tmp_path / "hs", {"train": 1})
    write_vkitti2(tmp_path / "vk", "train", size=(24, 40))
    write_nyu(tmp_path / "nyu", n=1)
    write_kitti(tmp_path / "kitti", n=1)
    samples = [
        HypersimDataset(tmp_path / "hs")[0],
        VirtualKITTI2Dataset(tmp_path / "vk", kb_crop=False)[0],
        NYUv2Dataset(tmp_path / "nyu")[0],
        KITTIDataset(tmp_path / "kitti", kb_crop=False)[0],
        UnlabeledImageDataset(str(tmp_path / "hs" / "**" / "rgb_*.png"), resize=[16, 16])[0],
    ]
    assert [s["has_depth"] for s in samples] == [True, True, True, True, False]
    for s in samples:
        assert set(REQUIRED_KEYS) <= set(s), s["path"]
        height, width = s["image"].shape[-2:]
        shapes = {"[3,H,W]": (3, height, width), "[1,H,W]": (1, height, width), "[3,3]": (3, 3)}
        for key, spec in {**REQUIRED_KEYS, **OPTIONAL_KEYS}.items():
            if key not in s:
                continue
            if spec.dtype is None:
                assert isinstance(s[key], bool if key == "has_depth" else str), key
            else:
                assert s[key].dtype == spec.dtype, key
                if spec.shape in shapes:
                    assert tuple(s[key].shape) == shapes[spec.shape], key
        assert s["image"].min() >= -1 and s["image"].max() <= 1
        assert s["depth_norm"].min() >= -1 and s["depth_norm"].max() <= 1
        assert not s["depth"][~s["valid_mask"]].any()
