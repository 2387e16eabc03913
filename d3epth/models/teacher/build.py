"""Building a teacher from a config: the UNet and VAE shapes, Stable Diffusion 2 sizes, ``conv_in`` widening.

:func:`from_config` draws a random-weight :class:`~d3epth.models.teacher.DiffusionDepthTeacher` of any size — tiny by
default (tests, CPU sample runs), Stable Diffusion 2 sized with :func:`sd2_config` (timing and memory runs). The noise
schedule is :data:`SD2_SCHEDULER_CONFIG`, Marigold v1-1's. :func:`widen_conv_in` is Marigold's initialisation of the
8-channel UNet input from a 4-channel Stable Diffusion UNet; :func:`build_autoencoder` is the VAE shape shared with
:class:`~d3epth.tasks.autoencoder.AutoencoderTask`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import nn

from d3epth.models.teacher.model import DiffusionDepthTeacher
from d3epth.utils.arguments import arguments_dataclass

__all__ = [
    "SD2_SCHEDULER_CONFIG",
    "TeacherArchitecture",
    "build_autoencoder",
    "from_config",
    "from_sd2_config",
    "sd2_config",
    "widen_conv_in",
]

#: Stable Diffusion 2 noise schedule with Marigold v1-1's choices (trailing spacing, zero terminal SNR). Used by
#: :func:`from_config`; ``from_pretrained`` reads the checkpoint's own ``scheduler/scheduler_config.json`` instead.
SD2_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "v_prediction",
    "timestep_spacing": "trailing",
    "rescale_betas_zero_snr": True,
}


def widen_conv_in(unet: UNet2DConditionModel, in_channels: int = 8) -> UNet2DConditionModel:
    """Widen a UNet's ``conv_in`` from ``c`` to ``in_channels = k * c`` inputs with Marigold's rule, in place.

    The weight [O,c,3,3] is repeated ``k`` times along the input channels and multiplied by ``1 / k``; the bias is
    copied unchanged (Marigold (Ke et al., CVPR 2024) §3.2; ``_replace_unet_conv_in`` in Marigold's
    ``src/trainer/marigold_depth_trainer.py``). Hence ``conv_in(cat[z, z]) == conv_in_old(z)`` and the pretrained model
    sees the RGB latent as it did before. (E2E-FT also divides the bias; Marigold does not.)

    Args:
        unet: UNet whose ``conv_in`` is replaced; its config's ``in_channels`` is updated for ``save_pretrained``.
        in_channels: new number of input channels, a multiple of the current one.

    Returns:
        The same ``unet``.

    Raises:
        ValueError: if ``in_channels`` is not a multiple of the current number of input channels.
    """
    old = unet.conv_in
    if in_channels % old.in_channels != 0:
        raise ValueError(f"conv_in: cannot widen {old.in_channels} input channels to {in_channels} (not a multiple)")
    repeat = in_channels // old.in_channels
    new = nn.Conv2d(
        in_channels,
        old.out_channels,
        kernel_size=old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        bias=old.bias is not None,
        device=old.weight.device,
        dtype=old.weight.dtype,
    )
    with torch.no_grad():
        new.weight.copy_(old.weight.repeat(1, repeat, 1, 1) / repeat)
        if old.bias is not None:
            new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=in_channels)
    return unet


def build_autoencoder(
    block_out_channels: Sequence[int] = (8, 16, 32, 32),
    layers_per_block: int = 1,
    norm_num_groups: int = 8,
    latent_channels: int = 4,
    sample_size: int = 64,
    scaling_factor: float = 0.18215,
    mid_block_attention: bool = True,
) -> AutoencoderKL:
    """A diffusers ``AutoencoderKL`` with ``len(block_out_channels)`` levels (down-sampling ``2 ** (levels - 1)``).

    The defaults equal the VAE of :func:`from_config` (4 levels = factor 8, 4 latent channels), so the teacher's UNet
    (``in_channels = 2 * latent_channels``) accepts this VAE's latents.
    """
    if any(c % norm_num_groups for c in block_out_channels):
        raise ValueError(
            f"block_out_channels={tuple(block_out_channels)} must be multiples of norm_num_groups={norm_num_groups}"
        )
    levels = len(block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block,
        latent_channels=latent_channels,
        norm_num_groups=norm_num_groups,
        sample_size=sample_size,
        scaling_factor=scaling_factor,
        mid_block_add_attention=mid_block_attention,
    )


def from_config(
    block_out_channels: Sequence[int] = (32, 64),
    layers_per_block: int = 1,
    cross_attention_dim: int = 32,
    attention_head_dim: int | Sequence[int] = 8,
    use_linear_projection: bool = False,
    norm_num_groups: int = 32,
    vae_block_out_channels: Sequence[int] = (8, 16, 32, 32),
    vae_layers_per_block: int = 1,
    vae_norm_num_groups: int = 8,
    latent_channels: int = 4,
    scaling_factor: float = 0.18215,
    sample_size: int = 64,
    scheduler_config: dict[str, Any] | None = None,
    timestep_spacing: str | None = "trailing",
    rescale_betas_zero_snr: bool | None = None,
    seed: int = 0,
) -> DiffusionDepthTeacher:
    """Build a teacher with random weights; the defaults are tiny (for tests and CPU sample runs).

    The UNet has ``len(block_out_channels)`` levels, cross-attention in all but the deepest (SD layout: the last
    down block and the first up block have no attention). The VAE has ``len(vae_block_out_channels)`` levels, so
    the latent is ``2 ** (levels - 1)`` times smaller than the image (8 with the defaults, as for SD). Weights and
    the empty-prompt embedding (randn [1,2,cross_attention_dim]) are drawn from ``seed`` without touching the global
    RNG, so the same arguments always give the same teacher. :func:`sd2_config` gives SD2-sized values.

    Args:
        block_out_channels: UNet channels per level (multiples of ``norm_num_groups``).
        layers_per_block: ResNet layers per UNet level.
        cross_attention_dim: channels of the text embedding.
        attention_head_dim: per level or shared (diffusers' SD2 config puts head counts (5, 10, 20, 20) here).
        use_linear_projection: linear instead of 1×1 conv projections in transformer blocks (SD2: True).
        norm_num_groups: GroupNorm groups in the UNet.
        vae_block_out_channels: VAE channels per level (multiples of ``vae_norm_num_groups``).
        vae_layers_per_block: ResNet layers per VAE level.
        vae_norm_num_groups: GroupNorm groups in the VAE.
        latent_channels: channels of one latent (4).
        scaling_factor: latent scaling factor (0.18215 as SD).
        sample_size: nominal image size in pixels (the VAE's ``sample_size``; the UNet's is this / f).
        scheduler_config: noise schedule; default :data:`SD2_SCHEDULER_CONFIG` (v-prediction, trailing, zero SNR).
        timestep_spacing: see :class:`~d3epth.models.teacher.DiffusionDepthTeacher`.
        rescale_betas_zero_snr: see :class:`~d3epth.models.teacher.DiffusionDepthTeacher`.
        seed: seed for the random weights and embedding.

    Returns:
        The teacher.
    """
    levels = len(block_out_channels)
    vae_levels = len(vae_block_out_channels)
    if levels < 1 or vae_levels < 1:
        raise ValueError("block_out_channels and vae_block_out_channels need at least one level each")
    for name, channels, groups in (
        ("block_out_channels", block_out_channels, norm_num_groups),
        ("vae_block_out_channels", vae_block_out_channels, vae_norm_num_groups),
    ):
        if any(c % groups for c in channels):
            raise ValueError(f"{name}={tuple(channels)} must be multiples of its norm_num_groups={groups}")
    if not isinstance(attention_head_dim, int):
        attention_head_dim = tuple(attention_head_dim)
        if len(attention_head_dim) != levels:
            raise ValueError(f"attention_head_dim={attention_head_dim} needs one value per level ({levels})")
    f = 2 ** (vae_levels - 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=max(sample_size // f, 1),
            in_channels=2 * latent_channels,
            out_channels=latent_channels,
            down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            cross_attention_dim=cross_attention_dim,
            attention_head_dim=attention_head_dim,
            use_linear_projection=use_linear_projection,
            norm_num_groups=norm_num_groups,
        )
        vae = build_autoencoder(
            vae_block_out_channels,
            layers_per_block=vae_layers_per_block,
            norm_num_groups=vae_norm_num_groups,
            latent_channels=latent_channels,
            sample_size=sample_size,
            scaling_factor=scaling_factor,
        )
        embedding = torch.randn(1, 2, cross_attention_dim)
    return DiffusionDepthTeacher(
        unet,
        vae,
        dict(SD2_SCHEDULER_CONFIG if scheduler_config is None else scheduler_config),
        embedding,
        timestep_spacing=timestep_spacing,
        rescale_betas_zero_snr=rescale_betas_zero_snr,
    )


def sd2_config() -> dict[str, Any]:
    """:func:`from_config` arguments for the Stable Diffusion 2 architecture (≈866 M UNet + 84 M VAE parameters).

    UNet: block_out_channels (320, 640, 1280, 1280), 2 layers per block, cross-attention dim 1024,
    attention_head_dim (5, 10, 20, 20), linear projections; VAE: (128, 256, 512, 512), 2 layers per block;
    sample size 768 (SD2-768-v, Marigold's processing resolution). Random weights: for timing and memory runs.
    """
    return {
        "block_out_channels": (320, 640, 1280, 1280),
        "layers_per_block": 2,
        "cross_attention_dim": 1024,
        "attention_head_dim": (5, 10, 20, 20),
        "use_linear_projection": True,
        "norm_num_groups": 32,
        "vae_block_out_channels": (128, 256, 512, 512),
        "vae_layers_per_block": 2,
        "vae_norm_num_groups": 32,
        "latent_channels": 4,
        "scaling_factor": 0.18215,
        "sample_size": 768,
    }


def from_sd2_config(**overrides: Any) -> DiffusionDepthTeacher:
    """Random-weight teacher of Stable Diffusion 2 size (:func:`sd2_config` updated with ``overrides``)."""
    return from_config(**{**sd2_config(), **overrides})


#: A teacher spec's ``config``: :func:`from_config`'s arguments as a typed group (checked key by key in configs).
TeacherArchitecture = arguments_dataclass(from_config, "TeacherArchitecture", __name__)
