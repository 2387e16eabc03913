"""Stage 0: train a small ``AutoencoderKL`` on RGB images and depth maps, for runs without a Stable Diffusion VAE.

Marigold reuses Stable Diffusion's VAE for depth: a normalised depth map replicated to 3 channels is encoded, and
the decoded 3 channels are averaged (Marigold (Ke et al., CVPR 2024) App. B: the SD VAE reconstructs Hypersim depth
with an MAE of about 0.0095 in the normalised [-1, 1] range). Where no pretrained VAE is at hand (sample data, CPU,
tests) this task trains one from scratch with the same interface, so that a teacher built with
``DiffusionDepthTeacher.from_config`` can take it (``teacher: {config: {...}, vae_from: <this task's checkpoint>}``,
see :func:`d3epth.models.teacher.sources.load_teacher`).

Objective (the reconstruction + KL part of the LDM KL-f8 autoencoder; no perceptual or adversarial terms)::

    L = w_rgb · rec(x̂_rgb, x_rgb) + w_depth · rec(x̂_depth, d̃ ⊗ 1_3) + w_kl · KL(q(z|x) ‖ N(0, I)) / (3·H·W)

where ``rec`` is the per-pixel L1 or MSE and the KL (summed over the latent) is divided by the number of image values,
so ``kl_weight = 1e-6`` keeps LDM's ratio between the two terms (LDM sums the reconstruction over pixels).

Latent scale: the diffusion objective assumes latents of roughly unit variance, which LDM obtains by multiplying them
by ``scaling_factor = 1 / std(z)`` measured on data (0.18215 for SD). With ``scaling_factor: null`` this task keeps an
exponential moving average of the mean and variance of the *depth* latents' posterior means (the quantity the teacher
diffuses) and :func:`~d3epth.models.teacher.sources.load_autoencoder` sets ``scaling_factor = 1 / std``.

Validation reports, per validation set, the depth round trip ``decode(encode(d̃))`` (mean of the 3 channels, clipped):
``val/<set>/depth_recon_mae`` in normalised units, and through :meth:`predict_depth` the shared evaluator's AbsRel /
δ1 after affine alignment — an upper bound on what any model predicting this latent can reach.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from torch import Tensor, nn
from torchmetrics import MeanMetric

from d3epth.models.padding import crop_to, pad_to_multiple
from d3epth.models.teacher.build import build_autoencoder
from d3epth.tasks.base import Batch, DepthTask

__all__ = ["AutoencoderTask"]

_RECON_LOSSES = ("l1", "mse")


class AutoencoderTask(DepthTask):
    """Train a small ``AutoencoderKL`` on RGB and normalised depth (replicated to 3 channels).

    Args:
        block_out_channels: VAE channels per level; the latent is ``2 ** (levels - 1)`` times smaller than the image.
        layers_per_block: ResNet layers per level.
        norm_num_groups: GroupNorm groups (divides every entry of ``block_out_channels``).
        latent_channels: channels of the latent (4, as SD and the teacher's UNet expect).
        sample_size: nominal image size written to the VAE config.
        mid_block_attention: self-attention in the VAE's middle block (as SD).
        scaling_factor: latent scaling factor; ``None`` = estimated as ``1 / std`` of the depth latents seen in
            training (recommended for a VAE trained from scratch).
        recon_loss: ``"l1"`` or ``"mse"`` per-pixel reconstruction loss.
        rgb_weight: weight of the RGB reconstruction.
        depth_weight: weight of the depth reconstruction.
        kl_weight: weight of the KL term (per image value, see the module docstring); LDM: 1e-6.
        sample_posterior: decode a sample of the posterior during training (LDM) rather than its mean.
        latent_stats_momentum: EMA momentum of the latent statistics behind ``scaling_factor=None``.
        seed: seed of the initial weights (the global RNG is not touched).
        lr, weight_decay, optimizer, warmup_steps, decay_steps, final_lr_ratio, benchmarks, alignment,
            num_logged_images, max_consecutive_skipped_steps, channels_last: see :class:`~d3epth.tasks.base.DepthTask`.
    """

    #: Nothing is frozen: the whole autoencoder is trained and checkpointed.
    frozen_prefixes: tuple[str, ...] = ()

    def __init__(
        self,
        block_out_channels: Sequence[int] = (8, 16, 32, 32),
        layers_per_block: int = 1,
        norm_num_groups: int = 8,
        latent_channels: int = 4,
        sample_size: int = 64,
        mid_block_attention: bool = True,
        scaling_factor: float | None = None,
        recon_loss: str = "l1",
        rgb_weight: float = 1.0,
        depth_weight: float = 1.0,
        kl_weight: float = 1e-6,
        sample_posterior: bool = True,
        latent_stats_momentum: float = 0.01,
        seed: int = 0,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        optimizer: str = "adamw",
        warmup_steps: int = 50,
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
        if recon_loss not in _RECON_LOSSES:
            raise ValueError(f"AutoencoderTask: recon_loss must be one of {_RECON_LOSSES}, got {recon_loss!r}")
        if scaling_factor is not None and scaling_factor <= 0:
            raise ValueError(f"AutoencoderTask: scaling_factor must be > 0 or null (estimate), got {scaling_factor}")
        if not 0.0 < latent_stats_momentum <= 1.0:
            raise ValueError(f"AutoencoderTask: latent_stats_momentum must be in (0, 1], got {latent_stats_momentum}")
        if min(rgb_weight, depth_weight, kl_weight) < 0:
            raise ValueError("AutoencoderTask: rgb_weight, depth_weight and kl_weight must be >= 0")
        self.save_hyperparameters()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.vae = build_autoencoder(
                block_out_channels,
                layers_per_block,
                norm_num_groups,
                latent_channels,
                sample_size,
                scaling_factor if scaling_factor is not None else 1.0,
                mid_block_attention,
            )
        # Running statistics of the (unscaled) depth latents; persistent, so a checkpoint carries the estimate.
        self.register_buffer("latent_mean", torch.zeros(()))
        self.register_buffer("latent_var", torch.ones(()))
        self.register_buffer("latent_stats_initialised", torch.zeros((), dtype=torch.bool))
        self.val_depth_mae = nn.ModuleList()
        self.val_rgb_mae = nn.ModuleList()

    # ------------------------------------------------------------------------------------------------------ model
    @property
    def factor(self) -> int:
        """Image-to-latent down-sampling factor."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def estimated_scaling_factor(self) -> float:
        """``1 / std`` of the depth latents seen in training (1.0 before any training step)."""
        return float(self.latent_var.clamp_min(1e-12).rsqrt())

    def scaling_factor(self) -> float:
        """The scaling factor to export: the configured one, else the estimate."""
        configured = self.hparams.scaling_factor
        return float(configured) if configured is not None else self.estimated_scaling_factor()

    def reconstruct(self, x: Tensor, sample: bool = False) -> tuple[Tensor, Any]:
        """Encode and decode ``x`` [B,3,H,W] in [-1,1].

        Sizes that are not multiples of :attr:`factor` are replicate-padded for the round trip and cropped back (as
        ``MarigoldDepthPipeline`` pads its input).

        Returns:
            ``(reconstruction [B,3,H,W], posterior)``; ``sample`` decodes a posterior sample instead of the mean.
        """
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"AutoencoderTask.reconstruct expects [B, 3, H, W], got {tuple(x.shape)}")
        posterior = self.vae.encode(pad_to_multiple(x, self.factor)).latent_dist
        z = posterior.sample() if sample else posterior.mode()
        recon = self.vae.decode(z, return_dict=False)[0]
        return crop_to(recon, x.shape[-2:]), posterior

    def _recon(self, pred: Tensor, target: Tensor) -> Tensor:
        if self.hparams.recon_loss == "l1":
            return F.l1_loss(pred.float(), target.float())
        return F.mse_loss(pred.float(), target.float())

    @torch.no_grad()
    def _update_latent_stats(self, latent: Tensor) -> None:
        mean, var = latent.float().mean(), latent.float().var()
        if not bool(self.latent_stats_initialised):
            self.latent_mean.copy_(mean)
            self.latent_var.copy_(var)
            self.latent_stats_initialised.fill_(True)
            return
        m = self.hparams.latent_stats_momentum
        self.latent_mean.lerp_(mean, m)
        self.latent_var.lerp_(var, m)

    # --------------------------------------------------------------------------------------------------- training
    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        """RGB and depth reconstruction + KL on one batch; logs ``train/loss`` and its parts."""
        image, depth = batch["image"], batch["depth_norm"]
        size = image.shape[0]
        x = torch.cat([image, depth.expand(-1, 3, -1, -1)], dim=0)
        recon, posterior = self.reconstruct(x, sample=self.hparams.sample_posterior)
        loss_rgb = self._recon(recon[:size], x[:size])
        loss_depth = self._recon(recon[size:], x[size:])
        # KL summed over the latent, averaged over images, per image value (see the module docstring).
        loss_kl = posterior.kl().float().mean() / x[0].numel()
        hp = self.hparams
        loss = hp.rgb_weight * loss_rgb + hp.depth_weight * loss_depth + hp.kl_weight * loss_kl
        self._update_latent_stats(posterior.mode()[size:])
        parts = {"loss_rgb": loss_rgb, "loss_depth": loss_depth, "loss_kl": loss_kl}
        self.log("train/loss", loss, batch_size=size, prog_bar=True)
        self.log_dict({f"train/{k}": v.detach() for k, v in parts.items()}, batch_size=size)
        self.log("train/latent_std", self.latent_var.sqrt(), batch_size=size)
        return loss

    def parameter_groups(self) -> list[dict[str, Any]]:
        """One group: all autoencoder parameters."""
        return [{"params": list(self.vae.parameters()), "name": "vae"}]

    # ------------------------------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def reconstruct_depth(self, depth_norm: Tensor) -> Tensor:
        """Depth round trip: ``decode(encode(d̃ ⊗ 1_3))``, mean of the 3 channels, clipped to [-1, 1]. [B,1,H,W]."""
        recon, _ = self.reconstruct(depth_norm.expand(-1, 3, -1, -1))
        return recon.mean(dim=1, keepdim=True).clamp(-1.0, 1.0)

    def predict_depth(self, batch: Batch) -> Tensor:
        """The reconstructed normalised depth mapped to [0, 1] (larger = farther); the evaluator aligns it."""
        return (self.reconstruct_depth(batch["depth_norm"]) + 1.0) / 2.0

    def setup(self, stage: str) -> None:
        """Base evaluators plus one reconstruction-MAE meter pair per validation set."""
        super().setup(stage)
        while len(self.val_depth_mae) < len(self._set_names["val"]):
            self.val_depth_mae.append(MeanMetric())
            self.val_rgb_mae.append(MeanMetric())

    def validation_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Shared evaluator on the depth round trip, plus MAE of depth (valid pixels) and RGB reconstruction."""
        super().validation_step(batch, batch_idx, dataloader_idx)
        with torch.no_grad():
            depth = self.reconstruct_depth(batch["depth_norm"])
            valid = batch["valid_mask"]
            err = (depth - batch["depth_norm"]).abs()
            per_image = (err * valid).flatten(1).sum(1) / valid.flatten(1).sum(1).clamp_min(1)
            keep = valid.flatten(1).any(1)
            if bool(keep.any()):
                self.val_depth_mae[dataloader_idx].update(per_image[keep])
            rgb, _ = self.reconstruct(batch["image"])
            self.val_rgb_mae[dataloader_idx].update((rgb - batch["image"]).abs().flatten(1).mean(1))

    def on_validation_epoch_end(self) -> None:
        """Log the evaluator's metrics, the reconstruction MAEs and the current latent scale estimate."""
        super().on_validation_epoch_end()
        for idx, name in enumerate(self._set_names["val"]):
            for key, meter in (("depth_recon_mae", self.val_depth_mae[idx]), ("rgb_recon_mae", self.val_rgb_mae[idx])):
                # Every rank computes (under DDP a collective), updated or not; NaN where no rank had a valid pixel.
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=".*compute.*before.*update.*")
                    value = meter.compute()
                meter.reset()
                if not bool(torch.isfinite(value)):
                    continue
                self.log(f"val/{name}/{key}", value, add_dataloader_idx=False)
                if idx == 0:
                    self.log(f"val/{key}", value, add_dataloader_idx=False)
        self.log("val/scaling_factor", self.scaling_factor())

    # ------------------------------------------------------------------------------------------------ export
    def export_vae(self) -> AutoencoderKL:
        """A copy of the trained VAE with ``scaling_factor`` set (to the estimate when configured as ``None``)."""
        vae = build_autoencoder(
            self.hparams.block_out_channels,
            self.hparams.layers_per_block,
            self.hparams.norm_num_groups,
            self.hparams.latent_channels,
            self.hparams.sample_size,
            self.scaling_factor(),
            self.hparams.mid_block_attention,
        )
        vae.load_state_dict(self.vae.state_dict())
        return vae
