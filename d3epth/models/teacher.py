"""Diffusion depth teacher: Marigold / E2E-FT on diffusers components.

The teacher of D³epth (ACML 2025) is a latent diffusion depth estimator in the Marigold lineage (Ke et al., CVPR 2024)
with the single-step fix of E2E-FT (Garcia et al., WACV 2025): a Stable Diffusion 2 ``UNet2DConditionModel`` whose
``conv_in`` takes ``cat[rgb_latent, depth_latent]`` (8 channels), the SD ``AutoencoderKL`` and a DDPM / DDIM schedule.
Text conditioning is switched off by feeding the CLIP embedding of the empty prompt, which is computed once and kept as
a tensor, so CLIP never sits in training memory.

Conventions used throughout (shapes for the SD VAE, whose down-sampling factor ``f`` is 8):

* images: ``[B, 3, H, W]`` float in ``[-1, 1]``;
* latents: ``[B, 4, H/f, W/f]``, already multiplied by the VAE scaling factor (0.18215 for SD);
* normalised depth: ``[B, 1, H, W]`` in ``[-1, 1]`` (Marigold's 2 %/98 % affine normalisation, near = -1);
  ``predict_depth`` maps it to ``[0, 1]`` as ``MarigoldDepthPipeline`` does.

Single-step inference always runs at ``t = T - 1 = 999`` (E2E-FT's fixed timestep; what "trailing" spacing yields for
one step). With "leading" spacing one DDIM step would run at ``t = 1`` and turn noise into noise (E2E-FT §3.2).
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, MarigoldDepthPipeline, UNet2DConditionModel
from diffusers.pipelines.marigold.marigold_image_processing import MarigoldImageProcessor
from diffusers.utils.torch_utils import randn_tensor
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

__all__ = [
    "EMPTY_TEXT_EMBEDDING_FILE",
    "DepthPrediction",
    "DiffusionDepthTeacher",
    "compute_empty_text_embedding",
    "load_empty_text_embedding",
    "save_empty_text_embedding",
    "widen_conv_in",
]

logger = logging.getLogger(__name__)

#: File name of the cached empty-prompt embedding inside a teacher directory.
EMPTY_TEXT_EMBEDDING_FILE = "empty_text_embedding.safetensors"
_EMBEDDING_KEY = "empty_text_embedding"
_TEXT_PADDINGS = ("do_not_pad", "max_length")
_TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")

#: Stable Diffusion 2 noise schedule with Marigold v1-1's choices (trailing spacing, zero terminal SNR). Used by
#: ``from_config``; ``from_pretrained`` reads the checkpoint's own ``scheduler/scheduler_config.json`` instead.
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


class DepthPrediction(NamedTuple):
    """Output of :meth:`DiffusionDepthTeacher.predict_depth`.

    Attributes:
        depth: affine-invariant depth in ``[0, 1]`` (0 = near), ``[B, 1, H, W]``.
        uncertainty: ensemble spread (median absolute deviation, or std for ``reduction="mean"``) in the same units,
            ``[B, 1, H, W]``; ``None`` unless ``output_uncertainty`` was requested with ``ensemble_size > 1``.
    """

    depth: Tensor
    uncertainty: Tensor | None


# ----------------------------------------------------------------------------------------------------------------------
# Empty-prompt embedding
# ----------------------------------------------------------------------------------------------------------------------


def compute_empty_text_embedding(path: str | Path, padding: str = "do_not_pad") -> Tensor:
    """Encode the empty prompt with the CLIP text encoder of a diffusers-layout directory.

    Marigold and ``MarigoldDepthPipeline`` tokenise ``""`` with ``padding="do_not_pad"`` (BOS + EOS, shape
    ``[1, 2, C]``); E2E-FT pads to ``model_max_length`` (``[1, 77, C]``). Use the variant the checkpoint was trained
    with. Because CLIP's text transformer is causal, the first two rows of the padded embedding equal the unpadded one.

    Args:
        path: directory holding ``text_encoder/`` and ``tokenizer/``.
        padding: ``"do_not_pad"`` (Marigold) or ``"max_length"`` (E2E-FT).

    Returns:
        The embedding, float32 ``[1, L, C]`` with ``L = 2`` or ``model_max_length``.

    Raises:
        ValueError: on an unknown ``padding``.
        FileNotFoundError: if ``text_encoder/`` or ``tokenizer/`` is missing.
    """
    from transformers import CLIPTextModel, CLIPTokenizer  # heavy import, only needed here

    if padding not in _TEXT_PADDINGS:
        raise ValueError(f"text embedding padding must be one of {_TEXT_PADDINGS}, got {padding!r}")
    path = Path(path)
    for sub in ("text_encoder", "tokenizer"):
        if not (path / sub).is_dir():
            raise FileNotFoundError(f"cannot compute the empty-prompt embedding: {path / sub} does not exist")
    tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", local_files_only=True)
    text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", local_files_only=True)
    return _encode_empty_prompt(tokenizer, text_encoder, padding)


def _encode_empty_prompt(tokenizer: Any, text_encoder: nn.Module, padding: str = "do_not_pad") -> Tensor:
    tokens = tokenizer(
        "", padding=padding, max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    device = next(text_encoder.parameters()).device
    with torch.no_grad():
        embedding = text_encoder.eval()(tokens.to(device))[0]
    return embedding.float().cpu().contiguous()


def save_empty_text_embedding(embedding: Tensor, file: str | Path) -> None:
    """Write an empty-prompt embedding ``[1, L, C]`` to a safetensors file (key ``"empty_text_embedding"``)."""
    if embedding.ndim != 3 or embedding.shape[0] != 1:
        raise ValueError(f"empty text embedding must have shape [1, L, C], got {tuple(embedding.shape)}")
    save_file({_EMBEDDING_KEY: embedding.detach().float().cpu().contiguous()}, str(file))


def load_empty_text_embedding(file: str | Path) -> Tensor:
    """Read an embedding written by :func:`save_empty_text_embedding` (or any safetensors file with one tensor).

    Returns:
        float32 ``[1, L, C]``.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if it holds no single ``[1, L, C]`` tensor.
    """
    file = Path(file)
    if not file.is_file():
        raise FileNotFoundError(f"empty text embedding file {file} does not exist")
    tensors = load_file(str(file))
    if _EMBEDDING_KEY in tensors:
        embedding = tensors[_EMBEDDING_KEY]
    elif len(tensors) == 1:
        embedding = next(iter(tensors.values()))
    else:
        raise ValueError(f"{file}: expected key {_EMBEDDING_KEY!r} or a single tensor, found keys {sorted(tensors)}")
    if embedding.ndim == 2:
        embedding = embedding[None]
    if embedding.ndim != 3 or embedding.shape[0] != 1:
        raise ValueError(f"{file}: empty text embedding must have shape [1, L, C], got {tuple(embedding.shape)}")
    return embedding.float()


def _embedding_carrier(embedding: Tensor) -> tuple[nn.Module, Any]:
    """Build a minimal CLIP text encoder + tokenizer whose empty-prompt output is exactly ``embedding[:, :2]``.

    ``MarigoldDepthPipeline`` insists on a ``text_encoder`` and ``tokenizer`` and computes the empty-prompt embedding
    itself (BOS + EOS, no padding). A teacher that only holds the embedding tensor exports this stand-in: a CLIP text
    model with no transformer layers, so its output is ``LayerNorm(token_embedding)``. With the two token embeddings
    ``x`` and ``-x`` the normalised rows ``n`` and ``-n`` differ in every channel, and the LayerNorm affine parameters
    ``w = (y0 - y1) / (n0 - n1)``, ``b = y0 - n0 * w`` reproduce any two target rows ``y0, y1``. It is not a language
    model: any other prompt maps to the same two vectors (Marigold never uses prompts).

    Args:
        embedding: ``[1, L, C]`` with ``L >= 2``; rows 0 and 1 (BOS, EOS) are reproduced.

    Returns:
        ``(CLIPTextModel, CLIPTokenizer)``.
    """
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    target = embedding[0, :2].detach().float().cpu()
    channels = target.shape[-1]
    config = CLIPTextConfig(
        vocab_size=2,
        hidden_size=channels,
        intermediate_size=channels,
        projection_dim=channels,
        num_hidden_layers=0,
        num_attention_heads=1,
        max_position_embeddings=77,
        layer_norm_eps=1e-5,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    model = CLIPTextModel(config).eval()
    x0 = torch.ones(channels)
    x0[1::2] = -1.0  # alternating signs: every channel of the normalised row is non-zero
    x1 = -x0
    n0 = F.layer_norm(x0, (channels,), eps=config.layer_norm_eps)
    n1 = F.layer_norm(x1, (channels,), eps=config.layer_norm_eps)
    weight = (target[0] - target[1]) / (n0 - n1)
    bias = target[0] - n0 * weight
    text_model = getattr(model, "text_model", model)  # transformers < 5 nests the modules under .text_model
    with torch.no_grad():
        text_model.embeddings.token_embedding.weight.copy_(torch.stack([x0, x1]))
        text_model.embeddings.position_embedding.weight.zero_()
        text_model.final_layer_norm.weight.copy_(weight)
        text_model.final_layer_norm.bias.copy_(bias)
    tokenizer = CLIPTokenizer(vocab={"<|startoftext|>": 0, "<|endoftext|>": 1}, merges=[], model_max_length=77)
    return model, tokenizer


# ----------------------------------------------------------------------------------------------------------------------
# Architecture helpers
# ----------------------------------------------------------------------------------------------------------------------


def widen_conv_in(unet: UNet2DConditionModel, in_channels: int = 8) -> UNet2DConditionModel:
    """Widen a UNet's ``conv_in`` from ``c`` to ``in_channels = k * c`` inputs with Marigold's rule, in place.

    The weight ``[O, c, 3, 3]`` is repeated ``k`` times along the input channels and multiplied by ``1 / k``; the bias
    is copied unchanged (Marigold ``_replace_unet_conv_in``; paper §3.2). Hence ``conv_in(cat[z, z]) == conv_in_old(z)``
    and the pretrained model sees the RGB latent as it did before. (E2E-FT also divides the bias; Marigold does not.)

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


def _check_dir(path: Path, subfolders: Sequence[str]) -> None:
    if not path.is_dir():
        raise FileNotFoundError(f"teacher directory {path} does not exist")
    for sub in subfolders:
        if not (path / sub).is_dir():
            raise FileNotFoundError(
                f"teacher directory {path} has no {sub}/ subfolder; expected a diffusers layout with "
                f"{', '.join(s + '/' for s in subfolders)} (a Marigold, E2E-FT or Stable Diffusion 2 checkpoint)"
            )


# ----------------------------------------------------------------------------------------------------------------------
# The teacher
# ----------------------------------------------------------------------------------------------------------------------


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

    The defaults equal the VAE of ``DiffusionDepthTeacher.from_config`` (4 levels = factor 8, 4 latent channels), so
    the teacher's UNet (``in_channels = 2 * latent_channels``) accepts this VAE's latents.
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


class DiffusionDepthTeacher(nn.Module):
    """Marigold-style latent diffusion depth model: UNet (8-ch input), VAE, schedulers and empty-prompt embedding.

    ``noise_scheduler`` (DDPM) serves training (``add_noise``, ``get_velocity``); ``scheduler`` (DDIM) serves
    inference. Both are built from the same config, as in Marigold v1-1. The empty-prompt embedding is a
    non-persistent buffer: it follows ``.to()`` but is not written to ``state_dict`` (it is rebuilt from the teacher
    directory, or from the seed of ``from_config``).

    Args:
        unet: denoiser with ``in_channels == 2 * vae.config.latent_channels``.
        vae: autoencoder; its ``scaling_factor`` scales the latents.
        scheduler_config: diffusers scheduler config (e.g. the contents of ``scheduler/scheduler_config.json``).
        empty_text_embedding: ``[1, L, C]`` with ``C == unet.config.cross_attention_dim``.
        timestep_spacing: overrides the config's spacing; ``"trailing"`` (default) is the E2E-FT / Marigold v1-1 fix,
            ``None`` keeps the config's value.
        rescale_betas_zero_snr: overrides the config's zero-terminal-SNR flag (Marigold v1-1: ``True``); ``None``
            keeps the config's value.
        text_source: directory with the original ``text_encoder/`` and ``tokenizer/``, reused by ``save_pretrained``.
    """

    def __init__(
        self,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        scheduler_config: dict[str, Any],
        empty_text_embedding: Tensor,
        timestep_spacing: str | None = "trailing",
        rescale_betas_zero_snr: bool | None = None,
        text_source: str | Path | None = None,
    ) -> None:
        super().__init__()
        latent_channels = vae.config.latent_channels
        if unet.config.in_channels != 2 * latent_channels:
            raise ValueError(
                f"unet.config.in_channels must be 2 * latent_channels = {2 * latent_channels} "
                f"(cat[rgb_latent, depth_latent]), got {unet.config.in_channels}; see widen_conv_in"
            )
        if unet.config.out_channels != latent_channels:
            raise ValueError(f"unet.config.out_channels must be {latent_channels}, got {unet.config.out_channels}")
        if empty_text_embedding.ndim != 3 or empty_text_embedding.shape[0] != 1:
            raise ValueError(f"empty_text_embedding must be [1, L, C], got {tuple(empty_text_embedding.shape)}")
        if empty_text_embedding.shape[-1] != unet.config.cross_attention_dim:
            raise ValueError(
                f"empty_text_embedding has {empty_text_embedding.shape[-1]} channels but "
                f"unet.config.cross_attention_dim is {unet.config.cross_attention_dim}"
            )
        config = {k: v for k, v in dict(scheduler_config).items() if not k.startswith("_")}
        # DDIM/DDPM default to clipping x0 to [-1, 1], which is wrong for latents; SD configs say False explicitly,
        # but schedulers saved by other classes (e.g. SD2-base's PNDM) may omit the key.
        config.setdefault("clip_sample", False)
        if timestep_spacing is not None:
            if timestep_spacing not in _TIMESTEP_SPACINGS:
                raise ValueError(f"timestep_spacing must be one of {_TIMESTEP_SPACINGS}, got {timestep_spacing!r}")
            config["timestep_spacing"] = timestep_spacing
        if rescale_betas_zero_snr is not None:
            config["rescale_betas_zero_snr"] = rescale_betas_zero_snr
        if config.get("prediction_type", "epsilon") not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"scheduler prediction_type {config.get('prediction_type')!r} is not supported")
        if config.get("timestep_spacing", "leading") != "trailing":
            warnings.warn(
                f"timestep_spacing={config.get('timestep_spacing', 'leading')!r}: few-step DDIM inference starts below "
                "t=999 (one step runs at t=1 with 'leading'); use 'trailing' (E2E-FT fix)",
                stacklevel=2,
            )

        self.unet = unet
        self.vae = vae
        self.noise_scheduler: DDPMScheduler = DDPMScheduler.from_config(config)
        self.scheduler: DDIMScheduler = DDIMScheduler.from_config(config)
        self.register_buffer("empty_text_embedding", empty_text_embedding.detach().float().clone(), persistent=False)
        self.text_source = None if text_source is None else str(text_source)

    # ------------------------------------------------------------------------------------------------------------------
    # Properties
    # ------------------------------------------------------------------------------------------------------------------

    @property
    def latent_scale(self) -> float:
        """VAE latent scaling factor (0.18215 for the SD VAE)."""
        return float(self.vae.config.scaling_factor)

    @property
    def vae_scale_factor(self) -> int:
        """Spatial down-sampling factor image → latent (8 for the SD VAE)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        """Channels of one latent (4 for the SD VAE)."""
        return int(self.vae.config.latent_channels)

    @property
    def prediction_type(self) -> str:
        """What the UNet predicts: ``"v_prediction"`` (SD2, Marigold), ``"epsilon"`` or ``"sample"``."""
        return str(self.scheduler.config.prediction_type)

    @property
    def num_train_timesteps(self) -> int:
        """T, the length of the training schedule (1000)."""
        return int(self.scheduler.config.num_train_timesteps)

    # ------------------------------------------------------------------------------------------------------------------
    # Constructors
    # ------------------------------------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        text_embedding_file: str | Path | None = None,
        text_embedding_padding: str = "do_not_pad",
        timestep_spacing: str | None = "trailing",
        rescale_betas_zero_snr: bool | None = None,
        torch_dtype: torch.dtype | None = None,
        variant: str | None = None,
    ) -> DiffusionDepthTeacher:
        """Load a teacher from a local diffusers-layout directory; nothing is downloaded.

        Accepts a Marigold v1-0 / v1-1 or E2E-FT depth checkpoint (8-channel ``conv_in``) or a Stable Diffusion 2
        directory, whose 4-channel ``conv_in`` is widened with :func:`widen_conv_in`. The empty-prompt embedding comes
        from ``text_embedding_file`` if given, else from ``<path>/empty_text_embedding.safetensors`` if present, else it
        is computed once from ``text_encoder/`` + ``tokenizer/`` (which are then released).

        Args:
            path: directory with ``unet/``, ``vae/``, ``scheduler/`` and the text embedding source.
            text_embedding_file: explicit safetensors file with the ``[1, L, C]`` embedding.
            text_embedding_padding: ``"do_not_pad"`` (Marigold, ``[1, 2, C]``) or ``"max_length"`` (E2E-FT,
                ``[1, 77, C]``), used only when computing from the text encoder.
            timestep_spacing: see :class:`DiffusionDepthTeacher`; ``"trailing"`` by default.
            rescale_betas_zero_snr: see :class:`DiffusionDepthTeacher`; ``None`` keeps the checkpoint's value.
            torch_dtype: dtype for the UNet and VAE weights (e.g. ``torch.float16``); default float32.
            variant: diffusers weight variant such as ``"fp16"``.

        Returns:
            The teacher, in train mode with gradients enabled (call :meth:`freeze` to use it as a frozen teacher).

        Raises:
            FileNotFoundError: if the directory, a required subfolder or every embedding source is missing.
            ValueError: if the UNet's ``in_channels`` is neither ``latent_channels`` nor twice that.
        """
        path = Path(path).expanduser()
        _check_dir(path, ("unet", "vae", "scheduler"))
        kwargs: dict[str, Any] = {"local_files_only": True, "torch_dtype": torch_dtype, "variant": variant}
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", **kwargs)
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", **kwargs)
        latent_channels = vae.config.latent_channels
        if unet.config.in_channels == latent_channels:
            logger.info(
                "widening %s conv_in from %d to %d channels", path / "unet", latent_channels, 2 * latent_channels
            )
            widen_conv_in(unet, 2 * latent_channels)
        elif unet.config.in_channels != 2 * latent_channels:
            raise ValueError(
                f"{path / 'unet'}: in_channels={unet.config.in_channels}, expected {latent_channels} "
                f"(Stable Diffusion) or {2 * latent_channels} (Marigold / E2E-FT)"
            )
        scheduler_config = dict(DDIMScheduler.load_config(path, subfolder="scheduler", local_files_only=True))

        has_text_encoder = (path / "text_encoder").is_dir() and (path / "tokenizer").is_dir()
        default_file = path / EMPTY_TEXT_EMBEDDING_FILE
        if text_embedding_file is not None:
            embedding = load_empty_text_embedding(text_embedding_file)
        elif default_file.is_file():
            embedding = load_empty_text_embedding(default_file)
        elif has_text_encoder:
            embedding = compute_empty_text_embedding(path, padding=text_embedding_padding)
        else:
            raise FileNotFoundError(
                f"teacher directory {path} has neither text_encoder/ + tokenizer/ nor {EMPTY_TEXT_EMBEDDING_FILE}; "
                "one of them is needed for the empty-prompt embedding (or pass text_embedding_file=...)"
            )
        return cls(
            unet,
            vae,
            scheduler_config,
            embedding,
            timestep_spacing=timestep_spacing,
            rescale_betas_zero_snr=rescale_betas_zero_snr,
            text_source=path if has_text_encoder else None,
        )

    @classmethod
    def from_config(
        cls,
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
        the empty-prompt embedding (``randn [1, 2, cross_attention_dim]``) are drawn from ``seed`` without touching
        the global RNG, so the same arguments always give the same teacher. :meth:`sd2_config` gives SD2-sized values.

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
            timestep_spacing: see :class:`DiffusionDepthTeacher`.
            rescale_betas_zero_snr: see :class:`DiffusionDepthTeacher`.
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
        return cls(
            unet,
            vae,
            dict(SD2_SCHEDULER_CONFIG if scheduler_config is None else scheduler_config),
            embedding,
            timestep_spacing=timestep_spacing,
            rescale_betas_zero_snr=rescale_betas_zero_snr,
        )

    @staticmethod
    def sd2_config() -> dict[str, Any]:
        """``from_config`` arguments for the Stable Diffusion 2 architecture (≈866 M UNet + 84 M VAE parameters).

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

    @classmethod
    def from_sd2_config(cls, **overrides: Any) -> DiffusionDepthTeacher:
        """Random-weight teacher of Stable Diffusion 2 size (:meth:`sd2_config` updated with ``overrides``)."""
        return cls.from_config(**{**cls.sd2_config(), **overrides})

    def freeze(self) -> DiffusionDepthTeacher:
        """Put the teacher in eval mode for good and stop gradients to its parameters; returns ``self``.

        A frozen teacher ignores later ``train()`` calls, so a LightningModule switching to train mode (which recurses
        into children) does not flip it back.
        """
        self._frozen = True
        self.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> DiffusionDepthTeacher:
        """``nn.Module.train``; a no-op (stays in eval) after :meth:`freeze`."""
        return super().train(mode and not getattr(self, "_frozen", False))

    # ------------------------------------------------------------------------------------------------------------------
    # VAE
    # ------------------------------------------------------------------------------------------------------------------

    def encode_image(self, image: Tensor) -> Tensor:
        """Encode RGB to a latent: posterior mean × scaling factor (no sampling, as Marigold).

        Args:
            image: ``[B, 3, H, W]`` in ``[-1, 1]``, H and W multiples of :attr:`vae_scale_factor`.

        Returns:
            ``[B, 4, H/f, W/f]``.
        """
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"encode_image expects [B, 3, H, W] in [-1, 1], got {tuple(image.shape)}")
        image = image.to(self.vae.dtype)
        return self.vae.encode(image).latent_dist.mode() * self.latent_scale

    def encode_depth(self, depth: Tensor) -> Tensor:
        """Encode normalised depth: replicated to 3 channels, posterior mean × scaling factor.

        Args:
            depth: ``[B, 1, H, W]`` in ``[-1, 1]`` (2 %/98 % normalised, clipped).

        Returns:
            ``[B, 4, H/f, W/f]``.
        """
        if depth.ndim != 4 or depth.shape[1] != 1:
            raise ValueError(f"encode_depth expects [B, 1, H, W] in [-1, 1], got {tuple(depth.shape)}")
        return self.encode_image(depth.expand(-1, 3, -1, -1))

    def decode_depth(self, latent: Tensor) -> Tensor:
        """Decode a depth latent: mean of the 3 decoded channels, clipped to ``[-1, 1]``.

        Differentiable (E2E-FT back-propagates through the frozen decoder); wrap in ``torch.no_grad()`` for inference.

        Args:
            latent: ``[B, 4, h, w]`` (scaled).

        Returns:
            ``[B, 1, h·f, w·f]`` in ``[-1, 1]``.
        """
        if latent.ndim != 4 or latent.shape[1] != self.latent_channels:
            raise ValueError(f"decode_depth expects [B, {self.latent_channels}, h, w], got {tuple(latent.shape)}")
        decoded = self.vae.decode(latent.to(self.vae.dtype) / self.latent_scale, return_dict=False)[0]
        return decoded.mean(dim=1, keepdim=True).clamp(-1.0, 1.0)

    # ------------------------------------------------------------------------------------------------------------------
    # UNet
    # ------------------------------------------------------------------------------------------------------------------

    def forward(self, rgb_latent: Tensor, noisy_latent: Tensor, timesteps: Tensor | int) -> Tensor:
        """Raw UNet output for ``cat[rgb_latent, noisy_latent]`` (that order), conditioned on the empty prompt.

        Args:
            rgb_latent: ``[B, 4, h, w]``.
            noisy_latent: ``[B, 4, h, w]`` — z_t.
            timesteps: scalar or ``[B]`` integer timesteps in ``[0, T)``.

        Returns:
            ``[B, 4, h, w]``: v, ε or x0 according to :attr:`prediction_type`.
        """
        if rgb_latent.shape != noisy_latent.shape or rgb_latent.ndim != 4:
            raise ValueError(
                f"rgb_latent {tuple(rgb_latent.shape)} and noisy_latent {tuple(noisy_latent.shape)} must both be "
                f"[B, {self.latent_channels}, h, w]"
            )
        dtype = self.unet.dtype
        text = self.empty_text_embedding.to(dtype).expand(rgb_latent.shape[0], -1, -1)
        x = torch.cat([rgb_latent, noisy_latent], dim=1).to(dtype)
        return self.unet(x, timesteps, encoder_hidden_states=text, return_dict=False)[0]

    def latent_from_model_output(self, model_output: Tensor, sample: Tensor, timesteps: Tensor | int) -> Tensor:
        """Clean latent x0 implied by a model output at z_t = ``sample``.

        v-prediction: ``z0 = √ᾱ_t·z_t − √(1−ᾱ_t)·v̂``; ε: ``z0 = (z_t − √(1−ᾱ_t)·ε̂) / √ᾱ_t``; sample: ``z0 = output``.

        Args:
            model_output: ``[B, 4, h, w]``.
            sample: z_t, ``[B, 4, h, w]``.
            timesteps: scalar or ``[B]``.

        Returns:
            ``[B, 4, h, w]``.
        """
        if self.prediction_type == "sample":
            return model_output
        t = torch.as_tensor(timesteps, device="cpu").long().reshape(-1)
        alpha_bar = self.noise_scheduler.alphas_cumprod[t].to(device=sample.device, dtype=torch.float32)
        alpha_bar = alpha_bar.view(-1, 1, 1, 1)
        out, z_t = model_output.float(), sample.float()
        if self.prediction_type == "v_prediction":
            x0 = alpha_bar.sqrt() * z_t - (1.0 - alpha_bar).sqrt() * out
        else:
            if bool((alpha_bar == 0).any()):
                raise ValueError("epsilon prediction cannot recover x0 at a zero-SNR timestep (alpha_bar = 0)")
            x0 = (z_t - (1.0 - alpha_bar).sqrt() * out) / alpha_bar.sqrt()
        return x0.to(model_output.dtype)

    def predict_latent_one_step(self, rgb_latent: Tensor, depth_latent: Tensor | None = None) -> Tensor:
        """Single-step depth latent x0 at t = T − 1 (999), E2E-FT style; differentiable.

        Args:
            rgb_latent: ``[B, 4, h, w]``.
            depth_latent: z_t at t = 999, default zeros (E2E-FT's deterministic input).

        Returns:
            ``[B, 4, h, w]``: the x0 estimate (for v-prediction ``√ᾱ·z_t − √(1−ᾱ)·v̂``; ``−v̂`` under zero SNR).
        """
        latent, _ = self._one_step(rgb_latent, depth_latent, ())
        return latent

    def one_step_latent_for_images(self, image: Tensor) -> Tensor:
        """Single-step depth latent of images of any size: the stage-1 distillation target.

        The image is replicate-padded at the bottom and right to a multiple of :attr:`vae_scale_factor` (so latent cell
        (i, j) covers pixels [f·i, f·i+f) × [f·j, f·j+f), as the student's latent does), encoded, and run through
        :meth:`predict_latent_one_step`. Stage 1 (on the fly) and the teacher cache both compute their targets here.

        Args:
            image: ``[B, 3, H, W]`` in ``[-1, 1]``, any H and W.

        Returns:
            ``[B, 4, ⌈H/f⌉, ⌈W/f⌉]`` in the UNet's dtype.
        """
        if image.ndim != 4 or image.shape[1] != 3 or not image.is_floating_point():
            raise ValueError(
                f"one_step_latent_for_images expects float [B, 3, H, W] in [-1, 1], got {image.dtype} "
                f"{tuple(image.shape)}"
            )
        return self.predict_latent_one_step(self.encode_image_padded(image))

    def encode_image_padded(self, image: Tensor) -> Tensor:
        """Encode images of any size: replicate-pad bottom/right to a multiple of :attr:`vae_scale_factor`, encode.

        Args:
            image: ``[B, 3, H, W]`` in ``[-1, 1]``, any H and W.

        Returns:
            ``[B, 4, ⌈H/f⌉, ⌈W/f⌉]``; latent cell (i, j) covers pixels [f·i, f·i+f) × [f·j, f·j+f).
        """
        padded, _ = MarigoldImageProcessor.pad_image(image, self.vae_scale_factor)
        return self.encode_image(padded)

    def unet_features(
        self, rgb_latent: Tensor, depth_latent: Tensor | None = None, names: Sequence[str] = ("mid_block",)
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Single-step latent plus the outputs of named UNet submodules from the same forward pass.

        Args:
            rgb_latent: ``[B, 4, h, w]``.
            depth_latent: as in :meth:`predict_latent_one_step`.
            names: dotted submodule names, e.g. ``"mid_block"``, ``"up_blocks.1"``, ``"down_blocks.2"``. A block that
                returns a tuple contributes its first element (down blocks: the hidden states).

        Returns:
            ``(latent [B, 4, h, w], {name: [B, C_name, h_name, w_name]})``.
        """
        return self._one_step(rgb_latent, depth_latent, names)

    def feature_info(self, names: Sequence[str]) -> dict[str, dict[str, int]]:
        """Channels and image-to-feature reduction of named UNet submodules (by a dry run at the smallest size).

        Returns:
            ``{name: {"channels": C, "reduction": r}}`` where a ``H×W`` image gives ``H/r × W/r`` features.
        """
        # Smallest latent the UNet takes whose deepest level is still 2×2 (GroupNorm needs > 1 value per group).
        side = 2 ** len(self.unet.config.block_out_channels)
        param = next(self.unet.parameters())
        z = torch.zeros(1, self.latent_channels, side, side, device=param.device, dtype=param.dtype)
        with torch.no_grad():
            _, features = self._one_step(z, None, names)
        return {
            name: {"channels": int(feat.shape[1]), "reduction": self.vae_scale_factor * side // int(feat.shape[-1])}
            for name, feat in features.items()
        }

    @contextmanager
    def _capture(self, names: Sequence[str]) -> Iterator[dict[str, Tensor]]:
        captured: dict[str, Tensor] = {}
        handles = []
        try:
            for name in names:
                try:
                    module = self.unet.get_submodule(name)
                except AttributeError:
                    valid = [n for n, _ in self.unet.named_children()]
                    raise ValueError(
                        f"UNet has no submodule {name!r}; top-level names are {valid} (index blocks as 'up_blocks.1')"
                    ) from None

                def hook(_module: nn.Module, _inputs: Any, output: Any, key: str = name) -> None:
                    # Down blocks return (hidden, residuals) and some modules return output dataclasses: keep the first.
                    captured[key] = output if torch.is_tensor(output) else output[0]

                handles.append(module.register_forward_hook(hook))
            yield captured
        finally:
            for handle in handles:
                handle.remove()

    def _one_step(
        self, rgb_latent: Tensor, depth_latent: Tensor | None, names: Sequence[str]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        if depth_latent is None:
            depth_latent = torch.zeros_like(rgb_latent)
        t = self.num_train_timesteps - 1
        timestep = torch.tensor(t, device=rgb_latent.device)
        with self._capture(names) as features:
            output = self(rgb_latent, depth_latent, timestep)
        return self.latent_from_model_output(output, depth_latent, t), dict(features)

    def predict_latent(
        self,
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
        (ᾱ_prev = ᾱ_0 = 0.99915), so 1-step DDIM differs slightly from :meth:`predict_latent_one_step`'s x0.

        Args:
            rgb_latent: ``[N, 4, h, w]``.
            num_steps: DDIM steps.
            latents: initial z_T ``[N, 4, h, w]``; overrides ``init_noise``.
            generator: RNG for ``init_noise="gaussian"``.
            init_noise: ``"zeros"`` (E2E-FT, deterministic) or ``"gaussian"`` (Marigold).
            batch_size: UNet batch size (default: all N at once).

        Returns:
            ``[N, 4, h, w]``.
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
        scheduler = copy.deepcopy(self.scheduler)
        outputs = []
        for i in range(0, rgb_latent.shape[0], batch_size):
            rgb, z = rgb_latent[i : i + batch_size], latents[i : i + batch_size]
            scheduler.set_timesteps(num_steps, device=rgb.device)
            for t in scheduler.timesteps:
                model_output = self(rgb, z, t)
                z = scheduler.step(model_output, t, z, generator=generator).prev_sample
            outputs.append(z)
        return torch.cat(outputs, dim=0)

    @torch.no_grad()
    def predict_depth(
        self,
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
        """Affine-invariant depth in ``[0, 1]`` for a batch of images, as ``MarigoldDepthPipeline`` computes it.

        Resize (longer edge = ``processing_resolution``, antialiased), replicate-pad to a multiple of f, encode, DDIM
        (``num_steps``), decode (mean of 3 channels, clip, ``(d + 1) / 2``), unpad, ensemble (affine alignment +
        median, ``MarigoldDepthPipeline.ensemble_depth``), resize back — using diffusers' ``MarigoldImageProcessor``.

        Args:
            image: ``[B, 3, H, W]`` in ``[-1, 1]``.
            num_steps: DDIM steps (1 with trailing spacing = the E2E-FT / Marigold v1-1 setting).
            ensemble_size: predictions per image (needs ``init_noise="gaussian"`` or ``latents`` to differ).
            processing_resolution: longer edge for processing; ``None`` or 0 = native resolution.
            match_input_resolution: resize the result back to ``H × W``.
            batch_size: UNet / VAE batch size (default: everything at once).
            generator: RNG for Gaussian initial latents.
            latents: initial latents ``[B·ensemble_size, 4, h, w]`` (member-major per image, as the pipeline).
            init_noise: ``"zeros"`` or ``"gaussian"`` when ``latents`` is None.
            output_uncertainty: also return the ensemble's uncertainty (needs ``ensemble_size > 1``).
            resample_method_input: interpolation for the input resize.
            resample_method_output: interpolation for the output resize.
            ensembling_kwargs: passed to ``MarigoldDepthPipeline.ensemble_depth`` (``reduction``, ``max_iter``, …).

        Returns:
            :class:`DepthPrediction` with ``depth [B, 1, H, W]`` in ``[0, 1]`` (``[B, 1, PH, PW]`` without matching).
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
        image = image.to(self.vae.dtype)
        if processing_resolution:
            image = MarigoldImageProcessor.resize_to_max_edge(image, processing_resolution, resample_method_input)
        image, padding = MarigoldImageProcessor.pad_image(image, self.vae_scale_factor)

        batch_size = batch_size or image.shape[0] * ensemble_size
        rgb_latent = torch.cat([self.encode_image(image[i : i + batch_size]) for i in range(0, num_images, batch_size)])
        rgb_latent = rgb_latent.repeat_interleave(ensemble_size, dim=0)
        pred_latent = self.predict_latent(rgb_latent, num_steps, latents, generator, init_noise, batch_size)
        depth = torch.cat(
            [self.decode_depth(pred_latent[i : i + batch_size]) for i in range(0, pred_latent.shape[0], batch_size)]
        )
        depth = MarigoldImageProcessor.unpad_image((depth + 1.0) / 2.0, padding)

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

    # ------------------------------------------------------------------------------------------------------------------
    # Export
    # ------------------------------------------------------------------------------------------------------------------

    def save_pretrained(
        self,
        directory: str | Path,
        default_denoising_steps: int = 1,
        default_processing_resolution: int | None = None,
    ) -> Path:
        """Write a directory that ``diffusers.MarigoldDepthPipeline.from_pretrained`` loads (and ``from_pretrained``).

        Contents: ``unet/``, ``vae/``, ``scheduler/`` (DDIM, this teacher's spacing), ``text_encoder/`` +
        ``tokenizer/``, ``model_index.json`` (``prediction_type="depth"``, affine-invariant, default steps and
        processing resolution) and ``empty_text_embedding.safetensors`` (the exact conditioning tensor, read back first
        by :meth:`from_pretrained`). The text encoder is the original CLIP when the teacher was loaded from a directory
        that had one; otherwise a two-token stand-in whose empty-prompt output equals this teacher's embedding (see
        ``_embedding_carrier``). The diffusers pipeline always encodes the empty prompt without padding (2 tokens); a
        teacher trained on a 77-token (E2E-FT ``max_length``) embedding therefore runs there with its first 2 rows,
        which is what CLIP's causal encoder gives for the unpadded prompt.

        Args:
            directory: output directory (created).
            default_denoising_steps: ``model_index.json`` default steps.
            default_processing_resolution: default longer edge; ``None`` = the VAE's ``sample_size`` rounded to a
                multiple of f (768 for SD2-768, Marigold's value).

        Returns:
            The directory.
        """
        from transformers import CLIPTextModel, CLIPTokenizer

        directory = Path(directory)
        f = self.vae_scale_factor
        if default_processing_resolution is None:
            default_processing_resolution = int(self.vae.config.sample_size) // f * f
        if default_processing_resolution % f:
            raise ValueError(
                f"default_processing_resolution must be a multiple of {f}, got {default_processing_resolution}"
            )
        if self.empty_text_embedding.shape[1] != 2:
            warnings.warn(
                f"the teacher uses a {self.empty_text_embedding.shape[1]}-token empty-prompt embedding; "
                "MarigoldDepthPipeline always uses the 2-token (unpadded) one",
                stacklevel=2,
            )
        text_encoder = tokenizer = None
        if self.text_source is not None:
            source = Path(self.text_source)
            text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", local_files_only=True)
            tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", local_files_only=True)
            # The pipeline recomputes the embedding from this CLIP; keep it only if it gives this teacher's embedding.
            reproduced = _encode_empty_prompt(tokenizer, text_encoder)
            if not torch.allclose(reproduced, self.empty_text_embedding[:, :2].cpu(), atol=1e-4, rtol=1e-4):
                warnings.warn(
                    f"the CLIP text encoder in {source} does not reproduce this teacher's empty-prompt embedding; "
                    "exporting a stand-in text encoder that does",
                    stacklevel=2,
                )
                text_encoder = tokenizer = None
        if text_encoder is None:
            text_encoder, tokenizer = _embedding_carrier(self.empty_text_embedding)
        pipeline = MarigoldDepthPipeline(
            unet=self.unet,
            vae=self.vae,
            scheduler=DDIMScheduler.from_config(self.scheduler.config),
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            prediction_type="depth",
            scale_invariant=True,
            shift_invariant=True,
            default_denoising_steps=default_denoising_steps,
            default_processing_resolution=default_processing_resolution,
        )
        pipeline.save_pretrained(directory)
        save_empty_text_embedding(self.empty_text_embedding, directory / EMPTY_TEXT_EMBEDDING_FILE)
        return directory
