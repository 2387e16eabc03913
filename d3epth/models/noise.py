"""Annealed multi-resolution ("pyramid") noise for training a diffusion depth model (Marigold, Ke et al. CVPR 2024).

Marigold replaces the Gaussian noise of the forward process by a sum of Gaussian fields at decreasing resolutions
(the paper's §3.3 and App. A.2; ``multi_res_noise_like`` in Marigold's ``src/util/multi_res_noise.py``, "original"
strategy)::

    noise = N(0, I) + Σ_{i=0..L} s^i · Upsample_bilinear(N(0, I) at (h_i, w_i)),
    (h_0, w_0) = (h, w),   (h_i, w_i) = ⌊(h_{i-1}, w_{i-1}) / r_i^i⌋ (at least 1),   r_i ~ U[2, 4)

stopping after the level where a side reaches 1 pixel, then divided by the standard deviation of the whole batch
tensor. Two details of Marigold's code are kept because its models were trained with them: level 0 (``r^0 = 1``) is a
second full-resolution field of weight 1, and each level shrinks the *previous* level's size (the loop reassigns
``w, h``), so level i is r_1 · r_2² ⋯ r_i^i times coarser than the latent and a 60x80 latent has at most three coarse
levels. With annealing the strength depends on the timestep of each sample, ``s_t = s · t / T``, so that nearly clean
latents (small t) get almost white noise and very noisy ones get strongly correlated low-frequency noise. The paper's
ablation (its Table 2) shows annealed multi-resolution noise beats both plain Gaussian and non-annealed pyramid noise.
At inference plain Gaussian (or zero) noise is used.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["annealed_strength", "multi_res_noise"]


def annealed_strength(timesteps: Tensor, num_train_timesteps: int, strength: float = 0.9) -> Tensor:
    """Per-sample pyramid strength ``s · t / T`` (Marigold's annealing).

    Args:
        timesteps: integer timesteps [B] in ``[0, T)``.
        num_train_timesteps: T (1000 for Stable Diffusion).
        strength: s, the strength at ``t = T`` (Marigold: 0.9).

    Returns:
        float32 [B].
    """
    if num_train_timesteps < 1:
        raise ValueError(f"num_train_timesteps must be >= 1, got {num_train_timesteps}")
    return strength * timesteps.to(torch.float32) / num_train_timesteps


def multi_res_noise(
    shape: Sequence[int],
    strength: float | Tensor = 0.9,
    levels: int = 9,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Multi-resolution noise with unit global standard deviation.

    Random draws happen in a fixed order (the first full-resolution field, then per level the factor r_i and the
    field), so with a seeded ``generator`` a strength of 0 returns exactly the sum of the first two ``randn`` draws
    (both full resolution) divided by its standard deviation: the annealed noise at ``t = 0`` is pure Gaussian.

    Args:
        shape: shape of the latent to noise, ``[B,C,h,w]``.
        strength: s, a float or a per-sample tensor [B] (annealed: :func:`annealed_strength`).
        levels: the last level index L (Marigold: 9, its ``range(10)``); the sizes reach 1 pixel long before.
        generator: RNG (on ``device``) for reproducible noise.
        device: device of the result.
        dtype: dtype of the result (the noise is built in float32).

    Returns:
        [B,C,h,w] noise whose standard deviation over the whole tensor is 1.
    """
    if len(shape) != 4:
        raise ValueError(f"multi_res_noise: shape must be (B, C, h, w), got {tuple(shape)}")
    if levels < 0:
        raise ValueError(f"multi_res_noise: levels must be >= 0, got {levels}")
    batch, channels, height, width = (int(s) for s in shape)
    if torch.is_tensor(strength):
        if strength.numel() not in (1, batch):
            raise ValueError(f"multi_res_noise: strength has {strength.numel()} values for a batch of {batch}")
        s = strength.to(device=device, dtype=torch.float32).reshape(-1, 1, 1, 1)
    else:
        s = torch.tensor(float(strength), device=device).reshape(1, 1, 1, 1)
    noise = torch.randn(batch, channels, height, width, generator=generator, device=device)
    h_i, w_i = height, width
    for i in range(levels + 1):
        # A random factor in [2, 4) per level rather than 2 every time, as Marigold, so the pyramid is not aligned to
        # a fixed grid; like Marigold, the previous level's size is divided (cumulative), and level 0 is full size.
        r = 2.0 + 2.0 * float(torch.rand(1, generator=generator, device=device))
        h_i, w_i = max(1, int(h_i / r**i)), max(1, int(w_i / r**i))
        coarse = torch.randn(batch, channels, h_i, w_i, generator=generator, device=device)
        noise = noise + s**i * F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
        if h_i == 1 or w_i == 1:
            break
    return (noise / noise.std()).to(dtype)
