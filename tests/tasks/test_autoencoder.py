"""AutoencoderTask: objective, latent-scale estimate, depth round-trip evaluation, checkpoint -> load_autoencoder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from d3epth.data import DepthDataModule
from d3epth.models.teacher import DiffusionDepthTeacher
from d3epth.models.teacher.sources import load_autoencoder
from d3epth.tasks.autoencoder import AutoencoderTask
from tests.helpers.checkpoints import quiet_trainer, tiny_task


def make_samples(n: int = 4, height: int = 32, width: int = 32, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    samples = []
    for i in range(n):
        depth_norm = torch.rand(1, height, width, generator=g) * 2 - 1
        valid = torch.ones(1, height, width, dtype=torch.bool)
        valid[:, : 2 + i, :4] = False
        samples.append(
            {
                "image": torch.rand(3, height, width, generator=g) * 2 - 1,
                "depth": (depth_norm + 2.0) * valid,
                "valid_mask": valid,
                "depth_norm": depth_norm,
                "dataset": "toy",
                "path": f"toy/{i}",
            }
        )
    return samples


def batch_of(samples: list[dict]) -> dict:
    return next(iter(DataLoader(samples, batch_size=len(samples))))


def test_training_loss_equals_hand_computation() -> None:
    task = tiny_task("autoencoder", sample_posterior=False, kl_weight=0.1, rgb_weight=0.7, depth_weight=1.3)
    batch = batch_of(make_samples(2))
    loss = task.training_step(batch, 0)

    with torch.no_grad():
        x = torch.cat([batch["image"], batch["depth_norm"].repeat(1, 3, 1, 1)])
        posterior = task.vae.encode(x).latent_dist
        recon = task.vae.decode(posterior.mean).sample
        l1_rgb = (recon[:2] - x[:2]).abs().mean()
        l1_depth = (recon[2:] - x[2:]).abs().mean()
        mu, logvar = posterior.mean, posterior.logvar
        kl = (0.5 * (mu**2 + logvar.exp() - 1.0 - logvar)).flatten(1).sum(1).mean() / (3 * 32 * 32)
    assert float(loss) == pytest.approx(float(0.7 * l1_rgb + 1.3 * l1_depth + 0.1 * kl), rel=1e-5)
    # The first step initialises the latent statistics with those of the depth latents (posterior means).
    assert float(task.latent_var) == pytest.approx(float(mu[2:].var()), rel=1e-5)
    assert task.estimated_scaling_factor() == pytest.approx(float(mu[2:].var().rsqrt()), rel=1e-5)


def test_default_architecture_fits_the_teacher() -> None:
    """The default VAE has the layout of DiffusionDepthTeacher.from_config's (factor 8, 4 latent channels)."""
    task = AutoencoderTask()
    teacher = DiffusionDepthTeacher.from_config()
    assert task.factor == teacher.vae_scale_factor == 8
    assert task.vae.config.latent_channels == teacher.latent_channels
    assert {k: v.shape for k, v in task.vae.state_dict().items()} == {
        k: v.shape for k, v in teacher.vae.state_dict().items()
    }


def test_round_trip_pads_odd_sizes_and_averages_channels() -> None:
    task = tiny_task("autoencoder").eval()
    depth = torch.rand(2, 1, 20, 36) * 2 - 1
    out = task.reconstruct_depth(depth)
    assert out.shape == depth.shape
    with torch.no_grad():
        padded = torch.nn.functional.pad(depth.repeat(1, 3, 1, 1), (0, 4, 0, 4), mode="replicate")
        decoded = task.vae.decode(task.vae.encode(padded).latent_dist.mode()).sample[..., :20, :36]
    torch.testing.assert_close(out, decoded.mean(1, keepdim=True).clamp(-1, 1))
    torch.testing.assert_close(task.predict_depth({"depth_norm": depth}), (out + 1) / 2)


def test_validation_logs_depth_reconstruction_error() -> None:
    samples = make_samples(4)
    task = tiny_task("autoencoder")
    datamodule = DepthDataModule(train={"toy": samples}, val={"toy": samples}, val_batch_size=2, num_workers=0)
    trainer = quiet_trainer()
    trainer.validate(task, datamodule=datamodule, verbose=False)
    metrics = trainer.callback_metrics

    batch = batch_of(samples)
    recon = task.reconstruct_depth(batch["depth_norm"])
    valid = batch["valid_mask"]
    per_image = ((recon - batch["depth_norm"]).abs() * valid).flatten(1).sum(1) / valid.flatten(1).sum(1)
    assert float(metrics["val/toy/depth_recon_mae"]) == pytest.approx(float(per_image.mean()), rel=1e-4)
    assert float(metrics["val/depth_recon_mae"]) == pytest.approx(float(per_image.mean()), rel=1e-4)
    assert "val/toy/abs_rel" in metrics and "val/toy/rgb_recon_mae" in metrics


def test_checkpoint_round_trip_through_load_autoencoder(tmp_path: Path) -> None:
    samples = make_samples(4)
    task = tiny_task("autoencoder", decay_steps=3, warmup_steps=1)
    trainer = quiet_trainer(max_steps=3)
    trainer.fit(task, train_dataloaders=DataLoader(samples, batch_size=2))
    path = tmp_path / "ae.ckpt"
    trainer.save_checkpoint(path)

    vae = load_autoencoder(path)
    for name, value in task.vae.state_dict().items():
        torch.testing.assert_close(vae.state_dict()[name], value, msg=name)
    assert vae.config.scaling_factor == pytest.approx(task.estimated_scaling_factor())
    assert task.estimated_scaling_factor() != pytest.approx(1.0)  # the statistics were updated by training

    fixed = tiny_task("autoencoder", scaling_factor=0.25)
    trainer = quiet_trainer(max_steps=1)
    trainer.fit(fixed, train_dataloaders=DataLoader(samples, batch_size=2))
    trainer.save_checkpoint(tmp_path / "fixed.ckpt")
    assert load_autoencoder(tmp_path / "fixed.ckpt").config.scaling_factor == 0.25


def test_bad_arguments_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="recon_loss must be one of"):
        AutoencoderTask(recon_loss="ssim")
    with pytest.raises(ValueError, match="multiples of norm_num_groups=8"):
        AutoencoderTask(block_out_channels=[12, 16, 16, 16])
    with pytest.raises(FileNotFoundError, match="vae_from: checkpoint not found"):
        load_autoencoder(tmp_path / "none.ckpt")
