"""Diffusion depth teacher: Marigold / E2E-FT on diffusers components.

The teacher of D³epth (ACML 2025) is a latent diffusion depth estimator in the Marigold lineage (Ke et al., CVPR 2024)
with the single-step fix of E2E-FT (Garcia et al., WACV 2025): a Stable Diffusion 2 ``UNet2DConditionModel`` whose
``conv_in`` takes ``cat[rgb_latent, depth_latent]`` (8 channels), the SD ``AutoencoderKL`` and a DDPM / DDIM schedule.
Text conditioning is switched off by feeding the CLIP embedding of the empty prompt, kept as a tensor
(:mod:`d3epth.models.teacher.hub`), so CLIP never sits in training memory.

This module holds the network and what runs it once: the VAE codec, the UNet call, x0 from a model output, the
one-step prediction and UNet feature capture. N-step sampling is in :mod:`~d3epth.models.teacher.sampling`, building
from a config in :mod:`~d3epth.models.teacher.build`, diffusers directories in :mod:`~d3epth.models.teacher.hub`.

Conventions used throughout (shapes for the SD VAE, whose down-sampling factor f is 8):

* images: [B,3,H,W] float in [-1, 1];
* latents: [B,4,H/8,W/8], already multiplied by the VAE scaling factor (0.18215 for SD);
* normalised depth: [B,1,H,W] in [-1, 1] (Marigold's 2 %/98 % affine normalisation, near = -1);
  ``predict_depth`` maps it to [0, 1] as ``MarigoldDepthPipeline`` does.

Single-step inference always runs at ``t = T - 1 = 999`` (E2E-FT's fixed timestep; what "trailing" spacing yields for
one step). With "leading" spacing one DDIM step would run at ``t = 1`` and turn noise into noise (E2E-FT §3.2).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from torch import Tensor, nn

from d3epth.models.depth_model import decode_depth_latent
from d3epth.models.padding import pad_to_multiple
from d3epth.models.teacher import sampling
from d3epth.models.teacher.sampling import DepthPrediction

__all__ = ["DiffusionDepthTeacher", "OneStepPrediction"]

_TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")


class OneStepPrediction(NamedTuple):
    """Output of :meth:`DiffusionDepthTeacher.one_step`.

    Attributes:
        latent: the single-step depth latent x0, [B,4,⌈H/8⌉,⌈W/8⌉] in the UNet's dtype.
        features: the outputs of the requested UNet submodules from the same pass, ``{name: [B,C,h,w]}`` (empty when
            none were requested).
    """

    latent: Tensor
    features: dict[str, Tensor]


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
        empty_text_embedding: [1,L,C] with ``C == unet.config.cross_attention_dim``.
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
    # Constructors (the work is done in build.py and hub.py, which import this module)
    # ------------------------------------------------------------------------------------------------------------------

    @staticmethod
    def from_pretrained(path: str | Path, **kwargs: Any) -> DiffusionDepthTeacher:
        """Load a teacher from a local diffusers-layout directory: :func:`d3epth.models.teacher.hub.from_pretrained`.

        Keyword arguments: ``text_embedding_file``, ``text_embedding_padding``, ``timestep_spacing``,
        ``rescale_betas_zero_snr``, ``torch_dtype``, ``variant``.
        """
        from d3epth.models.teacher import hub  # hub and build import this module

        return hub.from_pretrained(path, **kwargs)

    @staticmethod
    def from_config(**config: Any) -> DiffusionDepthTeacher:
        """Random-weight teacher, tiny by default: :func:`d3epth.models.teacher.build.from_config`."""
        from d3epth.models.teacher import build  # hub and build import this module

        return build.from_config(**config)

    @staticmethod
    def sd2_config() -> dict[str, Any]:
        """``from_config`` arguments for Stable Diffusion 2 sizes: :func:`d3epth.models.teacher.build.sd2_config`."""
        from d3epth.models.teacher import build  # hub and build import this module

        return build.sd2_config()

    @staticmethod
    def from_sd2_config(**overrides: Any) -> DiffusionDepthTeacher:
        """Random-weight teacher of Stable Diffusion 2 size (:meth:`sd2_config` updated with ``overrides``)."""
        from d3epth.models.teacher import build  # hub and build import this module

        return build.from_sd2_config(**overrides)

    def replace(
        self,
        vae: AutoencoderKL | None = None,
        timestep_spacing: str | None = None,
        rescale_betas_zero_snr: bool | None = None,
    ) -> DiffusionDepthTeacher:
        """A new teacher on the same UNet and embedding with one component or schedule setting changed.

        Args:
            vae: a replacement autoencoder (same latent channels); ``None`` keeps this teacher's.
            timestep_spacing: a new scheduler spacing; ``None`` keeps this teacher's.
            rescale_betas_zero_snr: a new zero-terminal-SNR flag; ``None`` keeps this teacher's.

        Returns:
            The new teacher (sharing modules with this one, which is left as it is).
        """
        return DiffusionDepthTeacher(
            self.unet,
            self.vae if vae is None else vae,
            dict(self.noise_scheduler.config),
            self.empty_text_embedding,
            timestep_spacing=timestep_spacing,
            rescale_betas_zero_snr=rescale_betas_zero_snr,
            text_source=self.text_source,
        )

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
            image: [B,3,H,W] in [-1, 1], H and W multiples of :attr:`vae_scale_factor`.

        Returns:
            [B,4,H/8,W/8].
        """
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"encode_image expects [B, 3, H, W] in [-1, 1], got {tuple(image.shape)}")
        image = image.to(self.vae.dtype)
        return self.vae.encode(image).latent_dist.mode() * self.latent_scale

    def encode_depth(self, depth: Tensor) -> Tensor:
        """Encode normalised depth: replicated to 3 channels, posterior mean × scaling factor.

        Args:
            depth: [B,1,H,W] in [-1, 1] (2 %/98 % normalised, clipped).

        Returns:
            [B,4,H/8,W/8].
        """
        if depth.ndim != 4 or depth.shape[1] != 1:
            raise ValueError(f"encode_depth expects [B, 1, H, W] in [-1, 1], got {tuple(depth.shape)}")
        return self.encode_image(depth.expand(-1, 3, -1, -1))

    def decode_depth(self, latent: Tensor, size: Sequence[int] | None = None) -> Tensor:
        """Decode a depth latent: :func:`~d3epth.models.depth_model.decode_depth_latent` with this teacher's VAE.

        The mean of the 3 decoded channels, clipped to [-1, 1]. Differentiable (E2E-FT back-propagates through the
        frozen decoder); wrap in ``torch.no_grad()`` for inference.

        Args:
            latent: [B,4,h,w] (scaled).
            size: ``(H, W)`` of the image the latent belongs to, to crop the padding off; ``None``: no crop.

        Returns:
            [B,1,8h,8w] in [-1, 1], or [B,1,H,W] with ``size``.
        """
        if latent.ndim != 4 or latent.shape[1] != self.latent_channels:
            raise ValueError(f"decode_depth expects [B, {self.latent_channels}, h, w], got {tuple(latent.shape)}")
        return decode_depth_latent(self.vae, latent, size)

    # ------------------------------------------------------------------------------------------------------------------
    # UNet
    # ------------------------------------------------------------------------------------------------------------------

    def forward(self, rgb_latent: Tensor, noisy_latent: Tensor, timesteps: Tensor | int) -> Tensor:
        """Raw UNet output for ``cat[rgb_latent, noisy_latent]`` (that order), conditioned on the empty prompt.

        The one UNet call: diffusion training, DDIM sampling and :meth:`one_step` all go through it.

        Args:
            rgb_latent: [B,4,h,w].
            noisy_latent: [B,4,h,w] — z_t.
            timesteps: scalar or [B] integer timesteps in [0, T).

        Returns:
            [B,4,h,w]: v, ε or x0 according to :attr:`prediction_type`.
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
            model_output: [B,4,h,w].
            sample: z_t, [B,4,h,w].
            timesteps: scalar or [B].

        Returns:
            [B,4,h,w].
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

    # ------------------------------------------------------------------------------------------------------------------
    # One step
    # ------------------------------------------------------------------------------------------------------------------

    def one_step(self, image: Tensor, features: Sequence[str] = ()) -> OneStepPrediction:
        """Single-step depth latent of images of any size (+ named UNet features): E2E-FT's prediction; differentiable.

        The image is replicate-padded at the bottom and right to a multiple of :attr:`vae_scale_factor`
        (:func:`~d3epth.models.padding.pad_to_multiple`, so latent cell (i, j) covers pixels [f·i, f·i+f) ×
        [f·j, f·j+f), as the student's latent does) and encoded; the UNet then runs once at t = T − 1 = 999 on a zero
        depth latent and x0 is read off its output (for v-prediction ``√ᾱ·z_t − √(1−ᾱ)·v̂``, i.e. ``−v̂`` under zero
        terminal SNR). Stage 1 (on the fly), the teacher cache and end-to-end teacher training all call this.

        Args:
            image: [B,3,H,W] in [-1, 1], any H and W.
            features: dotted UNet submodule names whose outputs to capture in the same pass, e.g. ``"mid_block"``,
                ``"up_blocks.1"``, ``"down_blocks.2"``. A block that returns a tuple contributes its first element
                (down blocks: the hidden states).

        Returns:
            :class:`OneStepPrediction`: latent [B,4,⌈H/8⌉,⌈W/8⌉] in the UNet's dtype and ``{name: [B,C,h,w]}``.
        """
        if image.ndim != 4 or image.shape[1] != 3 or not image.is_floating_point():
            raise ValueError(f"one_step expects float [B, 3, H, W] in [-1, 1], got {image.dtype} {tuple(image.shape)}")
        rgb_latent = self.encode_image(pad_to_multiple(image, self.vae_scale_factor))
        return self._one_step_from_latent(rgb_latent, features)

    def one_step_depth(self, image: Tensor) -> Tensor:
        """The one-step depth latent of :meth:`one_step`, decoded: [B,1,H,W] in [-1, 1] for images [B,3,H,W].

        The pixel-space pseudo-label stage 2 trains unlabeled images on (``teacher_depth``), and the teacher column of
        stage 1's validation images.
        """
        return self.decode_depth(self.one_step(image).latent, image.shape[-2:])

    def _one_step_from_latent(self, rgb_latent: Tensor, names: Sequence[str]) -> OneStepPrediction:
        depth_latent = torch.zeros_like(rgb_latent)
        t = self.num_train_timesteps - 1
        timestep = torch.tensor(t, device=rgb_latent.device)
        with self._capture(names) as captured:
            output = self(rgb_latent, depth_latent, timestep)
        return OneStepPrediction(self.latent_from_model_output(output, depth_latent, t), dict(captured))

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
            features = self._one_step_from_latent(z, names).features
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

    # ------------------------------------------------------------------------------------------------------------------
    # N steps and export (sampling.py, hub.py)
    # ------------------------------------------------------------------------------------------------------------------

    def predict_latent(self, rgb_latent: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        """N-step DDIM sampling of the depth latent [N,4,h,w]: :func:`d3epth.models.teacher.sampling.predict_latent`.

        Further arguments, as there: ``num_steps``, ``latents``, ``generator``, ``init_noise``, ``batch_size``.
        """
        return sampling.predict_latent(self, rgb_latent, *args, **kwargs)

    def predict_depth(self, image: Tensor, *args: Any, **kwargs: Any) -> DepthPrediction:
        """Depth in [0, 1] for images [B,3,H,W]: :func:`d3epth.models.teacher.sampling.predict_depth`.

        Further arguments, as there: ``num_steps``, ``ensemble_size``, ``processing_resolution``,
        ``match_input_resolution``, ``batch_size``, ``generator``, ``latents``, ``init_noise``, ``output_uncertainty``,
        ``resample_method_input``, ``resample_method_output``, ``ensembling_kwargs``.
        """
        return sampling.predict_depth(self, image, *args, **kwargs)

    def save_pretrained(
        self, directory: str | Path, default_denoising_steps: int = 1, default_processing_resolution: int | None = None
    ) -> Path:
        """Write a ``MarigoldDepthPipeline`` directory: :func:`d3epth.models.teacher.hub.save_pretrained`."""
        from d3epth.models.teacher import hub  # hub and build import this module

        return hub.save_pretrained(self, directory, default_denoising_steps, default_processing_resolution)
