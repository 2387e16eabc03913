"""TeacherTask (Marigold diffusion objective, E2E-FT / D²epth end-to-end) and load_teacher."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from d3epth.models.noise import annealed_strength, multi_res_noise
from d3epth.models.teacher import DiffusionDepthTeacher
from d3epth.models.teacher.sources import load_autoencoder, load_teacher
from d3epth.tasks.teacher import TeacherTask
from tests.helpers import CONF
from tests.helpers.checkpoints import TEACHER
from tests.helpers.data import write_hypersim, write_kitti, write_nyu, write_vkitti2
from tests.tool_loader import load_tool


def make_batch(batch: int = 2, height: int = 32, width: int = 32, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
    depth_norm = torch.stack([(0.6 * xx + 0.3 * yy * (b + 1)).clamp(-1, 1) for b in range(batch)])[:, None]
    valid = torch.ones(batch, 1, height, width, dtype=torch.bool)
    valid[0, :, 3, 5] = False  # one invalid pixel: its whole 8x8 latent cell must drop out of the latent loss
    valid[1, :, 20:, 20:] = False
    return {
        "image": torch.rand(batch, 3, height, width, generator=g) * 2 - 1,
        "depth": (depth_norm + 2.0) * valid,
        "valid_mask": valid,
        "depth_norm": depth_norm,
        "path": [f"img{b}" for b in range(batch)],
    }


def sd2_alphas_cumprod() -> torch.Tensor:
    """ᾱ_t of SD2's scaled-linear schedule (β from 0.00085 to 0.012), without zero-SNR rescaling, by hand."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


# ------------------------------------------------------------------------------------------------ diffusion mode
def test_v_target_matches_formula() -> None:
    task = TeacherTask(TEACHER, rescale_betas_zero_snr=False)
    alpha_bar = sd2_alphas_cumprod()
    assert float(alpha_bar[999]) == pytest.approx(0.004660, abs=1e-5)  # SD2's scaled_linear betas 0.00085 → 0.012
    g = torch.Generator().manual_seed(1)
    z0, eps = torch.randn(3, 4, 4, 4, generator=g), torch.randn(3, 4, 4, 4, generator=g)
    t = torch.tensor([0, 321, 999])
    a = alpha_bar[t].float().view(-1, 1, 1, 1)
    torch.testing.assert_close(task.diffusion_target(z0, eps, t), a.sqrt() * eps - (1 - a).sqrt() * z0)
    # Zero terminal SNR (Marigold v1-1): ᾱ_999 = 0, so the v-target at t = 999 is -z0.
    zsnr = TeacherTask(TEACHER, rescale_betas_zero_snr=True)
    torch.testing.assert_close(zsnr.diffusion_target(z0, eps, torch.full((3,), 999)), -z0)


def test_diffusion_loss_equals_hand_computation() -> None:
    task = TeacherTask(TEACHER, rescale_betas_zero_snr=False)
    batch = make_batch()
    t = torch.tensor([37, 902])
    noise = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(3))
    loss, parts = task.diffusion_loss(batch, timesteps=t, noise=noise)

    teacher = task.teacher
    with torch.no_grad():
        z0 = teacher.encode_depth(batch["depth_norm"])
        rgb_latent = teacher.encode_image(batch["image"])
        a = sd2_alphas_cumprod()[t].float().view(-1, 1, 1, 1)
        z_t = a.sqrt() * z0 + (1 - a).sqrt() * noise
        v = a.sqrt() * noise - (1 - a).sqrt() * z0
        out = teacher(rgb_latent, z_t, t)
        # A latent cell is valid only if all 64 pixels of its 8x8 block are.
        cells = batch["valid_mask"].view(2, 1, 4, 8, 4, 8).all(dim=5).all(dim=3).expand(-1, 4, -1, -1)
        expected = ((out - v) ** 2)[cells].mean()
    assert int(cells[0, 0].sum()) == 15 and int(cells[1, 0].sum()) == 12
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert float(parts["loss_latent"]) == pytest.approx(float(expected), rel=1e-5)


def test_diffusion_training_step_draws_marigold_noise_and_timesteps() -> None:
    task = TeacherTask(TEACHER)
    batch = make_batch()
    torch.manual_seed(5)
    loss = task.training_step(batch, 0)
    torch.manual_seed(5)
    t = torch.randint(0, 1000, (2,))
    noise = multi_res_noise((2, 4, 4, 4), annealed_strength(t, 1000, 0.9), 9)
    expected, _ = task.diffusion_loss(batch, timesteps=t, noise=noise)
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


def test_vae_is_frozen_and_outside_the_optimiser() -> None:
    task = TeacherTask(TEACHER, decay_steps=10)
    loss, _ = task.diffusion_loss(make_batch())
    loss.backward()
    assert all(p.grad is None for p in task.teacher.vae.parameters())
    assert all(not p.requires_grad for p in task.teacher.vae.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in task.teacher.unet.parameters())
    task.train()
    assert task.teacher.unet.training and not task.teacher.vae.training
    optimizer = task.configure_optimizers()["optimizer"]
    assert type(optimizer) is torch.optim.Adam  # Marigold's optimiser is the default
    assert optimizer.defaults["fused"]  # one kernel for all tensors: ~5x faster per step than per-tensor on a CPU
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimised == {id(p) for p in task.teacher.unet.parameters()}


# ------------------------------------------------------------------------------------------------------ e2e mode
@pytest.mark.parametrize("loss", ["ssi", "hybrid"])
def test_e2e_gradients_reach_unet_through_frozen_decoder(loss: str) -> None:
    task = TeacherTask(TEACHER, mode="e2e", loss=loss)
    total, _ = task.e2e_loss(make_batch())
    total.backward()
    assert all(p.grad is None for p in task.teacher.vae.parameters())
    # conv_out feeds only the latent, which reaches the pixel loss only through the VAE decoder.
    grad = task.teacher.unet.conv_out.weight.grad
    assert grad is not None and float(grad.abs().sum()) > 0


def test_e2e_loss_vanishes_for_affine_target() -> None:
    batch = make_batch()
    for loss in ("ssi", "hybrid"):
        task = TeacherTask(TEACHER, mode="e2e", loss=loss, loss_kwargs={"reduction": "image"})
        with torch.no_grad():
            pred = task.e2e_prediction(batch["image"])
        assert float(pred.std()) > 1e-3  # a non-constant prediction, so the alignment is well posed
        affine = dict(batch, depth_norm=0.5 * pred - 0.2)
        random = dict(batch, depth_norm=torch.rand_like(pred) * 2 - 1)
        with torch.no_grad():
            zero, parts = task.e2e_loss(affine)
            other, _ = task.e2e_loss(random)
        assert float(parts["loss_ssi"]) < 1e-5
        if loss == "hybrid":
            assert float(parts["loss_grad"]) < 1e-4
        else:
            assert float(zero) < 1e-5
            assert float(other) > 1e-2


def test_hybrid_weighting_parameters_are_optimised_without_decay() -> None:
    task = TeacherTask(TEACHER, mode="e2e", loss="hybrid", optimizer="adamw", weight_decay=0.01, decay_steps=10)
    optimizer = task.configure_optimizers()["optimizer"]
    groups = {group["name"]: group for group in optimizer.param_groups}
    weighting = list(task.loss_fn.weighting.parameters())
    assert len(weighting) > 0
    assert {id(p) for p in groups["loss_weighting"]["params"]} == {id(p) for p in weighting}
    assert groups["loss_weighting"]["weight_decay"] == 0.0
    assert groups["unet"]["weight_decay"] == 0.01
    # Their own learning rate (stage 2's 1e-2), not the UNet's: at 3e-5 the log-variances could not move.
    base_lr = {name: group["initial_lr"] for name, group in groups.items()}  # before the warm-up factor
    assert base_lr == {"unet": pytest.approx(task.hparams.lr), "loss_weighting": pytest.approx(1e-2)}


def test_invalid_options_are_rejected() -> None:
    with pytest.raises(ValueError, match="mode must be one of"):
        TeacherTask(TEACHER, mode="lotus")
    with pytest.raises(ValueError, match="takes loss in"):
        TeacherTask(TEACHER, mode="diffusion", loss="ssi")
    with pytest.raises(ValueError, match="multiples of the VAE factor 8"):
        TeacherTask(TEACHER).diffusion_loss(make_batch(height=36))


# ---------------------------------------------------------------------------------------------------- load_teacher
def test_load_teacher_spec_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="neither a diffusers teacher directory nor"):
        load_teacher(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="not found"):
        load_teacher({"path": str(tmp_path / "missing.ckpt")})
    with pytest.raises(ValueError, match="did you mean 'block_out_channels'"):
        load_teacher({"config": {"block_out_channel": [32, 64]}})
    with pytest.raises(ValueError, match="did you mean 'vae_from'"):
        load_teacher({"config": {}, "vae_form": None})
    with pytest.raises(ValueError, match="unknown key 'unet'"):
        load_teacher({"unet": "x"})
    with pytest.raises(ValueError, match="needs 'path'"):
        load_teacher({"vae_from": "x"})
    with pytest.raises(FileNotFoundError, match="no unet/ subfolder"):
        load_teacher({"path": str(tmp_path), "timestep_spacing": "trailing"})
    not_ours = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}}, not_ours)
    with pytest.raises(ValueError, match="not a d3epth task checkpoint"):
        load_teacher(str(not_ours))


def test_load_teacher_from_config_is_reproducible() -> None:
    a, b = load_teacher({"config": {"seed": 3}}), load_teacher({"config": {"seed": 3}}, freeze=True)
    assert isinstance(a, DiffusionDepthTeacher)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(pa, pb, msg=name)
    assert not b.training and not any(p.requires_grad for p in b.parameters())


# ------------------------------------------------------------------------------------- fit: autoencoder -> teacher
def write_sample(root: Path) -> None:
    write_hypersim(root / "hypersim", counts={"train": 4, "val": 2, "test": 2}, size=(32, 32))
    write_vkitti2(root / "vkitti2", size=(16, 32))
    write_nyu(root / "nyuv2", n=2, size=(32, 32))
    write_kitti(root / "kitti", n=2, size=(32, 48))


def fit(config: Path, *overrides: str) -> None:
    assert load_tool("fit").main(["--config", str(config), *overrides]) == 0


def test_fit_autoencoder_then_teacher_then_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_sample(tmp_path / "data")
    monkeypatch.setenv("D3EPTH_SAMPLE_ROOT", str(tmp_path / "data"))
    monkeypatch.setenv("D3EPTH_TEST_LOGS", str(tmp_path / "logs"))
    monkeypatch.chdir(tmp_path)

    fit(CONF / "autoencoder_tiny.yaml")
    ae_ckpt = tmp_path / "logs" / "autoencoder" / "version_0" / "checkpoints" / "last.ckpt"
    assert ae_ckpt.is_file()

    fit(CONF / "teacher_tiny.yaml", f"--model.init_args.teacher.vae_from={ae_ckpt}")
    ckpt = tmp_path / "logs" / "teacher" / "version_0" / "checkpoints" / "last.ckpt"

    # The teacher carries the trained autoencoder as its (frozen) VAE, scaling factor included.
    vae = load_autoencoder(ae_ckpt)
    loaded = load_teacher(str(ckpt))
    for name, value in vae.state_dict().items():
        torch.testing.assert_close(loaded.vae.state_dict()[name], value, msg=name)
    assert loaded.latent_scale == pytest.approx(float(vae.config.scaling_factor))
    assert loaded.latent_scale != pytest.approx(0.18215)  # estimated from the depth latents, not SD's constant

    # Training changed the UNet, and the checkpoint holds the trained weights.
    fresh = TeacherTask({"config": {"block_out_channels": [32, 32], "seed": 0}, "vae_from": str(ae_ckpt)})
    trained = TeacherTask.load_from_checkpoint(ckpt, weights_only=True)
    assert trained.hparams.mode == "diffusion" and trained.teacher.noise_scheduler.config.rescale_betas_zero_snr
    weight = "conv_in.weight"
    assert not torch.allclose(trained.teacher.unet.state_dict()[weight], fresh.teacher.unet.state_dict()[weight])
    torch.testing.assert_close(loaded.unet.state_dict()[weight], trained.teacher.unet.state_dict()[weight])

    # load_teacher(ckpt) predicts exactly what the task predicts (one trailing step from a zero latent).
    batch = make_batch()
    trained.eval()
    torch.testing.assert_close(loaded.eval().predict_depth(batch["image"]).depth, trained.predict_depth(batch))

    # Wrong-stage checkpoints are refused with the stage named.
    with pytest.raises(ValueError, match="written by AutoencoderTask, expected a checkpoint of TeacherTask"):
        load_teacher(str(ae_ckpt))
    with pytest.raises(ValueError, match="written by TeacherTask, expected a checkpoint of AutoencoderTask"):
        load_teacher({"config": {}, "vae_from": str(ckpt)})
