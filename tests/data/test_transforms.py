"""Joint transforms keep image, depth, mask and intrinsics aligned; depth normalisation matches the formula."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from d3epth.data.transforms import (
    Compose,
    HorizontalFlip,
    KBCrop,
    RandomCrop,
    Resize,
    _quantiles,
    crop_sample,
    normalize_depth,
)


def coordinate_sample(height: int = 12, width: int = 16) -> dict:
    """A sample whose every raster encodes the pixel's (row, col), so alignment can be read back from any key."""
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    code = (rows * width + cols).float()
    image = torch.stack([rows / (height - 1), cols / (width - 1), torch.zeros_like(code)]) * 2 - 1
    return {
        "image": image.float(),
        "depth": (code + 1)[None],  # metres, distinct per pixel
        "valid_mask": (code % 3 != 0)[None],
        "intrinsics": torch.tensor([[20.0, 0, 7.0], [0, 21.0, 5.0], [0, 0, 1]]),
        "dataset": "toy",
        "path": "toy/0.png",
    }


def decode(sample: dict, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, col) of every output pixel read from the image and from the depth."""
    img_rows = ((sample["image"][0] + 1) / 2 * (height - 1)).round()
    img_cols = ((sample["image"][1] + 1) / 2 * (width - 1)).round()
    code = sample["depth"][0] - 1
    return torch.stack([img_rows, img_cols]), torch.stack([code // width, code % width])


def assert_aligned(out: dict, height: int = 12, width: int = 16) -> None:
    from_image, from_depth = decode(out, height, width)
    assert torch.equal(from_image, from_depth)
    code = out["depth"][0] - 1
    assert torch.equal(out["valid_mask"][0], code % 3 != 0)  # mask still describes the same pixels


def test_flip_twice_is_identity_and_mirrors_everything() -> None:
    s = coordinate_sample()
    flip = HorizontalFlip(p=1.0)
    once = flip(s)
    assert torch.equal(once["depth"], s["depth"].flip(-1))
    assert torch.equal(once["valid_mask"], s["valid_mask"].flip(-1))
    assert once["intrinsics"][0, 2].item() == 16 - 1 - 7.0  # cx' = W - 1 - cx
    assert_aligned(once)
    twice = flip(once)
    for key in ("image", "depth", "valid_mask", "intrinsics"):
        assert torch.equal(twice[key], s[key]), key
    assert twice["path"] == s["path"]


def test_flip_probability_and_determinism() -> None:
    s = coordinate_sample()
    flip = HorizontalFlip(p=0.5)
    torch.manual_seed(3)
    flags = [not torch.equal(flip(s)["depth"], s["depth"]) for _ in range(400)]
    # Binomial(400, 0.5): 4 sigma = 40.
    assert abs(sum(flags) - 200) < 40
    torch.manual_seed(3)
    assert flags == [not torch.equal(flip(s)["depth"], s["depth"]) for _ in range(400)]
    assert torch.equal(HorizontalFlip(p=0.0)(s)["depth"], s["depth"])


def test_flipped_intrinsics_project_mirrored_points() -> None:
    s = coordinate_sample()
    out = HorizontalFlip(p=1.0)(s)
    point = torch.tensor([0.3, -0.2, 2.0])
    u, v, _ = (s["intrinsics"] @ point / point[2]).tolist()
    mirrored = torch.tensor([-0.3, -0.2, 2.0])  # a mirrored camera sees x -> -x
    u2, v2, _ = (out["intrinsics"] @ mirrored / mirrored[2]).tolist()
    assert u2 == pytest.approx(16 - 1 - u) and v2 == pytest.approx(v)


def test_resize_nearest_upsample_replicates_blocks() -> None:
    s = coordinate_sample(6, 8)
    out = Resize([12, 16])(s)
    expected = np.repeat(np.repeat(s["depth"][0].numpy(), 2, axis=0), 2, axis=1)
    np.testing.assert_array_equal(out["depth"][0].numpy(), expected)
    np.testing.assert_array_equal(
        out["valid_mask"][0].numpy(), np.repeat(np.repeat(s["valid_mask"][0].numpy(), 2, 0), 2, 1)
    )
    assert out["valid_mask"].dtype == torch.bool


@pytest.mark.parametrize("size", [[5, 7], [9, 11], [24, 30]])
def test_resize_keeps_depth_values_and_mask_consistent(size: list[int]) -> None:
    s = coordinate_sample()
    out = Resize(size, image_interpolation="nearest-exact")(s)
    assert out["depth"].shape == (1, *size)
    assert set(out["depth"].flatten().tolist()) <= set(s["depth"].flatten().tolist())
    assert_aligned(out)  # nearest-exact image and depth pick the same source pixels


def test_resize_bilinear_image_stays_in_range() -> None:
    s = coordinate_sample()
    s["image"] = torch.rand(3, 12, 16) * 2 - 1
    out = Resize([5, 7])(s)
    assert out["image"].shape == (3, 5, 7)
    assert out["image"].min() >= -1 and out["image"].max() <= 1
    # Antialiased downsampling averages: a constant image stays constant.
    s["image"] = torch.full((3, 12, 16), 0.25)
    torch.testing.assert_close(Resize([5, 7])(s)["image"], torch.full((3, 5, 7), 0.25))


def test_resize_intrinsics_scale_with_pixel_centres() -> None:
    s = coordinate_sample(12, 16)
    k = Resize([6, 8])(s)["intrinsics"]
    # Half size: f/2, and pixel-centre coordinates map as (c + 0.5) / 2 - 0.5.
    torch.testing.assert_close(k, torch.tensor([[10.0, 0, 3.25], [0, 10.5, 2.25], [0, 0, 1]]))


def test_crop_and_kb_crop_offsets() -> None:
    s = coordinate_sample(12, 16)
    out = crop_sample(s, 2, 3, 5, 6)
    assert torch.equal(out["depth"], s["depth"][:, 2:7, 3:9])
    assert out["intrinsics"][0, 2].item() == 7.0 - 3 and out["intrinsics"][1, 2].item() == 5.0 - 2
    kb = KBCrop()({"image": torch.zeros(3, 375, 1242), "depth": torch.arange(375 * 1242.0).reshape(1, 375, 1242)})
    assert kb["depth"].shape == (1, 352, 1216)
    assert kb["depth"][0, 0, 0].item() == 23 * 1242 + 13  # top 23, left 13 (Marigold's kitti_benchmark_crop)
    with pytest.raises(ValueError, match=r"toy/0\.png: image is 12x16, smaller than the KB crop 352x1216"):
        KBCrop()(s)


def test_random_crop_aligned_and_covers_positions() -> None:
    s = coordinate_sample()
    torch.manual_seed(0)
    corners = set()
    for _ in range(200):
        out = RandomCrop([5, 6])(s)
        assert out["depth"].shape == (1, 5, 6)
        assert_aligned(out)
        top, left = divmod(int(out["depth"][0, 0, 0].item() - 1), 16)
        assert out["intrinsics"][0, 2].item() == 7.0 - left and out["intrinsics"][1, 2].item() == 5.0 - top
        corners.add((top, left))
    assert len(corners) > 40  # of 8 x 11 possible positions
    with pytest.raises(ValueError, match=r"RandomCrop: crop 13x6 is larger than the 12x16 image"):
        RandomCrop([13, 6])(s)


def test_compose_applies_in_order() -> None:
    s = coordinate_sample()
    out = Compose([Resize([6, 8], image_interpolation="nearest-exact"), HorizontalFlip(1.0)])(s)
    ref = HorizontalFlip(1.0)(Resize([6, 8], image_interpolation="nearest-exact")(s))
    for key in ("image", "depth", "valid_mask", "intrinsics"):
        assert torch.equal(out[key], ref[key])


def test_mismatched_raster_refused_but_flipped() -> None:
    s = coordinate_sample()
    s["latent_grid"] = torch.randn(4, 3, 2)
    with pytest.raises(ValueError, match=r"'latent_grid' has spatial size \(3, 2\).*image is \(12, 16\)"):
        Resize([6, 8])(s)
    assert torch.equal(HorizontalFlip(1.0)(s)["latent_grid"], s["latent_grid"].flip(-1))


def test_lone_teacher_target_is_not_mirrored() -> None:
    s = coordinate_sample()
    s["teacher_latent"] = torch.randn(4, 3, 2)
    with pytest.raises(ValueError, match=r"'teacher_latent' without 'teacher_latent_flipped'.*not flip-equivariant"):
        HorizontalFlip(1.0)(s)
    assert HorizontalFlip(0.0)(s) is s  # no flip, nothing to refuse


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"Resize size must be \[height, width\]"):
        Resize([480])
    with pytest.raises(ValueError, match=r"image_interpolation must be one of"):
        Resize([4, 4], image_interpolation="lanczos")
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\], got 1.5"):
        HorizontalFlip(1.5)


# ----------------------------------------------------------------------------------------------- normalisation


def test_normalize_depth_matches_numpy_quantiles() -> None:
    gen = torch.Generator().manual_seed(0)
    depth = torch.rand(1, 30, 40, generator=gen) * 10
    mask = torch.rand(1, 30, 40, generator=gen) > 0.3
    d2, d98 = np.quantile(depth[mask].double().numpy(), [0.02, 0.98])
    expected = np.clip((depth.numpy() - d2) / (d98 - d2) * 2 - 1, -1, 1)
    np.testing.assert_allclose(normalize_depth(depth, mask).numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("n", [1, 2, 51, 1001, 307_200])
def test_quantiles_equal_torch_quantile_bit_for_bit(n: int) -> None:
    # The loader's quantiles select order statistics by partition instead of sorting; the result must be torch's own.
    gen = torch.Generator().manual_seed(n)
    for values in (
        torch.rand(n, generator=gen) * 20,
        torch.randn(n, generator=gen).exp(),  # heavy tail: large gaps between neighbours expose the weight
        (torch.rand(n, generator=gen) * 60).round() / 3,  # ties
    ):
        for qs in ((0.02, 0.98), (0.0, 0.5, 1.0), (0.1234,)):
            assert _quantiles(values, qs) == torch.quantile(values, torch.tensor(qs)).tolist()


def test_normalize_depth_hand_values() -> None:
    # Valid depths 1..101 m: q02 = 3, q98 = 99 (linear interpolation on 101 points).
    depth = torch.arange(1.0, 102.0).reshape(1, 1, 101)
    out = normalize_depth(depth, torch.ones_like(depth, dtype=torch.bool))
    assert out[0, 0, 2].item() == pytest.approx(-1.0)  # 3 m -> -1
    assert out[0, 0, 50].item() == pytest.approx(0.0)  # 51 m = midpoint -> 0
    assert out[0, 0, 98].item() == pytest.approx(1.0)  # 99 m -> +1
    assert out[0, 0, 0].item() == -1.0 and out[0, 0, 100].item() == 1.0  # clipped


def test_normalize_depth_degenerate_cases() -> None:
    depth = torch.full((1, 4, 4), 3.0)
    none = torch.zeros(1, 4, 4, dtype=torch.bool)
    assert torch.equal(normalize_depth(depth, none), torch.zeros(1, 4, 4))
    assert torch.equal(normalize_depth(depth, ~none), torch.zeros(1, 4, 4))  # flat depth: no spread
    with pytest.raises(ValueError, match="differ"):
        normalize_depth(depth, none[:, :2])


def test_large_image_quantile_path_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    import d3epth.data.transforms as transforms

    gen = torch.Generator().manual_seed(1)
    depth, mask = torch.rand(1, 50, 60, generator=gen), torch.rand(1, 50, 60, generator=gen) > 0.2
    small = normalize_depth(depth, mask)
    monkeypatch.setattr(transforms, "_TORCH_QUANTILE_MAX", 100)  # force the kthvalue path used beyond 2**24 pixels
    torch.testing.assert_close(normalize_depth(depth, mask), small)
