"""Metric depth from sparse points: a known affine map recovered, sparse file I/O and matching, tools/predict.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from d3epth.errors import DataError, MissingFileError
from d3epth.inference.metric import fit_metric_depth, match_sparse, read_sparse_depth
from tests.tool_loader import load_tool

S, T = 2.5, 0.7  # the "unknown" scale and shift


def sparse_of(metric: torch.Tensor, keep: float, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    points = torch.from_numpy(rng.random(tuple(metric.shape)) < keep)
    return torch.where(points, metric, torch.zeros_like(metric))


def test_depth_space_recovers_a_known_affine_map_from_sparse_points() -> None:
    relative = torch.rand(30, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) + 0.1
    metric = S * relative + T
    sparse = sparse_of(metric, keep=0.05)
    sparse[0, 0] = float("nan")  # non-finite and negative values are no points (the reader maps them to 0)
    sparse = torch.where(torch.isfinite(sparse) & (sparse > 0), sparse, 0.0)
    fit = fit_metric_depth(relative, sparse, "depth")
    assert fit.scale == pytest.approx(S) and fit.shift == pytest.approx(T)
    torch.testing.assert_close(fit.depth, metric)  # every pixel, not only the points
    assert fit.num_points == int((sparse > 0).sum())


def test_disparity_space_recovers_metric_depth_of_a_disparity_prediction() -> None:
    disparity = torch.rand(20, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) + 0.2
    metric = 1.0 / (S * disparity + T)
    fit = fit_metric_depth(disparity, sparse_of(metric, keep=0.1), "disparity")
    assert fit.scale == pytest.approx(S) and fit.shift == pytest.approx(T)
    torch.testing.assert_close(fit.depth, metric)


def test_too_few_points_is_an_error() -> None:
    sparse = torch.zeros(8, 8, dtype=torch.float64)
    sparse[1, 1], sparse[2, 2] = 3.0, 4.0
    with pytest.raises(DataError, match=r"^2 usable sparse point\(s\), need at least 10"):
        fit_metric_depth(torch.rand(8, 8, dtype=torch.float64), sparse)


def test_sparse_files_read_in_metres_and_match_by_stem(tmp_path: Path) -> None:
    stored = np.zeros((4, 5), np.uint16)
    stored[1, 2] = 2560  # 10 m at the KITTI scale 256
    Image.fromarray(stored).save(tmp_path / "a.png")
    assert float(read_sparse_depth(tmp_path / "a.png")[1, 2]) == 10.0
    assert float(read_sparse_depth(tmp_path / "a.png", 1000.0)[1, 2]) == 2.56
    np.save(tmp_path / "b.npy", np.array([[np.inf, -1.0, 2.0]]))
    assert read_sparse_depth(tmp_path / "b.npy").tolist() == [[0.0, 0.0, 2.0]]
    assert match_sparse(["x/a", "b"], tmp_path) == [tmp_path / "a.png", tmp_path / "b.npy"]
    with pytest.raises(MissingFileError, match=r"same stem for 1 image\(s\): c$"):
        match_sparse(["a", "c"], tmp_path)
    with pytest.raises(DataError, match="one file for 2 images"):
        match_sparse(["a", "b"], tmp_path / "a.png")
    (tmp_path / "c.exr").write_bytes(b"")
    with pytest.raises(DataError, match=r"unknown sparse depth type '\.exr'"):
        read_sparse_depth(tmp_path / "c.exr")


def test_predict_writes_metric_depth_in_metres_and_millimetres(stage2: tuple, tmp_path: Path) -> None:
    predict = load_tool("predict")
    rng = np.random.default_rng(0)
    (tmp_path / "in").mkdir()
    Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(tmp_path / "in" / "view.png")
    args = [str(tmp_path / "in"), "--model", str(stage2[1]), "--num-workers", "0", "--quiet", "--no-color"]
    assert predict.main([*args, "--out", str(tmp_path / "rel"), "--npy"]) == 0
    relative = np.load(tmp_path / "rel" / "depth_npy" / "view_pred.npy").astype(np.float64)  # affine in the model's

    metric = 3.0 * relative + 1.5  # metres, 1.5-4.5 m
    stored = np.round(metric * 256.0).astype(np.uint16)
    stored[rng.random(metric.shape) > 0.1] = 0  # ~10 % of the pixels measured
    (tmp_path / "lidar").mkdir()
    Image.fromarray(stored).save(tmp_path / "lidar" / "view.png")
    assert predict.main([*args, "--out", str(tmp_path / "out"), "--align-to", str(tmp_path / "lidar")]) == 0
    metres = np.load(tmp_path / "out" / "depth_metric" / "view_metric.npy")
    np.testing.assert_allclose(metres, metric, atol=5e-3)  # 1/256 m quantisation of the points
    mm = np.asarray(Image.open(tmp_path / "out" / "depth_metric" / "view_metric_mm.png"))
    np.testing.assert_allclose(mm.astype(np.float64), metric * 1000.0, atol=6.0)


def test_predict_alignment_errors_are_one_line(stage2: tuple, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    predict = load_tool("predict")
    (tmp_path / "in").mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "in" / "img.png")
    (tmp_path / "lidar").mkdir()
    args = [str(tmp_path / "in"), "--model", str(stage2[1]), "--out", str(tmp_path / "o"), "--quiet"]
    assert predict.main([*args, "--num-workers", "0", "--align-to", str(tmp_path / "lidar")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no sparse depth (.png/.npy) of the same stem for 1 image(s): img" in err
    Image.fromarray(np.zeros((16, 16), np.uint16)).save(tmp_path / "lidar" / "img.png")
    assert predict.main([*args, "--num-workers", "0", "--align-to", str(tmp_path / "lidar")]) != 0
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "0 usable sparse point(s), need at least 10" in err and "img.png" in err
