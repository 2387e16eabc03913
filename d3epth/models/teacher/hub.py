"""Teachers on disk in the diffusers layout: loading, the empty-prompt embedding, export for ``MarigoldDepthPipeline``.

:func:`from_pretrained` reads a local Marigold / E2E-FT / Stable Diffusion 2 directory (``unet/``, ``vae/``,
``scheduler/`` and a source of the empty-prompt embedding); nothing is downloaded. Marigold switches text conditioning
off by feeding the CLIP embedding of the empty prompt, which is computed once (:func:`compute_empty_text_embedding`)
and kept as a tensor (:func:`save_empty_text_embedding`, :func:`load_empty_text_embedding`), so CLIP never sits in
training memory. :func:`save_pretrained` writes a directory that ``diffusers.MarigoldDepthPipeline.from_pretrained``
loads (diffusers ``pipelines/marigold/pipeline_marigold_depth.py``), with a two-token CLIP stand-in when the original
text encoder is not at hand.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, MarigoldDepthPipeline, UNet2DConditionModel
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from d3epth.models.teacher.build import widen_conv_in
from d3epth.models.teacher.model import DiffusionDepthTeacher

__all__ = [
    "EMPTY_TEXT_EMBEDDING_FILE",
    "compute_empty_text_embedding",
    "from_pretrained",
    "load_empty_text_embedding",
    "save_empty_text_embedding",
    "save_pretrained",
]

logger = logging.getLogger(__name__)

#: File name of the cached empty-prompt embedding inside a teacher directory.
EMPTY_TEXT_EMBEDDING_FILE = "empty_text_embedding.safetensors"
_EMBEDDING_KEY = "empty_text_embedding"
_TEXT_PADDINGS = ("do_not_pad", "max_length")


# ----------------------------------------------------------------------------------------------------------------------
# Empty-prompt embedding
# ----------------------------------------------------------------------------------------------------------------------


def compute_empty_text_embedding(path: str | Path, padding: str = "do_not_pad") -> Tensor:
    """Encode the empty prompt with the CLIP text encoder of a diffusers-layout directory.

    Marigold and ``MarigoldDepthPipeline`` tokenise ``""`` with ``padding="do_not_pad"`` (BOS + EOS, shape
    [1,2,C]); E2E-FT pads to ``model_max_length`` ([1,77,C]). Use the variant the checkpoint was trained with.
    Because CLIP's text transformer is causal, the first two rows of the padded embedding equal the unpadded one.

    Args:
        path: directory holding ``text_encoder/`` and ``tokenizer/``.
        padding: ``"do_not_pad"`` (Marigold) or ``"max_length"`` (E2E-FT).

    Returns:
        The embedding, float32 [1,L,C] with ``L = 2`` or ``model_max_length``.

    Raises:
        ValueError: on an unknown ``padding``.
        FileNotFoundError: if ``text_encoder/`` or ``tokenizer/`` is missing.
    """
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
    """Write an empty-prompt embedding [1,L,C] to a safetensors file (key ``"empty_text_embedding"``)."""
    if embedding.ndim != 3 or embedding.shape[0] != 1:
        raise ValueError(f"empty text embedding must have shape [1, L, C], got {tuple(embedding.shape)}")
    save_file({_EMBEDDING_KEY: embedding.detach().float().cpu().contiguous()}, str(file))


def load_empty_text_embedding(file: str | Path) -> Tensor:
    """Read an embedding written by :func:`save_empty_text_embedding` (or any safetensors file with one tensor).

    Returns:
        float32 [1,L,C].

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if it holds no single [1,L,C] tensor.
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
        embedding: [1,L,C] with ``L >= 2``; rows 0 and 1 (BOS, EOS) are reproduced.

    Returns:
        ``(CLIPTextModel, CLIPTokenizer)``.
    """
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
# Loading a diffusers directory
# ----------------------------------------------------------------------------------------------------------------------


def _check_dir(path: Path, subfolders: Sequence[str]) -> None:
    if not path.is_dir():
        raise FileNotFoundError(f"teacher directory {path} does not exist")
    for sub in subfolders:
        if not (path / sub).is_dir():
            raise FileNotFoundError(
                f"teacher directory {path} has no {sub}/ subfolder; expected a diffusers layout with "
                f"{', '.join(s + '/' for s in subfolders)} (a Marigold, E2E-FT or Stable Diffusion 2 checkpoint)"
            )


def from_pretrained(
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
    directory, whose 4-channel ``conv_in`` is widened with :func:`~d3epth.models.teacher.build.widen_conv_in`. The
    empty-prompt embedding comes from ``text_embedding_file`` if given, else from
    ``<path>/empty_text_embedding.safetensors`` if present, else it is computed once from ``text_encoder/`` +
    ``tokenizer/`` (which are then released).

    Args:
        path: directory with ``unet/``, ``vae/``, ``scheduler/`` and the text embedding source.
        text_embedding_file: explicit safetensors file with the [1,L,C] embedding.
        text_embedding_padding: ``"do_not_pad"`` (Marigold, [1,2,C]) or ``"max_length"`` (E2E-FT, [1,77,C]), used
            only when computing from the text encoder.
        timestep_spacing: see :class:`~d3epth.models.teacher.DiffusionDepthTeacher`; ``"trailing"`` by default.
        rescale_betas_zero_snr: see :class:`~d3epth.models.teacher.DiffusionDepthTeacher`; ``None`` keeps the
            checkpoint's value.
        torch_dtype: dtype for the UNet and VAE weights (e.g. ``torch.float16``); default float32.
        variant: diffusers weight variant such as ``"fp16"``.

    Returns:
        The teacher, in train mode with gradients enabled (call ``freeze()`` to use it as a frozen teacher).

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
        logger.info("widening %s conv_in from %d to %d channels", path / "unet", latent_channels, 2 * latent_channels)
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
    return DiffusionDepthTeacher(
        unet,
        vae,
        scheduler_config,
        embedding,
        timestep_spacing=timestep_spacing,
        rescale_betas_zero_snr=rescale_betas_zero_snr,
        text_source=path if has_text_encoder else None,
    )


# ----------------------------------------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------------------------------------


def save_pretrained(
    teacher: DiffusionDepthTeacher,
    directory: str | Path,
    default_denoising_steps: int = 1,
    default_processing_resolution: int | None = None,
) -> Path:
    """Write a directory that ``diffusers.MarigoldDepthPipeline.from_pretrained`` loads (and :func:`from_pretrained`).

    Contents: ``unet/``, ``vae/``, ``scheduler/`` (DDIM, this teacher's spacing), ``text_encoder/`` +
    ``tokenizer/``, ``model_index.json`` (``prediction_type="depth"``, affine-invariant, default steps and
    processing resolution) and ``empty_text_embedding.safetensors`` (the exact conditioning tensor, read back first
    by :func:`from_pretrained`). The text encoder is the original CLIP when the teacher was loaded from a directory
    that had one; otherwise a two-token stand-in whose empty-prompt output equals this teacher's embedding (see
    ``_embedding_carrier``). The diffusers pipeline always encodes the empty prompt without padding (2 tokens); a
    teacher trained on a 77-token (E2E-FT ``max_length``) embedding therefore runs there with its first 2 rows,
    which is what CLIP's causal encoder gives for the unpadded prompt.

    Args:
        teacher: the teacher to write.
        directory: output directory (created).
        default_denoising_steps: ``model_index.json`` default steps.
        default_processing_resolution: default longer edge; ``None`` = the VAE's ``sample_size`` rounded to a
            multiple of f (768 for SD2-768, Marigold's value).

    Returns:
        The directory.
    """
    directory = Path(directory)
    f = teacher.vae_scale_factor
    if default_processing_resolution is None:
        default_processing_resolution = int(teacher.vae.config.sample_size) // f * f
    if default_processing_resolution % f:
        raise ValueError(
            f"default_processing_resolution must be a multiple of {f}, got {default_processing_resolution}"
        )
    if teacher.empty_text_embedding.shape[1] != 2:
        warnings.warn(
            f"the teacher uses a {teacher.empty_text_embedding.shape[1]}-token empty-prompt embedding; "
            "MarigoldDepthPipeline always uses the 2-token (unpadded) one",
            stacklevel=3,
        )
    text_encoder = tokenizer = None
    if teacher.text_source is not None:
        source = Path(teacher.text_source)
        text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", local_files_only=True)
        tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", local_files_only=True)
        # The pipeline recomputes the embedding from this CLIP; keep it only if it gives this teacher's embedding.
        reproduced = _encode_empty_prompt(tokenizer, text_encoder)
        if not torch.allclose(reproduced, teacher.empty_text_embedding[:, :2].cpu(), atol=1e-4, rtol=1e-4):
            warnings.warn(
                f"the CLIP text encoder in {source} does not reproduce this teacher's empty-prompt embedding; "
                "exporting a stand-in text encoder that does",
                stacklevel=3,
            )
            text_encoder = tokenizer = None
    if text_encoder is None:
        text_encoder, tokenizer = _embedding_carrier(teacher.empty_text_embedding)
    pipeline = MarigoldDepthPipeline(
        unet=teacher.unet,
        vae=teacher.vae,
        scheduler=DDIMScheduler.from_config(teacher.scheduler.config),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        prediction_type="depth",
        scale_invariant=True,
        shift_invariant=True,
        default_denoising_steps=default_denoising_steps,
        default_processing_resolution=default_processing_resolution,
    )
    pipeline.save_pretrained(directory)
    save_empty_text_embedding(teacher.empty_text_embedding, directory / EMPTY_TEXT_EMBEDDING_FILE)
    return directory
