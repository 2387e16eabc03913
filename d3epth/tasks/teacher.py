"""Stage [1]: train the diffusion depth teacher (Marigold objective, or E2E-FT / D²epth end-to-end fine-tuning).

Two training modes of :class:`TeacherTask`, both training only the UNet (the VAE is frozen, outside the optimiser):

* ``mode: diffusion`` — Marigold (Ke et al., CVPR 2024; Marigold's ``src/trainer/marigold_depth_trainer.py``): RGB
  and normalised depth are VAE-encoded (posterior mean × scaling factor), ``t ~ U{0..T-1}`` per sample, annealed
  multi-resolution noise (:mod:`d3epth.models.noise`), ``z_t = noise_scheduler.add_noise(z0, ε, t)``, and a masked
  latent MSE between the UNet output and the target of the scheduler's prediction type (v = √ᾱ·ε − √(1−ᾱ)·z0 for
  SD2). The latent mask drops every 8×8 cell holding an invalid pixel.
* ``mode: e2e`` — E2E-FT (Garcia et al., WACV 2025; diffusion-e2e-ft's ``training/train.py``): ``t = T-1 = 999``,
  zero depth latent, x0 from the model output, decoded by the frozen VAE decoder (gradients flow through it) to depth
  in [-1, 1], and a pixel-space loss against ``depth_norm`` on the valid mask: ``loss: ssi`` (E2E-FT's
  least-squares-aligned L1, fp32) or ``loss: hybrid`` (D²epth: :class:`~d3epth.losses.HybridDepthLoss`, whose
  weighting parameters join the optimiser without weight decay).

Validation predicts depth with one DDIM step (trailing spacing, zero initial noise; E2E-FT's fix) in [0, 1]; the shared
evaluator aligns it per image. The teacher comes from any source :func:`~d3epth.models.teacher.sources.load_teacher`
takes — a diffusers directory, a config (optionally with the VAE of an
:class:`~d3epth.tasks.autoencoder.AutoencoderTask` checkpoint), or a :class:`TeacherTask` checkpoint, whose
architecture :meth:`TeacherTask.on_save_checkpoint` stores under
:data:`~d3epth.models.teacher.sources.TEACHER_ARCH_KEY`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from d3epth.losses import HybridDepthLoss, SSILoss, latent_distillation_loss, resolve_shared_parameters
from d3epth.models.noise import annealed_strength, multi_res_noise
from d3epth.models.teacher.sources import (
    TEACHER_ARCH_KEY,
    TeacherSpec,
    load_teacher,
    resolve_teacher_source,
    teacher_architecture,
)
from d3epth.tasks.base import Batch, DepthTask

__all__ = ["TeacherTask"]

_MODES = ("diffusion", "e2e")
_LOSSES = {"diffusion": ("mse",), "e2e": ("ssi", "hybrid")}


# ----------------------------------------------------------------------------------------------------------------------
# The task
# ----------------------------------------------------------------------------------------------------------------------


class TeacherTask(DepthTask):
    """Train the teacher's UNet with Marigold's diffusion objective or end to end (E2E-FT / D²epth).

    The teacher spec is stored in the hyper-parameters, so ``TeacherTask.load_from_checkpoint(ckpt)`` rebuilds it from
    the same source; the checkpoint holds all ``teacher.*`` weights (UNet *and* the frozen VAE) plus the architecture,
    so :func:`~d3epth.models.teacher.sources.load_teacher` rebuilds the trained teacher from the checkpoint alone.

    Args:
        teacher: teacher source, see :func:`~d3epth.models.teacher.sources.load_teacher` (e.g.
            ``{path: ${oc.env:SD2_PATH}}`` or ``{config: {...}, vae_from: autoencoder.ckpt}`` or a teacher ``.ckpt`` to
            fine-tune further).
        mode: ``"diffusion"`` (Marigold) or ``"e2e"`` (E2E-FT single-step, pixel-space loss).
        loss: ``"mse"`` (diffusion: masked latent MSE), ``"ssi"`` (e2e: E2E-FT's SSI-L1) or ``"hybrid"`` (e2e: D²epth's
            HybridDepthLoss); ``None`` = ``mse`` for diffusion, ``ssi`` for e2e.
        loss_kwargs: arguments of :class:`~d3epth.losses.SSILoss` or :class:`~d3epth.losses.HybridDepthLoss`.
        weighting_lr: learning rate of the hybrid loss's weighting parameters (uncertainty log-variances, GradNorm
            weights; no weight decay), as in stage 2: at the UNet's 3e-5 an Adam step moves them by at most ~3e-5, so
            over a 20k-step schedule they could not leave ~0.13 of their start, far from their optimum log L.
        gradnorm_shared: UNet parameter or submodule whose gradients GradNorm balances (``weighting: gradnorm`` only).
        timestep_spacing: override the teacher's scheduler spacing (``None`` keeps it; ``"trailing"`` is the fix
            that makes one-step inference start at t = 999).
        rescale_betas_zero_snr: override the zero-terminal-SNR flag of the teacher's schedule (Marigold v1-1: True;
            ``None`` keeps it).
        multires_noise: diffusion mode: multi-resolution noise instead of Gaussian.
        multires_strength: s of the pyramid noise (Marigold: 0.9).
        multires_levels: coarser levels of the pyramid (Marigold: 9).
        annealed_noise: anneal the strength as ``s · t / T`` (Marigold).
        gradient_checkpointing: UNet gradient checkpointing (memory for compute; E2E-FT uses it).
        noise_seed: seed of the diffusion timesteps and noise during ``fit`` (with the rank and the batch index; see
            :meth:`noise_generator`); ``None`` = the run's seed (``DepthTask.run_seed``).
        val_num_steps: DDIM steps of the validation prediction (1 = E2E-FT / Marigold v1-1 setting).
        lr, weight_decay, optimizer, warmup_steps, decay_steps, final_lr_ratio, benchmarks, alignment,
            num_logged_images, max_consecutive_skipped_steps, channels_last: see :class:`~d3epth.tasks.base.DepthTask`
            (defaults: Marigold's Adam, 3e-5, 100-step warm-up, exponential decay to 1 %).
    """

    #: The task trains the teacher itself: keep all of it in checkpoints (the VAE too, so they stand alone).
    frozen_prefixes: tuple[str, ...] = ()

    def __init__(
        self,
        teacher: str | TeacherSpec,
        mode: str = "diffusion",
        loss: str | None = None,
        loss_kwargs: dict[str, Any] | None = None,
        weighting_lr: float = 1e-2,
        gradnorm_shared: str = "conv_out",
        timestep_spacing: str | None = None,
        rescale_betas_zero_snr: bool | None = None,
        multires_noise: bool = True,
        multires_strength: float = 0.9,
        multires_levels: int = 9,
        annealed_noise: bool = True,
        gradient_checkpointing: bool = False,
        noise_seed: int | None = None,
        val_num_steps: int = 1,
        lr: float = 3e-5,
        weight_decay: float = 0.0,
        optimizer: str = "adam",
        warmup_steps: int = 100,
        decay_steps: int | None = None,
        final_lr_ratio: float = 0.01,
        benchmarks: dict[str, str] | None = None,
        alignment: str = "depth",
        num_logged_images: int = 4,
        max_consecutive_skipped_steps: int = 10,
        channels_last: bool = False,
    ) -> None:
        super().__init__(
            lr=lr,
            weight_decay=weight_decay,
            optimizer=optimizer,
            warmup_steps=warmup_steps,
            decay_steps=decay_steps,
            final_lr_ratio=final_lr_ratio,
            benchmarks=benchmarks,
            alignment=alignment,
            num_logged_images=num_logged_images,
            max_consecutive_skipped_steps=max_consecutive_skipped_steps,
            channels_last=channels_last,
        )
        if mode not in _MODES:
            raise ValueError(f"TeacherTask: mode must be one of {_MODES}, got {mode!r}")
        loss = loss or _LOSSES[mode][0]
        if loss not in _LOSSES[mode]:
            raise ValueError(f"TeacherTask: mode {mode!r} takes loss in {_LOSSES[mode]}, got {loss!r}")
        if mode == "diffusion" and loss_kwargs:
            raise ValueError("TeacherTask: loss_kwargs apply to the e2e losses (ssi, hybrid), not to mode 'diffusion'")
        if val_num_steps < 1:
            raise ValueError(f"TeacherTask: val_num_steps must be >= 1, got {val_num_steps}")
        self.save_hyperparameters()
        self.hparams.loss = loss

        teacher = resolve_teacher_source(teacher, "model.init_args.teacher")
        self.hparams["teacher"] = teacher  # run directories as the checkpoints they named
        built = load_teacher(teacher, purpose="model.init_args.teacher")
        if timestep_spacing is not None or rescale_betas_zero_snr is not None:
            built = built.replace(timestep_spacing=timestep_spacing, rescale_betas_zero_snr=rescale_betas_zero_snr)
        self.teacher = built
        # Only the UNet learns; the VAE is frozen and stays in eval mode (see train()).
        self.teacher.vae.requires_grad_(False).eval()
        self.teacher.unet.requires_grad_(True)
        if gradient_checkpointing:
            self.teacher.unet.enable_gradient_checkpointing()

        self.loss_fn: SSILoss | HybridDepthLoss | None = None
        if loss == "ssi":
            self.loss_fn = SSILoss(**(loss_kwargs or {}))
        elif loss == "hybrid":
            self.loss_fn = HybridDepthLoss(**(loss_kwargs or {}))
        self._gradnorm = loss == "hybrid" and type(self.loss_fn.weighting).__name__ == "GradNormWeighting"
        if self._gradnorm:
            resolve_shared_parameters(self.teacher.unet, gradnorm_shared)  # fail now on a wrong name

    # ------------------------------------------------------------------------------------------------- plumbing
    def train(self, mode: bool = True) -> TeacherTask:
        """``nn.Module.train``, keeping the frozen VAE in eval mode."""
        super().train(mode)
        self.teacher.vae.eval()
        return self

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Task marker (base) plus the teacher's architecture, so ``load_teacher`` needs no other file."""
        super().on_save_checkpoint(checkpoint)
        checkpoint[TEACHER_ARCH_KEY] = teacher_architecture(self.teacher)

    def noise_generator(self, device: torch.device) -> torch.Generator | None:
        """The generator of this training batch's timesteps and noise; ``None`` outside ``fit`` (global RNG).

        It is seeded from ``(noise seed, global rank, Lightning's batch index across epochs)``
        (:meth:`~d3epth.tasks.base.DepthTask.batch_seed`), so ranks draw different noise and a run resumed from any
        checkpoint draws what the uninterrupted run drew; the noise seed is ``noise_seed``, else the run's seed, which
        travels in the checkpoint. Lightning itself saves no RNG state.
        """
        trainer = self._trainer
        if trainer is None or not trainer.training:
            return None
        seed = self.batch_seed(seed=self.hparams.noise_seed)
        return torch.Generator(device=device).manual_seed(seed)

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The UNet (decayed as configured) and, for the hybrid loss, its weighting (no weight decay)."""
        groups: list[dict[str, Any]] = [{"params": list(self.teacher.unet.parameters()), "name": "unet"}]
        if isinstance(self.loss_fn, HybridDepthLoss):
            for group in self.loss_fn.weighting.param_groups(self.hparams.weighting_lr):
                groups.append({**group, "name": "loss_weighting"})
        return groups

    def _check_size(self, image: Tensor) -> None:
        f = self.teacher.vae_scale_factor
        if image.shape[-2] % f or image.shape[-1] % f:
            raise ValueError(
                f"TeacherTask: training images of size {tuple(image.shape[-2:])} are not multiples of the VAE factor "
                f"{f}; set the training datasets' 'resize' (or crop) to multiples of {f}"
            )

    # ----------------------------------------------------------------------------------------- diffusion mode
    def sample_noise(
        self, shape: torch.Size | tuple[int, ...], timesteps: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Training noise for latents of ``shape``: annealed multi-resolution noise (Marigold) or Gaussian.

        Args:
            shape: latent shape ``[B,C,h,w]``.
            timesteps: integer timesteps [B] (they set the annealed strength).
            generator: RNG on the timesteps' device; ``None`` = torch's global one.
        """
        hp = self.hparams
        if not hp.multires_noise:
            return torch.randn(shape, generator=generator, device=timesteps.device)
        strength: float | Tensor = hp.multires_strength
        if hp.annealed_noise:
            strength = annealed_strength(timesteps, self.teacher.num_train_timesteps, hp.multires_strength)
        return multi_res_noise(shape, strength, hp.multires_levels, generator=generator, device=timesteps.device)

    def diffusion_target(self, z0: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """Regression target of the UNet for the scheduler's prediction type (v = √ᾱ·ε − √(1−ᾱ)·z0 for SD2)."""
        prediction_type = self.teacher.prediction_type
        if prediction_type == "v_prediction":
            return self.teacher.noise_scheduler.get_velocity(z0, noise, timesteps)
        if prediction_type == "epsilon":
            return noise
        return z0

    def diffusion_loss(
        self, batch: Batch, timesteps: Tensor | None = None, noise: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Marigold's objective on a batch; ``timesteps`` [B] and ``noise`` [B,4,h,w] are drawn when not given.

        Draws come from :meth:`noise_generator` during ``fit`` and from torch's global RNG otherwise.

        Returns:
            ``(loss, parts)`` with the masked latent MSE (mean over valid latent elements of the batch).
        """
        image, valid = batch["image"], batch["valid_mask"]
        self._check_size(image)
        with torch.no_grad():
            rgb_latent = self.teacher.encode_image(image)
            depth_latent = self.teacher.encode_depth(batch["depth_norm"])
        batch_size = depth_latent.shape[0]
        generator = self.noise_generator(depth_latent.device) if timesteps is None or noise is None else None
        if timesteps is None:
            timesteps = torch.randint(
                0, self.teacher.num_train_timesteps, (batch_size,), generator=generator, device=depth_latent.device
            )
        if noise is None:
            noise = self.sample_noise(depth_latent.shape, timesteps, generator)
        noise = noise.to(depth_latent)
        noisy = self.teacher.noise_scheduler.add_noise(depth_latent, noise, timesteps)
        target = self.diffusion_target(depth_latent, noise, timesteps)
        output = self.teacher(rgb_latent, noisy, timesteps)
        loss = latent_distillation_loss(output.float(), target.float(), valid, factor=self.teacher.vae_scale_factor)
        return loss, {"loss_latent": loss.detach()}

    # ----------------------------------------------------------------------------------------------- e2e mode
    def e2e_prediction(self, image: Tensor) -> Tensor:
        """Single-step (t = 999, zero latent) depth in [-1, 1], differentiable w.r.t. the UNet. [B,1,H,W]."""
        return self.teacher.decode_depth(self.teacher.one_step(image).latent)

    def e2e_loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        """Pixel-space loss of the single-step prediction against ``depth_norm`` on ``valid_mask``."""
        image, target, valid = batch["image"], batch["depth_norm"], batch["valid_mask"]
        self._check_size(image)
        pred = self.e2e_prediction(image).float()
        if isinstance(self.loss_fn, HybridDepthLoss):
            shared = (
                resolve_shared_parameters(self.teacher.unet, self.hparams.gradnorm_shared) if self._gradnorm else None
            )
            return self.loss_fn(pred, target.float(), valid, image=image.float(), shared_parameters=shared)
        assert self.loss_fn is not None
        loss = self.loss_fn(pred, target.float(), valid)
        return loss, {"loss_ssi": loss.detach()}

    # ----------------------------------------------------------------------------------------------- steps
    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        """One step of the configured objective; logs ``train/loss`` and its parts.

        A non-finite loss (E2E-FT skips those too) is the base task's to skip, like every task's: see
        :class:`~d3epth.tasks.base.DepthTask`.
        """
        if self.hparams.mode == "diffusion":
            loss, parts = self.diffusion_loss(batch)
        else:
            loss, parts = self.e2e_loss(batch)
        size = batch["image"].shape[0]
        self.log("train/loss", loss.detach(), batch_size=size, prog_bar=True)
        self.log_dict({f"train/{k}": v for k, v in parts.items()}, batch_size=size)
        return loss

    def predict_depth(self, batch: Batch) -> Tensor:
        """Teacher depth in [0, 1] (DDIM, ``val_num_steps`` steps, zero initial noise) at the input resolution."""
        return self.teacher.predict_depth(batch["image"], num_steps=self.hparams.val_num_steps).depth
