"""DiffusionDepthTeacher: offline loading, parity with diffusers' MarigoldDepthPipeline, conv_in widening, export."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler, MarigoldDepthPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from d3epth.models import DiffusionDepthTeacher
from d3epth.models.teacher import (
    EMPTY_TEXT_EMBEDDING_FILE,
    compute_empty_text_embedding,
    load_empty_text_embedding,
    save_empty_text_embedding,
)
from tests.helpers.diffusers import SCHEDULER_CONFIG

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(scope="module")
def teacher(tiny_marigold_dir: Path) -> DiffusionDepthTeacher:
    return DiffusionDepthTeacher.from_pretrained(tiny_marigold_dir).freeze()


@pytest.fixture(scope="module")
def pipeline(tiny_marigold_dir: Path) -> MarigoldDepthPipeline:
    pipe = MarigoldDepthPipeline.from_pretrained(tiny_marigold_dir, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def images(batch: int = 2, height: int = 36, width: int = 52, seed: int = 0) -> torch.Tensor:
    """Random RGB in [-1, 1]; 36×52 is not a multiple of 8, so padding and unpadding are exercised."""
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def run_pipeline(pipe: MarigoldDepthPipeline, image: torch.Tensor, **kwargs: object) -> torch.Tensor:
    return pipe((image + 1) / 2, output_type="pt", **kwargs).prediction


# ----------------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------------


def test_loads_marigold_dir_offline(teacher: DiffusionDepthTeacher, tiny_marigold_dir: Path) -> None:
    assert teacher.unet.config.in_channels == 8
    assert teacher.latent_scale == pytest.approx(0.18215)
    assert teacher.vae_scale_factor == 8
    assert teacher.prediction_type == "v_prediction"
    assert isinstance(teacher.scheduler.config, dict) and teacher.scheduler.config.timestep_spacing == "trailing"
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    # The embedding equals the empty prompt run through the checkpoint's own CLIP, tokenised without padding.
    tokenizer = CLIPTokenizer.from_pretrained(tiny_marigold_dir, subfolder="tokenizer", local_files_only=True)
    encoder = CLIPTextModel.from_pretrained(tiny_marigold_dir, subfolder="text_encoder", local_files_only=True)
    ids = tokenizer("", return_tensors="pt").input_ids
    assert ids.tolist() == [[tokenizer.bos_token_id, tokenizer.eos_token_id]]
    with torch.no_grad():
        expected = encoder(ids)[0]
    assert teacher.empty_text_embedding.shape == (1, 2, 32)
    torch.testing.assert_close(teacher.empty_text_embedding, expected)
    assert "empty_text_embedding" not in teacher.state_dict()  # non-persistent buffer


def test_max_length_embedding_starts_with_unpadded_one(tiny_marigold_dir: Path) -> None:
    short = compute_empty_text_embedding(tiny_marigold_dir, padding="do_not_pad")
    long = compute_empty_text_embedding(tiny_marigold_dir, padding="max_length")
    assert short.shape == (1, 2, 32) and long.shape == (1, 77, 32)
    # CLIP's text transformer is causal: padding after BOS/EOS cannot change their outputs.
    torch.testing.assert_close(long[:, :2], short, atol=1e-5, rtol=1e-5)
    teacher = DiffusionDepthTeacher.from_pretrained(tiny_marigold_dir, text_embedding_padding="max_length")
    torch.testing.assert_close(teacher.empty_text_embedding, long)


def test_embedding_file_equals_text_encoder(tiny_marigold_dir: Path, tmp_path: Path) -> None:
    computed = compute_empty_text_embedding(tiny_marigold_dir)
    target = tmp_path / "no_clip"
    for sub in ("unet", "vae", "scheduler"):
        shutil.copytree(tiny_marigold_dir / sub, target / sub)
    save_empty_text_embedding(computed, target / EMPTY_TEXT_EMBEDDING_FILE)
    loaded = DiffusionDepthTeacher.from_pretrained(target)
    torch.testing.assert_close(loaded.empty_text_embedding, computed, atol=0, rtol=0)
    assert loaded.text_source is None
    # An explicit file wins over the directory's text encoder.
    explicit = DiffusionDepthTeacher.from_pretrained(
        tiny_marigold_dir, text_embedding_file=target / EMPTY_TEXT_EMBEDDING_FILE
    )
    torch.testing.assert_close(explicit.empty_text_embedding, computed, atol=0, rtol=0)


def test_missing_directory_and_subfolders(tiny_marigold_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does_not_exist"):
        DiffusionDepthTeacher.from_pretrained(tmp_path / "does_not_exist")
    partial = tmp_path / "partial"
    shutil.copytree(tiny_marigold_dir / "unet", partial / "unet")
    with pytest.raises(FileNotFoundError, match=r"no vae/ subfolder"):
        DiffusionDepthTeacher.from_pretrained(partial)
    for sub in ("vae", "scheduler"):
        shutil.copytree(tiny_marigold_dir / sub, partial / sub)
    with pytest.raises(FileNotFoundError, match=r"text_encoder/ \+ tokenizer/"):
        DiffusionDepthTeacher.from_pretrained(partial)
    with pytest.raises(FileNotFoundError, match=r"missing\.safetensors"):
        load_empty_text_embedding(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="padding"):
        compute_empty_text_embedding(tiny_marigold_dir, padding="longest")


# ----------------------------------------------------------------------------------------------------------------------
# Inference parity with diffusers
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_steps", [1, 2])
def test_zero_latent_inference_matches_pipeline(
    teacher: DiffusionDepthTeacher, pipeline: MarigoldDepthPipeline, num_steps: int
) -> None:
    image = images()
    ours = teacher.predict_depth(image, num_steps=num_steps)
    latents = torch.zeros(2, 4, 5, 7)  # padded 40×56 → 5×7 latents
    ref = run_pipeline(pipeline, image, num_inference_steps=num_steps, processing_resolution=0, latents=latents)
    assert ours.depth.shape == ref.shape == (2, 1, 36, 52) and ours.uncertainty is None
    assert ours.depth.std() > 1e-3  # not a constant map
    # Depth is min-max normalised to [0, 1]. Two fp32 steps through UNet + VAE, summed in a thread-dependent order,
    # differed by 1.04e-5 at one pixel on 2 busy cores (CI), so the bound is 1e-4 of the depth range.
    torch.testing.assert_close(ours.depth, ref, atol=1e-4, rtol=0)


def test_resized_gaussian_inference_matches_pipeline(
    teacher: DiffusionDepthTeacher, pipeline: MarigoldDepthPipeline
) -> None:
    image = images(1, 48, 64, seed=3)
    kwargs = {"processing_resolution": 32, "match_input_resolution": True}
    ours = teacher.predict_depth(
        image, num_steps=2, init_noise="gaussian", generator=torch.Generator().manual_seed(7), **kwargs
    )
    ref = run_pipeline(pipeline, image, num_inference_steps=2, generator=torch.Generator().manual_seed(7), **kwargs)
    assert ours.depth.shape == (1, 1, 48, 64)
    torch.testing.assert_close(ours.depth, ref, atol=1e-5, rtol=0)
    native = teacher.predict_depth(image, processing_resolution=32, match_input_resolution=False)
    assert native.depth.shape == (1, 1, 24, 32)


def test_ensemble_properties(teacher: DiffusionDepthTeacher) -> None:
    # Exact parity with the pipeline is ill-posed here: diffusers' BFGS alignment uses finite differences of a float32
    # cost, so 1e-6 input differences change its result. Check what ensembling must do instead.
    image = images(2, 32, 32, seed=4)
    single = teacher.predict_depth(image, init_noise="gaussian", generator=torch.Generator().manual_seed(1))
    noise = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    same = teacher.predict_depth(image, ensemble_size=3, latents=noise.repeat_interleave(3, 0), output_uncertainty=True)
    # Identical members: the ensemble is the single prediction min-max rescaled to [0, 1], with zero spread.
    lo, hi = single.depth.amin(dim=(1, 2, 3), keepdim=True), single.depth.amax(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(same.depth, (single.depth - lo) / (hi - lo), atol=1e-5, rtol=0)
    assert same.uncertainty.abs().max() < 1e-6

    mixed = teacher.predict_depth(
        image,
        ensemble_size=3,
        init_noise="gaussian",
        generator=torch.Generator().manual_seed(1),
        output_uncertainty=True,
        ensembling_kwargs={"reduction": "mean"},
    )
    assert mixed.depth.shape == mixed.uncertainty.shape == (2, 1, 32, 32)
    assert mixed.uncertainty.min() >= 0 and mixed.uncertainty.max() > 1e-4  # members really differ
    assert mixed.depth.amin(dim=(1, 2, 3)).abs().max() < 1e-6
    assert (mixed.depth.amax(dim=(1, 2, 3)) - 1).abs().max() < 1e-6
    with pytest.raises(ValueError, match="identical members"):
        teacher.predict_depth(image, ensemble_size=3)
    with pytest.raises(ValueError, match="ensemble_size > 1"):
        teacher.predict_depth(image, output_uncertainty=True)


def test_decode_matches_pipeline_decoder(teacher: DiffusionDepthTeacher, pipeline: MarigoldDepthPipeline) -> None:
    latent = torch.randn(2, 4, 4, 6, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours = teacher.decode_depth(latent)
        ref = pipeline.decode_prediction(latent)  # in [0, 1]
    assert ours.shape == (2, 1, 32, 48)
    assert ours.min() >= -1 and ours.max() <= 1
    torch.testing.assert_close((ours + 1) / 2, ref, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------------------------------------------------
# Timesteps and the single-step latent
# ----------------------------------------------------------------------------------------------------------------------


def test_leading_spacing_runs_one_step_at_t1_trailing_at_999(tiny_marigold_dir: Path) -> None:
    with pytest.warns(UserWarning, match="leading"):
        leading = DiffusionDepthTeacher.from_pretrained(tiny_marigold_dir, timestep_spacing="leading")
    trailing = DiffusionDepthTeacher.from_pretrained(tiny_marigold_dir)
    leading.scheduler.set_timesteps(1)
    trailing.scheduler.set_timesteps(1)
    assert leading.scheduler.timesteps.tolist() == [1]
    assert trailing.scheduler.timesteps.tolist() == [999]
    trailing.scheduler.set_timesteps(4)
    assert trailing.scheduler.timesteps.tolist() == [999, 749, 499, 249]

    # one_step runs at t = 999 whatever the inference spacing: same result for both teachers.
    image = images(1, 32, 32, seed=0)
    with torch.no_grad():
        torch.testing.assert_close(leading.one_step(image).latent, trailing.one_step(image).latent)
        # ...while one leading DDIM step differs (it runs the UNet at t = 1).
        rgb = trailing.encode_image(image)
        assert not torch.allclose(leading.predict_latent(rgb, 1), trailing.predict_latent(rgb, 1), atol=1e-3)


def test_one_step_latent_is_x0_from_v(tiny_marigold_dir: Path) -> None:
    zsnr = DiffusionDepthTeacher.from_pretrained(tiny_marigold_dir).freeze()
    plain = DiffusionDepthTeacher.from_pretrained(tiny_marigold_dir, rescale_betas_zero_snr=False).freeze()
    # SD2's scaled_linear betas (0.00085 → 0.012, scheduler_config.json) give ᾱ_999 = 0.004660; rescaled to zero
    # terminal SNR (Lin et al., WACV 2024, §3.1) ᾱ_999 is exactly 0.
    assert plain.noise_scheduler.alphas_cumprod[999].item() == pytest.approx(0.004660, abs=5e-6)
    assert zsnr.noise_scheduler.alphas_cumprod[999].item() == pytest.approx(0.0, abs=1e-12)

    image = images(2, 32, 32, seed=1)
    z_t = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        rgb = zsnr.encode_image(image)
        v = zsnr(rgb, torch.zeros_like(rgb), 999)
        torch.testing.assert_close(zsnr.one_step(image).latent, -v)  # zero SNR: x0 = −v̂
        v = plain(rgb, z_t, 999)
        a = 0.004660
        expected = a**0.5 * z_t - (1 - a) ** 0.5 * v
        torch.testing.assert_close(plain.latent_from_model_output(v, z_t, 999), expected, atol=1e-4, rtol=1e-4)


def test_one_ddim_step_equals_x0_when_final_alpha_is_one(tiny_marigold_dir: Path) -> None:
    teacher = DiffusionDepthTeacher.from_pretrained(tiny_marigold_dir).freeze()
    image = images(2, 32, 32, seed=2)
    config = {**SCHEDULER_CONFIG, "set_alpha_to_one": True}
    aligned = DiffusionDepthTeacher(teacher.unet, teacher.vae, config, teacher.empty_text_embedding)
    with torch.no_grad():
        rgb = teacher.encode_image(image)
        x0 = teacher.one_step(image).latent
        torch.testing.assert_close(aligned.predict_latent(rgb, num_steps=1), x0, atol=1e-6, rtol=1e-6)
        # With SD2's set_alpha_to_one=False the DDIM step ends at ᾱ_0 = 0.99915 instead: a small, real difference.
        assert 1e-6 < (teacher.predict_latent(rgb, num_steps=1) - x0).abs().max() < 0.1


# ----------------------------------------------------------------------------------------------------------------------
# SD2 initialisation: conv_in widening
# ----------------------------------------------------------------------------------------------------------------------


def test_sd2_conv_in_is_widened_by_marigold_rule(tiny_sd2_dir: Path) -> None:
    original = UNet2DConditionModel.from_pretrained(tiny_sd2_dir, subfolder="unet", local_files_only=True)
    assert original.config.in_channels == 4
    teacher = DiffusionDepthTeacher.from_pretrained(tiny_sd2_dir)
    conv, old = teacher.unet.conv_in, original.conv_in
    assert conv.weight.shape == (32, 8, 3, 3) and teacher.unet.config.in_channels == 8
    torch.testing.assert_close(conv.weight, torch.cat([old.weight, old.weight], dim=1) * 0.5, atol=0, rtol=0)
    torch.testing.assert_close(conv.bias, old.bias, atol=0, rtol=0)
    # Property: identical RGB and depth latents give the original conv_in response on the RGB latent alone.
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(conv(torch.cat([z, z], dim=1)), old(z), atol=1e-5, rtol=1e-5)
    # SD2's own leading schedule is replaced by trailing; its non-zero-SNR betas are kept unless asked.
    assert teacher.scheduler.config.timestep_spacing == "trailing"
    assert teacher.noise_scheduler.alphas_cumprod[999] > 0
    v11 = DiffusionDepthTeacher.from_pretrained(tiny_sd2_dir, rescale_betas_zero_snr=True)
    assert v11.noise_scheduler.alphas_cumprod[999] == 0 and v11.scheduler.alphas_cumprod[999] == 0


# ----------------------------------------------------------------------------------------------------------------------
# VAE, gradients, features
# ----------------------------------------------------------------------------------------------------------------------


def test_encode_decode_shapes(teacher: DiffusionDepthTeacher) -> None:
    image = images(2, 64, 48)
    depth = image[:, :1]
    with torch.no_grad():
        rgb_latent = teacher.encode_image(image)
        depth_latent = teacher.encode_depth(depth)
        # Depth is encoded as a 3-channel grey image; the posterior mean is deterministic.
        torch.testing.assert_close(depth_latent, teacher.encode_image(depth.repeat(1, 3, 1, 1)))
        posterior_mean = teacher.vae.encode(image).latent_dist.mean * 0.18215
        torch.testing.assert_close(rgb_latent, posterior_mean)
        decoded = teacher.decode_depth(depth_latent)
    assert rgb_latent.shape == depth_latent.shape == (2, 4, 8, 6)
    assert decoded.shape == (2, 1, 64, 48)
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        teacher.encode_depth(image)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        teacher.encode_image(depth)


def test_gradients_flow_through_decoder_and_one_step(tiny_marigold_dir: Path) -> None:
    teacher = DiffusionDepthTeacher.from_pretrained(tiny_marigold_dir)
    teacher.vae.requires_grad_(False)  # E2E-FT: frozen decoder, trainable UNet
    latent = (torch.randn(1, 4, 4, 4) * 0.1).requires_grad_(True)
    teacher.decode_depth(latent).sum().backward()
    assert latent.grad is not None and latent.grad.abs().sum() > 0 and torch.isfinite(latent.grad).all()

    depth = teacher.decode_depth(teacher.one_step(images(1, 32, 32)).latent)
    depth.mean().backward()
    grads = [p.grad for p in teacher.unet.parameters() if p.grad is not None]
    assert grads and sum(g.abs().sum() for g in grads) > 0
    assert all(p.grad is None for p in teacher.vae.parameters())


def test_one_step_captures_named_unet_blocks(teacher: DiffusionDepthTeacher) -> None:
    image = images(2, 64, 64, seed=6)
    with torch.no_grad():
        latent, features = teacher.one_step(image, features=("mid_block", "up_blocks.1", "down_blocks.0"))
        plain = teacher.one_step(image)
    torch.testing.assert_close(latent, plain.latent)
    assert plain.features == {}
    # Channels from the UNet config (32, 64): mid = 64 at latent/2, up_blocks.1 = 32 at latent, down_blocks.0 = 32
    # after its down-sampler (latent/2).
    assert features["mid_block"].shape == (2, 64, 4, 4)
    assert features["up_blocks.1"].shape == (2, 32, 8, 8)
    assert features["down_blocks.0"].shape == (2, 32, 4, 4)
    info = teacher.feature_info(["mid_block", "up_blocks.1"])
    assert info == {"mid_block": {"channels": 64, "reduction": 16}, "up_blocks.1": {"channels": 32, "reduction": 8}}
    assert all(not m._forward_hooks for m in teacher.unet.modules())  # hooks removed afterwards
    with pytest.raises(ValueError, match="no submodule 'middle_block'"):
        teacher.one_step(image, features=["middle_block"])


# ----------------------------------------------------------------------------------------------------------------------
# Tiny random teachers and export
# ----------------------------------------------------------------------------------------------------------------------


def test_from_config_is_seeded_and_validates() -> None:
    a, b = DiffusionDepthTeacher.from_config(seed=3), DiffusionDepthTeacher.from_config(seed=3)
    c = DiffusionDepthTeacher.from_config(seed=4)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    assert torch.equal(a.empty_text_embedding, b.empty_text_embedding)
    assert not torch.equal(a.empty_text_embedding, c.empty_text_embedding)
    assert not torch.equal(a.unet.conv_in.weight, c.unet.conv_in.weight)
    assert a.vae_scale_factor == 8 and a.noise_scheduler.config.prediction_type == "v_prediction"
    assert isinstance(a.noise_scheduler, DDPMScheduler)
    with pytest.raises(ValueError, match="multiples of its norm_num_groups"):
        DiffusionDepthTeacher.from_config(block_out_channels=(24, 48))
    with pytest.raises(ValueError, match="in_channels must be 2"):
        DiffusionDepthTeacher(
            UNet2DConditionModel.from_config({**a.unet.config, "in_channels": 4}),
            a.vae,
            SCHEDULER_CONFIG,
            a.empty_text_embedding,
        )


def _check_export(teacher: DiffusionDepthTeacher, directory: Path) -> None:
    teacher.save_pretrained(directory, default_processing_resolution=32)
    index = json.loads((directory / "model_index.json").read_text())
    assert index["prediction_type"] == "depth" and index["default_denoising_steps"] == 1
    assert index["default_processing_resolution"] == 32 and index["scheduler"] == ["diffusers", "DDIMScheduler"]
    assert json.loads((directory / "scheduler" / "scheduler_config.json").read_text())["timestep_spacing"] == "trailing"

    pipe = MarigoldDepthPipeline.from_pretrained(directory, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    image = images(1, 40, 20, seed=8)  # processed at 32×16
    ref = run_pipeline(pipe, image, latents=torch.zeros(1, 4, 4, 2))  # model defaults: 1 step at 32 px
    torch.testing.assert_close(pipe.empty_text_embedding, teacher.empty_text_embedding, atol=1e-5, rtol=1e-5)
    ours = teacher.predict_depth(image, processing_resolution=32).depth
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)

    reloaded = DiffusionDepthTeacher.from_pretrained(directory).freeze()
    torch.testing.assert_close(reloaded.empty_text_embedding, teacher.empty_text_embedding, atol=0, rtol=0)
    torch.testing.assert_close(reloaded.predict_depth(image, processing_resolution=32).depth, ours, atol=1e-6, rtol=0)


def test_export_with_original_text_encoder(teacher: DiffusionDepthTeacher, tmp_path: Path) -> None:
    _check_export(teacher, tmp_path / "export")
    assert (tmp_path / "export" / "text_encoder" / "config.json").is_file()


def test_export_without_text_encoder_uses_embedding_carrier(tmp_path: Path) -> None:
    teacher = DiffusionDepthTeacher.from_config(seed=1).freeze()
    assert teacher.text_source is None
    _check_export(teacher, tmp_path / "export")
    # The stand-in CLIP reproduces the embedding only for BOS/EOS; it has no transformer layers.
    encoder = CLIPTextModel.from_pretrained(tmp_path / "export", subfolder="text_encoder", local_files_only=True)
    assert encoder.config.num_hidden_layers == 0


def test_export_replaces_text_encoder_that_does_not_match(tiny_marigold_dir: Path, tmp_path: Path) -> None:
    other = torch.randn(1, 2, 32, generator=torch.Generator().manual_seed(9))
    save_empty_text_embedding(other, tmp_path / "other.safetensors")
    teacher = DiffusionDepthTeacher.from_pretrained(
        tiny_marigold_dir, text_embedding_file=tmp_path / "other.safetensors"
    )
    assert teacher.text_source is not None  # the directory's CLIP exists but encodes something else
    with pytest.warns(UserWarning, match="does not reproduce"):
        _check_export(teacher.freeze(), tmp_path / "export")


def test_replace_changes_one_setting_and_shares_modules(teacher: DiffusionDepthTeacher) -> None:
    with pytest.warns(UserWarning, match="leading"):
        leading = teacher.replace(timestep_spacing="leading")
    assert leading.unet is teacher.unet and leading.vae is teacher.vae and leading.text_source == teacher.text_source
    assert leading.scheduler.config.timestep_spacing == "leading"
    assert teacher.scheduler.config.timestep_spacing == "trailing"  # the original is left as it is
    torch.testing.assert_close(leading.empty_text_embedding, teacher.empty_text_embedding, atol=0, rtol=0)
    other = DiffusionDepthTeacher.from_config(seed=2).vae
    swapped = teacher.replace(vae=other)
    assert swapped.vae is other and swapped.unet is teacher.unet
    new, old = swapped.noise_scheduler.config, teacher.noise_scheduler.config
    assert {k: v for k, v in new.items() if not k.startswith("_")} == {
        k: v for k, v in old.items() if not k.startswith("_")
    }


def test_freeze_is_sticky(tiny_marigold_dir: Path) -> None:
    teacher = DiffusionDepthTeacher.from_pretrained(tiny_marigold_dir)
    assert teacher.training and all(p.requires_grad for p in teacher.parameters())
    teacher.freeze()
    teacher.train()  # what a LightningModule does to its children at the start of fit
    assert not teacher.training and not teacher.unet.training and not teacher.vae.training
    assert not any(p.requires_grad for p in teacher.parameters())


def test_predict_latent_argument_errors(teacher: DiffusionDepthTeacher) -> None:
    rgb = torch.zeros(1, 4, 4, 4)
    with pytest.raises(ValueError, match="either latents or generator"):
        teacher.predict_latent(rgb, latents=torch.zeros_like(rgb), generator=torch.Generator())
    with pytest.raises(ValueError, match=r"latents has shape \(1, 4, 2, 2\)"):
        teacher.predict_latent(rgb, latents=torch.zeros(1, 4, 2, 2))
    with pytest.raises(ValueError, match="init_noise"):
        teacher.predict_latent(rgb, init_noise="pyramid")
    with pytest.raises(ValueError, match="num_steps"):
        teacher.predict_latent(rgb, num_steps=0)


# ----------------------------------------------------------------------------------------------------------------------
# Full size
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sd2_sized_teacher_one_step_on_cpu() -> None:
    start = time.perf_counter()
    teacher = DiffusionDepthTeacher.from_sd2_config().freeze()
    built = time.perf_counter()
    n_unet = sum(p.numel() for p in teacher.unet.parameters())
    assert 850e6 < n_unet < 880e6  # SD2 UNet ≈ 866 M parameters (+1440 for the widened conv_in)
    assert teacher.unet.config.cross_attention_dim == 1024 and teacher.empty_text_embedding.shape == (1, 2, 1024)
    image = images(1, 128, 128)
    depth = teacher.predict_depth(image).depth
    done = time.perf_counter()
    assert depth.shape == (1, 1, 128, 128) and torch.isfinite(depth).all()
    print(f"SD2-sized teacher: build {built - start:.1f} s, one step at 128x128 {done - built:.1f} s on CPU")


def test_one_step_pads_bottom_right_by_replication(teacher: DiffusionDepthTeacher) -> None:
    image = images(2, 21, 30)  # neither side a multiple of 8
    f = teacher.vae_scale_factor
    # Replicate padding written as index clamping: row/column k of the padded image is row/column min(k, last).
    rows = torch.arange(-(-21 // f) * f).clamp(max=20)
    cols = torch.arange(-(-30 // f) * f).clamp(max=29)
    padded = image[:, :, rows][..., cols]
    with torch.no_grad():
        latent = teacher.one_step(image).latent
        expected = teacher.one_step(padded).latent
        rgb = teacher.encode_image(padded)
        x0 = teacher.latent_from_model_output(teacher(rgb, torch.zeros_like(rgb), 999), torch.zeros_like(rgb), 999)
    assert latent.shape == (2, teacher.latent_channels, 3, 4)
    torch.testing.assert_close(latent, expected, atol=0, rtol=0)
    torch.testing.assert_close(latent, x0)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        teacher.one_step(image[:, :1])
