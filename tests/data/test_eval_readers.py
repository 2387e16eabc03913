"""ETH3D, ScanNet and DIODE readers: files in the exact formats read back in metres, masks and ranges applied."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from d3epth.data import DIODEDataset, ETH3DDataset, ScanNetDataset
from d3epth.errors import DataError
from tests.helpers.eval_data import write_diode, write_eth3d, write_scannet


def _np(t: torch.Tensor) -> np.ndarray:
    return t.squeeze(0).numpy()


def test_eth3d_raw_float32_inf_is_invalid(tmp_path: Path) -> None:
    written = write_eth3d(tmp_path / "eth3d", n=2, size=(16, 24))
    ds = ETH3DDataset(tmp_path / "eth3d")
    assert len(ds) == 2 and ds.max_depth == math.inf
    for i, w in enumerate(written):
        s = ds[i]
        valid = np.isfinite(w.depth) & (w.depth > 1e-5)
        assert s["image"].shape == (3, 16, 24) and s["dataset"] == "eth3d" and s["path"] == w.rgb_rel
        np.testing.assert_allclose(s["image"].permute(1, 2, 0).numpy(), w.rgb / 127.5 - 1.0, atol=1e-6)
        np.testing.assert_array_equal(_np(s["valid_mask"]), valid)
        assert not _np(s["valid_mask"])[:3, :5].any() and not _np(s["valid_mask"])[-1, -1]  # inf block, 1e-5 m
        np.testing.assert_array_equal(_np(s["depth"]), np.where(valid, w.depth, 0.0))  # metres, bit-exact
        assert torch.isfinite(s["depth_norm"]).all()


def test_eth3d_wrong_byte_count_names_file_and_size(tmp_path: Path) -> None:
    written = write_eth3d(tmp_path / "eth3d", n=1, size=(16, 24))
    (tmp_path / "eth3d" / written[0].depth_rel).write_bytes(np.zeros(10, "<f4").tobytes())
    with pytest.raises(DataError, match=r"DSC_0219\.JPG: ETH3D depth has 40 bytes, expected 1536 .*16x24"):
        ETH3DDataset(tmp_path / "eth3d")


def test_scannet_millimetres_and_strict_range(tmp_path: Path) -> None:
    written = write_scannet(tmp_path / "scannet", n=2)
    ds = ScanNetDataset(tmp_path / "scannet")
    for i, w in enumerate(written):
        s = ds[i]
        metres = w.depth.astype(np.float64) / 1000.0
        valid = (metres > 1e-3) & (metres < 10.0)
        np.testing.assert_array_equal(_np(s["valid_mask"]), valid)
        assert _np(s["valid_mask"])[0, :4].tolist() == [False, False, False, True]  # 0, 1 mm, 10 m, 9.999 m
        np.testing.assert_allclose(_np(s["depth"]), np.where(valid, metres, 0.0), rtol=1e-6)
        assert s["dataset"] == "scannet"


def test_diode_shipped_mask_is_the_valid_mask(tmp_path: Path) -> None:
    """Marigold scores DIODE's own mask; its 0.6-350 m range clips predictions only (the ``diode`` preset)."""
    written = write_diode(tmp_path / "diode", n=2)
    ds = DIODEDataset(tmp_path / "diode")
    for i, w in enumerate(written):
        s = ds[i]
        depth = w.depth[..., 0]
        valid = (w.mask != 0) & (depth > 0)
        np.testing.assert_array_equal(_np(s["valid_mask"]), valid)
        assert _np(s["valid_mask"])[0, :3].tolist() == [True, True, False]  # 0.6 m, 350 m, masked 5 m
        np.testing.assert_array_equal(_np(s["depth"]), np.where(valid, depth, 0.0))
        # Pixels outside the range stay valid where the mask says so (the generator draws 0.1-400 m).
        assert (valid & ((depth < 0.6) | (depth > 350.0))).any()
    assert DIODEDataset(tmp_path / "diode", min_depth=0.6, max_depth=350.0)[0]["valid_mask"][0, 0, :2].tolist() == [
        False,
        False,
    ]


def test_diode_mask_of_other_size_is_named(tmp_path: Path) -> None:
    written = write_diode(tmp_path / "diode", n=1)
    np.save(tmp_path / "diode" / written[0].depth_rel.replace("_depth.npy", "_depth_mask.npy"), np.ones((3, 3)))
    with pytest.raises(DataError, match=r"_depth_mask\.npy is 3x3 but its depth is 12x16"):
        DIODEDataset(tmp_path / "diode")


def test_diode_missing_mask_listed(tmp_path: Path) -> None:
    written = write_diode(tmp_path / "diode", n=1)
    (tmp_path / "diode" / written[0].depth_rel.replace("_depth.npy", "_depth_mask.npy")).unlink()
    with pytest.raises(FileNotFoundError, match=r"1 listed file\(s\) missing .*_depth_mask\.npy"):
        DIODEDataset(tmp_path / "diode")
