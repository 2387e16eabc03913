"""N-step sampling of the teacher: the DDIM loop, test-time ensembles and depth in [0, 1] for images.

:func:`predict_latent` is the DDIM loop of ``MarigoldDepthPipeline`` (diffusers
``pipelines/marigold/pipeline_marigold_depth.py``) with the teacher's scheduler: trailing spacing, so the first step
is at t = 999 (E2E-FT (Garcia et al., WACV 2025) §3), and zero (E2E-FT, deterministic) or Gaussian (Marigold) initial
latents. :func:`predict_depth` wraps it as the pipeline does — resize, pad, encode, sample, decode, unpad, ensemble
(diffusers' ``MarigoldDepthPipeline.ensemble_depth``: affine alignment + median, Marigold (Ke et al., CVPR 2024)
§3.4), resize back — using diffusers' ``MarigoldImageProcessor`` for the resizing.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from diffusers import MarigoldDepthPipeline
from diffusers.pipelines.marigold.marigold_image_processing import MarigoldImageProcessor
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

from d3epth.models.padding import crop_to, pad_to_multiple

if TYPE_CHECKING:
    from d3epth.models.teacher.model import DiffusionDepthTeacher

__all__ = ["DepthPrediction", "predict_depth", "predict_latent"]


class DepthPrediction(NamedTuple):
    """Output of :func:`predict_depth` (and ``DiffusionDepthTeacher.predict_depth``).

    Attributes:
        depth: affine-invariant depth in [0, 1] (0 = near), [B,1,H,W].
        uncertainty: ensemble spread (median absolute deviation, or std for ``reduction="mean"``) in the same units,
            [B,1,H,W]; ``None`` unless ``output_uncertainty`` was requested with ``ensemble_size > 1``.
    """

    depth: Tensor
    uncertainty: Tensor | None


def predict_latent(
    teacher: DiffusionDepthTeacher,
    rgb_latent: Tensor,
    num_steps: int = 1,
    latents: Tensor | None = None,
    generator: torch.Generator | None = None,
    init_noise: str = "zeros",
    batch_size: int | None = None,
) -> Tensor:
    """N-step DDIM sampling of the depth latent (the ``MarigoldDepthPipeline`` loop).

    With trailing spacing the first step is at t = 999. Note that the last DDIM step returns
    ``√ᾱ_prev·x0 + √(1−ᾱ_prev)·ε̂`` with ``ᾱ_prev = 1`` only if ``set_alpha_to_one``; SD2 configs set it False
    (ᾱ_prev = ᾱ_0 = 0.99915), so 1-step DDIM differs slightly from the x0 of ``DiffusionDepthTeacher.one_step``.

    Args:
        teacher: the teacher whose UNet and DDIM scheduler run.
        rgb_latent: [N,4,h,w].
        num_steps: DDIM steps.
        latents: initial z_T [N,4,h,w]; overrides ``init_noise``.
        generator: RNG for ``init_noise="gaussian"``.
        init_noise: ``"zeros"`` (E2E-FT, deterministic) or ``"gaussian"`` (Marigold).
        batch_size: UNet batch size (default: all N at once).

    Returns:
        [N,4,h,w].
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if latents is not None and generator is not None:
        raise ValueError("pass either latents or generator, not both")
    if latents is None:
        if init_noise == "zeros":
            latents = torch.zeros_like(rgb_latent)
        elif init_noise == "gaussian":
            latents = randn_tensor(
                rgb_latent.shape, generator=generator, device=rgb_latent.device, dtype=rgb_latent.dtype
            )
        else:
            raise ValueError(f"init_noise must be 'zeros' or 'gaussian', got {init_noise!r}")
    elif latents.shape != rgb_latent.shape:
        raise ValueError(f"latents has shape {tuple(latents.shape)}, expected {tuple(rgb_latent.shape)}")
    batch_size = batch_size or rgb_latent.shape[0]
    # A private copy keeps set_timesteps state out of the shared scheduler (safe under re-entrant use).
    scheduler = copy.deepcopy(teacher.scheduler)
    outputs = []
    for i in range(0, rgb_latent.shape[0], batch_size):
        rgb, z = rgb_latent[i : i + batch_size], latents[i : i + batch_size]
        scheduler.set_timesteps(num_steps, device=rgb.device)
        for t in scheduler.timesteps:
            model_output = teacher(rgb, z, t)
            z = scheduler.step(model_output, t, z, generator=generator).prev_sample
        outputs.append(z)
    return torch.cat(outputs, dim=0)


@torch.no_grad()
def predict_depth(
    teacher: DiffusionDepthTeacher,
    image: Tensor,
    num_steps: int = 1,
    ensemble_size: int = 1,
    processing_resolution: int | None = None,
    match_input_resolution: bool = True,
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
    latents: Tensor | None = None,
    init_noise: str = "zeros",
    output_uncertainty: bool = False,
    resample_method_input: str = "bilinear",
    resample_method_output: str = "bilinear",
    ensembling_kwargs: dict[str, Any] | None = None,
) -> DepthPrediction:
    """Affine-invariant depth in [0, 1] for a batch of images, as ``MarigoldDepthPipeline`` computes it.

    Resize (longer edge = ``processing_resolution``, antialiased), replicate-pad bottom/right to a multiple of f,
    encode, DDIM (``num_steps``), decode (mean of 3 channels, clip, ``(d + 1) / 2``), crop the padding, ensemble
    (affine alignment + median, ``MarigoldDepthPipeline.ensemble_depth``), resize back.

    Args:
        teacher: the teacher.
        image: [B,3,H,W] in [-1, 1].
        num_steps: DDIM steps (1 with trailing spacing = the E2E-FT / Marigold v1-1 setting).
        ensemble_size: predictions per image (needs ``init_noise="gaussian"`` or ``latents`` to differ).
        processing_resolution: longer edge for processing; ``None`` or 0 = native resolution.
        match_input_resolution: resize the result back to ``H × W``.
        batch_size: UNet / VAE batch size (default: everything at once).
        generator: RNG for Gaussian initial latents.
        latents: initial latents [B·ensemble_size,4,h,w] (member-major per image, as the pipeline).
        init_noise: ``"zeros"`` or ``"gaussian"`` when ``latents`` is None.
        output_uncertainty: also return the ensemble's uncertainty (needs ``ensemble_size > 1``).
        resample_method_input: interpolation for the input resize.
        resample_method_output: interpolation for the output resize.
        ensembling_kwargs: passed to ``MarigoldDepthPipeline.ensemble_depth`` (``reduction``, ``max_iter``, …).

    Returns:
        :class:`DepthPrediction` with depth [B,1,H,W] in [0, 1] ([B,1,PH,PW] without matching).
    """
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"predict_depth expects images [B, 3, H, W] in [-1, 1], got {tuple(image.shape)}")
    if ensemble_size < 1:
        raise ValueError(f"ensemble_size must be >= 1, got {ensemble_size}")
    if ensemble_size > 1 and latents is None and init_noise == "zeros":
        raise ValueError(
            "ensemble_size > 1 with zero initial latents gives identical members; use init_noise='gaussian'"
        )
    if output_uncertainty and ensemble_size == 1:
        raise ValueError("output_uncertainty needs ensemble_size > 1")
    num_images, original_size = image.shape[0], tuple(image.shape[-2:])
    image = image.to(teacher.vae.dtype)
    if processing_resolution:
        image = MarigoldImageProcessor.resize_to_max_edge(image, processing_resolution, resample_method_input)
    processed_size = image.shape[-2:]
    image = pad_to_multiple(image, teacher.vae_scale_factor)

    batch_size = batch_size or image.shape[0] * ensemble_size
    rgb_latent = torch.cat([teacher.encode_image(image[i : i + batch_size]) for i in range(0, num_images, batch_size)])
    rgb_latent = rgb_latent.repeat_interleave(ensemble_size, dim=0)
    pred_latent = predict_latent(teacher, rgb_latent, num_steps, latents, generator, init_noise, batch_size)
    depth = torch.cat(
        [teacher.decode_depth(pred_latent[i : i + batch_size]) for i in range(0, pred_latent.shape[0], batch_size)]
    )
    depth = crop_to((depth + 1.0) / 2.0, processed_size)

    uncertainty = None
    if ensemble_size > 1:
        members = depth.reshape(num_images, ensemble_size, *depth.shape[1:])
        results = [
            MarigoldDepthPipeline.ensemble_depth(
                members[i], True, True, output_uncertainty, **(ensembling_kwargs or {})
            )
            for i in range(num_images)
        ]
        depth = torch.cat([d for d, _ in results])
        uncertainty = torch.cat([u for _, u in results]) if output_uncertainty else None
    if match_input_resolution:
        depth = MarigoldImageProcessor.resize_antialias(depth, original_size, resample_method_output, is_aa=False)
        if uncertainty is not None:
            uncertainty = MarigoldImageProcessor.resize_antialias(
                uncertainty, original_size, resample_method_output, is_aa=False
            )
    return DepthPrediction(depth=depth.float(), uncertainty=None if uncertainty is None else uncertainty.float())
