"""d3epth.models.noise: Marigold's annealed multi-resolution noise."""

from __future__ import annotations

import pytest
import torch

from d3epth.models.noise import annealed_strength, multi_res_noise


def test_multi_res_noise_has_unit_std_and_low_frequencies() -> None:
    shape = (8, 4, 32, 32)
    pyramid = multi_res_noise(shape, 0.9, generator=torch.Generator().manual_seed(0))
    white = multi_res_noise(shape, 0.0, generator=torch.Generator().manual_seed(0))
    assert pyramid.shape == shape
    assert float(pyramid.std()) == pytest.approx(1.0, abs=1e-5)

    def neighbour_correlation(x: torch.Tensor) -> float:
        a, b = x[..., :, :-1].flatten(), x[..., :, 1:].flatten()
        return float(torch.corrcoef(torch.stack([a, b]))[0, 1])

    # Coarse levels make neighbouring values correlated; white noise is not.
    assert neighbour_correlation(pyramid) > 0.2
    assert abs(neighbour_correlation(white)) < 0.05


def test_annealed_noise_at_t0_is_pure_gaussian() -> None:
    shape = (3, 4, 16, 24)
    t = torch.zeros(3, dtype=torch.long)
    strength = annealed_strength(t, 1000, 0.9)
    noise = multi_res_noise(shape, strength, generator=torch.Generator().manual_seed(7))
    # Marigold's level 0 is a second full-resolution field (weight s^0 = 1): the draws are randn, rand (r_0), randn.
    generator = torch.Generator().manual_seed(7)
    first = torch.randn(shape, generator=generator)
    torch.rand(1, generator=generator)
    gaussian = first + torch.randn(shape, generator=generator)
    torch.testing.assert_close(noise, gaussian / gaussian.std())
    torch.testing.assert_close(annealed_strength(torch.tensor([0, 500, 999]), 1000), torch.tensor([0.0, 0.45, 0.8991]))


def test_each_level_shrinks_the_previous_one_as_marigold(monkeypatch: pytest.MonkeyPatch) -> None:
    """Level 0 is full size; level i divides level i-1's size by r_i^i, r_i in [2, 4), until a side is 1 pixel."""
    import torch.nn.functional as F

    sizes: list[tuple[int, int]] = []
    interpolate = F.interpolate

    def spy(field: torch.Tensor, **kwargs: object) -> torch.Tensor:
        sizes.append(tuple(field.shape[-2:]))
        return interpolate(field, **kwargs)

    monkeypatch.setattr(F, "interpolate", spy)
    for seed in range(20):
        sizes.clear()
        multi_res_noise((1, 4, 60, 80), 0.9, generator=torch.Generator().manual_seed(seed))
        assert sizes[0] == (60, 80)
        assert 1 in sizes[-1] and all(1 not in size for size in sizes[:-1])
        for i in range(1, len(sizes)):
            for before, after in zip(sizes[i - 1], sizes[i], strict=True):
                # after = max(1, floor(before / r^i)) with 2^i <= r^i < 4^i
                assert after == 1 or before / 4**i - 1 < after <= before / 2**i
        assert len(sizes) <= 4  # 60 -> (15, 30] -> (0.9, 7.5] -> 1 at the latest: three coarse levels


def test_multi_res_noise_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(B, C, h, w\)"):
        multi_res_noise((4, 16, 16))
    with pytest.raises(ValueError, match="strength has 2 values"):
        multi_res_noise((3, 4, 8, 8), torch.ones(2))
