"""Tiny on-disk diffusers checkpoints for teacher tests, built from configs only (no downloads).

``make_tiny_checkpoint`` writes a directory in the layout of a Marigold checkpoint (``unet/`` with 8 input channels,
``vae/``, ``scheduler/`` DDIM with trailing spacing, ``text_encoder/``, ``tokenizer/`` from a hand-written
vocab.json / merges.txt, ``model_index.json``) or, with ``in_channels=4``, of a Stable Diffusion 2 directory.
The session fixtures ``tiny_marigold_dir`` and ``tiny_sd2_dir`` (``tests/conftest.py``) are built with it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, MarigoldDepthPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from d3epth.models.teacher.build import SD2_SCHEDULER_CONFIG

CROSS_ATTENTION_DIM = 32

#: Marigold v1-1 scheduler (SD2 betas, v-prediction, trailing spacing, zero terminal SNR), as a checkpoint stores it.
SCHEDULER_CONFIG = dict(SD2_SCHEDULER_CONFIG)


def tiny_unet(in_channels: int = 8, seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=CROSS_ATTENTION_DIM,
        attention_head_dim=8,
        norm_num_groups=32,
    )


def tiny_vae(seed: int = 1) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )


def tiny_text_encoder(seed: int = 2) -> CLIPTextModel:
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=8,
        hidden_size=CROSS_ATTENTION_DIM,
        intermediate_size=37,
        projection_dim=CROSS_ATTENTION_DIM,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    return CLIPTextModel(config).eval()


def tiny_tokenizer(directory: Path) -> CLIPTokenizer:
    """A CLIP BPE tokenizer from a hand-written 8-entry vocabulary (start/end tokens + a few pieces)."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a": 2, "b": 3, "a</w>": 4, "b</w>": 5, "ab</w>": 6, "ab": 7}
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\na b</w>\na b\n")
    (directory / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77}))
    return CLIPTokenizer.from_pretrained(directory, local_files_only=True)


def make_tiny_checkpoint(directory: Path, in_channels: int = 8, scheduler_config: dict | None = None) -> Path:
    """Write a tiny Marigold (``in_channels=8``) or SD2-like (``in_channels=4``) checkpoint directory."""
    with torch.random.fork_rng(devices=[]):  # seeded weights without disturbing the tests' global RNG
        pipeline = MarigoldDepthPipeline(
            unet=tiny_unet(in_channels),
            vae=tiny_vae(),
            scheduler=DDIMScheduler(**(scheduler_config or SCHEDULER_CONFIG)),
            text_encoder=tiny_text_encoder(),
            tokenizer=tiny_tokenizer(directory.parent / f"{directory.name}_vocab"),
            prediction_type="depth",
            default_denoising_steps=1,
            default_processing_resolution=0,
        )
    pipeline.save_pretrained(directory)
    return directory
