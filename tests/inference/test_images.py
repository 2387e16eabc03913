"""Image reading and writing of tools/predict.py: decoding at the processing size, strip-wise resized outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from d3epth.inference import decode_image, processing_size, write_outputs
from d3epth.inference.images import ROWS_PER_STRIP


def smooth_rgb(height: int, width: int) -> np.ndarray:
    """A smooth uint8 [H,W,3] image (JPEG keeps it nearly intact), different along both axes."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([x / width, y / height, (np.sin(x / 40) * np.cos(y / 30) + 1) / 2], axis=-1)
    return (rgb * 255).astype(np.uint8)


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_decoding_at_the_processing_size_matches_resizing_the_full_image(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"photo{suffix}"
    Image.fromarray(smooth_rgb(700, 1000)).save(path, quality=95) if suffix == ".jpg" else Image.fromarray(
        smooth_rgb(700, 1000)
    ).save(path)
    target = processing_size(700, 1000, 64, 32)
    decoded = decode_image(path, lambda h, w: processing_size(h, w, 64, 32))
    assert decoded.size == (700, 1000) and tuple(decoded.image.shape) == (3, *target)
    with Image.open(path) as image:  # the reference: full-size float, one antialiased resize
        full = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)
    expected = F.interpolate(full[None], size=target, mode="bilinear", align_corners=False, antialias=True)[0]
    assert (decoded.image - expected).abs().mean() < 0.01  # the reduced decode (DCT scaling, box) is close


def test_exif_rotation_is_applied_before_sizing(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90°: stored 200 wide x 100 high, displayed 100 wide x 200 high
    Image.fromarray(smooth_rgb(100, 200)).save(tmp_path / "r.jpg", exif=exif)
    decoded = decode_image(tmp_path / "r.jpg", lambda h, w: processing_size(h, w, 32, 1))
    assert decoded.size == (200, 100) and tuple(decoded.image.shape) == (3, 32, 16)


def test_a_non_finite_pixel_is_written_as_zero_and_the_rest_normalised(tmp_path: Path) -> None:
    """One NaN (e.g. an fp16 overflow) must not blank the map: the finite pixels keep their min-max scaling."""
    depth = torch.linspace(1.0, 3.0, 20).reshape(4, 5)
    depth[1, 2], depth[3, 4] = float("nan"), float("inf")
    write_outputs(tmp_path, "n", depth, npy=True, color=False, color_map="Spectral")
    written = np.load(tmp_path / "depth_npy" / "n_pred.npy")
    finite = torch.isfinite(depth).numpy()
    low, high = float(depth[0, 0]), float(depth[3, 3])  # the finite extremes
    np.testing.assert_allclose(written[finite], (depth.numpy()[finite] - low) / (high - low), atol=1e-6)
    assert written[1, 2] == 0.0 and written[3, 4] == 0.0 and written.max() == 1.0


def test_outputs_are_the_whole_map_resized_then_normalised(tmp_path: Path) -> None:
    """Written strip by strip, the outputs equal resizing the whole prediction at once, then min-max normalising."""
    depth = torch.rand(7, 5, generator=torch.Generator().manual_seed(0))
    size = (2 * ROWS_PER_STRIP + 37, 43)  # three strips, the last one partial
    write_outputs(tmp_path, "x", depth, npy=True, color=True, color_map="Spectral", size=size)
    whole = F.interpolate(depth[None, None].double(), size=size, mode="bilinear", align_corners=False)[0, 0]
    expected = ((whole - whole.min()) / (whole.max() - whole.min())).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "depth_npy" / "x_pred.npy"), expected, atol=1e-6)
    with Image.open(tmp_path / "depth_bw" / "x_pred.png") as png:
        assert png.size == size[::-1]
        assert np.abs(np.asarray(png) / 65535.0 - expected).max() <= 1 / 65535
    with Image.open(tmp_path / "depth_colored" / "x_pred_colored.png") as colored:
        assert colored.size == size[::-1] and colored.mode == "RGB"
        # the nearest and farthest pixels take the two ends of the colour map, wherever their strip is
        rgb = np.asarray(colored)
        near, far = np.unravel_index(expected.argmin(), size), np.unravel_index(expected.argmax(), size)
        assert rgb[near][0] > rgb[near][2] and rgb[far][2] > rgb[far][0]  # Spectral: near red, far blue
