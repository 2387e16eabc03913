"""tools/predict.py: image modes and sizes, output files and their round trip, batching, error handling."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from d3epth.inference import load_predictor, read_image
from d3epth.inference.acceleration import accelerate_predictor
from tests.tool_loader import load_tool

predict = load_tool("predict")


@pytest.fixture(scope="module")
def checkpoint(stage2: tuple) -> Path:
    return stage2[1]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RGB, RGBA (same RGB), greyscale and 16-bit greyscale images of odd sizes."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(folder / "rgb.png")
    alpha = rng.integers(0, 256, (37, 53, 1), dtype=np.uint8)
    Image.fromarray(np.concatenate([rgb, alpha], axis=-1)).save(folder / "rgba.png")
    Image.fromarray(rng.integers(0, 256, (41, 29), dtype=np.uint8)).save(folder / "grey.png")
    Image.fromarray(rng.integers(0, 65536, (23, 31), dtype=np.uint16)).save(folder / "grey16.png")
    return folder


def as_input(rgb: np.ndarray) -> torch.Tensor:
    """uint8 [H,W,3] → [1,3,H,W] in [−1,1], the model's input convention, written out independently."""
    return torch.from_numpy(rgb.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]


def read_png16(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "I;16", image.mode
        return np.asarray(image).astype(np.float64) / 65535.0


def run(args: list[str]) -> int:
    # The file-format tests compare with an fp32 reference, so they pin fp32 (the default, auto, is bf16 on CPUs with
    # native bf16); the precision tests below pass --precision themselves.
    precision = [] if "--precision" in args else ["--precision", "fp32"]
    return predict.main([*args, *precision, "--num-workers", "0", "--quiet"])


def test_writes_all_outputs_at_the_input_sizes(tmp_path: Path, checkpoint: Path, images: Path) -> None:
    out = tmp_path / "out"
    assert run([str(images), "--model", str(checkpoint), "--out", str(out), "--npy", "--batch-size", "2"]) == 0
    sizes = {"rgb": (53, 37), "rgba": (53, 37), "grey": (29, 41), "grey16": (31, 23)}  # PIL (W, H)
    for name, size in sizes.items():
        for file in (f"depth_bw/{name}_pred.png", f"depth_colored/{name}_pred_colored.png"):
            with Image.open(out / file) as image:
                assert image.size == size, file
        with Image.open(out / f"depth_colored/{name}_pred_colored.png") as image:
            assert image.mode == "RGB"
        assert np.load(out / f"depth_npy/{name}_pred.npy").shape == size[::-1]


def test_png16_round_trips_to_the_prediction(tmp_path: Path, checkpoint: Path, images: Path) -> None:
    out = tmp_path / "out"
    assert run([str(images / "rgb.png"), "--model", str(checkpoint), "--out", str(out), "--npy"]) == 0
    predictor = load_predictor(checkpoint)
    accelerate_predictor(predictor, "fp32")  # the tool's inference form (fused: equal to ~1e-6, tested elsewhere)
    with Image.open(images / "rgb.png") as image:
        depth = predictor.predict(as_input(np.asarray(image)))[0, 0].double().numpy()
    expected = (depth - depth.min()) / (depth.max() - depth.min())  # per-image min-max normalisation
    png = read_png16(out / "depth_bw" / "rgb_pred.png")
    assert np.abs(png - expected).max() <= 1 / 65535
    assert png.min() == 0.0 and png.max() == 1.0  # uses the full 16-bit range
    np.testing.assert_allclose(np.load(out / "depth_npy" / "rgb_pred.npy"), expected, atol=1e-6)


def test_image_modes_are_converted(tmp_path: Path, checkpoint: Path, images: Path) -> None:
    out = tmp_path / "out"
    assert run([str(images), "--model", str(checkpoint), "--out", str(out), "--npy"]) == 0
    npy = {name: np.load(out / "depth_npy" / f"{name}_pred.npy") for name in ("rgb", "rgba", "grey")}
    np.testing.assert_array_equal(npy["rgba"], npy["rgb"])  # alpha dropped: same RGB, same depth
    with Image.open(images / "grey.png") as image:
        grey = np.asarray(image)
    depth = load_predictor(checkpoint).predict(as_input(np.repeat(grey[..., None], 3, axis=-1)))[0, 0].numpy()
    np.testing.assert_allclose(npy["grey"], (depth - depth.min()) / (depth.max() - depth.min()), atol=1e-5)
    # 16-bit greyscale is scaled by 1/65535, not clipped at 255.
    with Image.open(images / "grey16.png") as image:
        values = np.asarray(image).astype(np.float32)
    tensor = read_image(images / "grey16.png")
    torch.testing.assert_close(tensor, torch.from_numpy(values / 65535 * 2 - 1).expand(3, -1, -1))


def test_exif_orientation_is_applied(tmp_path: Path, checkpoint: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8)).save(tmp_path / "photo.jpg", exif=exif)
    assert read_image(tmp_path / "photo.jpg").shape == (3, 30, 20)


def test_batching_and_processing_resolution(tmp_path: Path, checkpoint: Path, images: Path) -> None:
    for i in range(3):  # three same-size images form one batch
        Image.open(images / "rgb.png").rotate(90 * i).save(tmp_path / f"same_{i}.png")
    one, three = tmp_path / "one", tmp_path / "three"
    glob = str(tmp_path / "same_*.png")
    assert run([glob, "--model", str(checkpoint), "--out", str(one), "--npy"]) == 0
    assert run([glob, "--model", str(checkpoint), "--out", str(three), "--npy", "--batch-size", "3"]) == 0
    for i in range(3):
        a, b = (np.load(d / "depth_npy" / f"same_{i}_pred.npy") for d in (one, three))
        np.testing.assert_allclose(a, b, atol=1e-5)
    low = tmp_path / "low"
    args = [str(images), "--model", str(checkpoint), "--out", str(low), "--npy", "--processing-resolution", "32"]
    assert run(args) == 0
    assert np.load(low / "depth_npy" / "grey_pred.npy").shape == (41, 29)
    full = np.load(one / "depth_npy" / "same_0_pred.npy")
    assert not np.allclose(np.load(low / "depth_npy" / "rgb_pred.npy"), full, atol=1e-3)  # it did run at 32 px


# ------------------------------------------------------------------------------------------------------------ errors
def test_missing_input(tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run([str(tmp_path / "nope.jpg"), "--model", str(checkpoint), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: input not found: {tmp_path / 'nope.jpg'}"]
    assert run([str(tmp_path / "*.jpg"), "--model", str(checkpoint), "--out", str(tmp_path / "o")]) == 2
    assert "no image matches the pattern" in capsys.readouterr().err


def test_corrupt_image_fails_or_is_skipped(
    tmp_path: Path, checkpoint: Path, images: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "a_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    Image.open(images / "rgb.png").save(folder / "b_good.png")
    out = tmp_path / "out"
    assert run([str(folder), "--model", str(checkpoint), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert re.search(r"error: cannot read image .*a_broken\.png: ", err)
    assert not (out / "depth_bw" / "b_good_pred.png").exists()  # failed fast
    assert run([str(folder), "--model", str(checkpoint), "--out", str(out), "--skip-errors"]) == 1
    err = capsys.readouterr().err
    assert "warning: skipped: cannot read image" in err and "1 image(s) could not be read" in err
    assert (out / "depth_bw" / "b_good_pred.png").is_file()


def test_bad_model_sources(tmp_path: Path, images: Path, tiny_checkpoint, capsys: pytest.CaptureFixture[str]) -> None:
    image = str(images / "rgb.png")
    (tmp_path / "not_a_model").mkdir()
    assert run([image, "--model", str(tmp_path / "not_a_model"), "--out", str(tmp_path / "o")]) == 2
    assert "not_a_model is not a model directory" in capsys.readouterr().err
    _, wrong = tiny_checkpoint("autoencoder", name="ae.ckpt")
    assert run([image, "--model", str(wrong), "--out", str(tmp_path / "o")]) == 2
    assert "ae.ckpt is an AutoencoderTask checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_float_image_is_refused(
    tmp_path: Path, checkpoint: Path, bad: float, capsys: pytest.CaptureFixture[str]
) -> None:
    values = np.linspace(0, 1, 12 * 16, dtype=np.float32).reshape(12, 16)
    Image.fromarray(values).save(tmp_path / "finite.tif")  # float32 greyscale: Pillow mode "F"
    values[3, 5] = bad
    Image.fromarray(values).save(tmp_path / "bad.tif")
    out = tmp_path / "out"
    assert run([str(tmp_path / "finite.tif"), "--model", str(checkpoint), "--out", str(out)]) == 0
    capsys.readouterr()
    assert run([str(tmp_path / "bad.tif"), "--model", str(checkpoint), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.fullmatch(
        rf"error: cannot read image {re.escape(str(tmp_path / 'bad.tif'))}: 1 pixel value\(s\) are NaN or Inf; .*",
        err[0],
    )
    assert not (out / "depth_bw" / "bad_pred.png").exists()


@pytest.mark.parametrize("native_bf16", [True, False])
def test_precision_auto_follows_the_device(
    tmp_path: Path, checkpoint: Path, images: Path, monkeypatch: pytest.MonkeyPatch, native_bf16: bool
) -> None:
    """auto = bf16 autocast where the CPU has native bf16, else exactly the fp32 result."""
    from d3epth.inference import acceleration

    monkeypatch.setattr(acceleration, "bf16_supported", lambda device: native_bf16)
    seen: list[torch.dtype] = []
    monkeypatch.setattr(acceleration.InferenceModel, "forward", _recording_forward(seen))
    out = {name: tmp_path / name for name in ("auto", "fp32")}
    for name, folder in out.items():
        args = [str(images / "rgb.png"), "--model", str(checkpoint), "--out", str(folder), "--npy"]
        assert run([*args, "--precision", name]) == 0
    assert seen[0] == (torch.bfloat16 if native_bf16 else torch.float32) and seen[-1] == torch.float32
    auto, fp32 = (np.load(folder / "depth_npy" / "rgb_pred.npy") for folder in out.values())
    if native_bf16:  # bf16 keeps 8 bits of mantissa: close to fp32, not equal
        assert np.abs(auto - fp32).max() < 0.05 and not np.array_equal(auto, fp32)
    else:
        np.testing.assert_array_equal(auto, fp32)


def _recording_forward(seen: list[torch.dtype]):
    """InferenceModel.forward that records the autocast dtype it runs with."""
    from d3epth.inference.acceleration import InferenceModel

    original = InferenceModel.forward

    def forward(self: InferenceModel, image: torch.Tensor) -> torch.Tensor:
        seen.append(self.dtype)
        return original(self, image)

    return forward


def test_teacher_outputs_are_resized_back_as_marigolds_pipeline(tmp_path: Path, tiny_marigold_dir: Path) -> None:
    """A teacher run above the image's size: the CLI's written depth equals the library predictor's (Marigold's
    non-antialiased resize back), not an antialiased shrink."""
    rgb = np.asarray(Image.fromarray(np.random.default_rng(0).integers(0, 255, (37, 53, 3), dtype=np.uint8)))
    Image.fromarray(rgb).save(tmp_path / "small.png")
    args = [str(tmp_path / "small.png"), "-m", str(tiny_marigold_dir), "-o", str(tmp_path / "out"), "--npy"]
    assert run([*args, "--processing-resolution", "64", "--precision", "fp32"]) == 0
    written = np.load(tmp_path / "out" / "depth_npy" / "small_pred.npy")
    predictor = load_predictor(tiny_marigold_dir)
    depth = predictor.predict(as_input(rgb), processing_resolution=64)[0, 0]
    expected = ((depth - depth.min()) / (depth.max() - depth.min())).numpy()
    assert np.abs(written - expected).max() < 1e-3
