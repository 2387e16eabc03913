"""load_predictor: every model source (task checkpoints, exported students, diffusers directories) and its errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from diffusers import MarigoldDepthPipeline

import d3epth.inference as inference
from d3epth.errors import CheckpointError
from d3epth.inference import load_predictor
from d3epth.models.depth_model import StudentDepthModel
from d3epth.tasks import PixelRefinementTask
from d3epth.tasks.stage1 import LatentDistillationTask
from tests.helpers.checkpoints import save_task, tiny_task
from tests.helpers.tensors import rand_image


# ----------------------------------------------------------------------------------------------------------- sources
def test_stage2_checkpoint_predicts_like_the_task(stage2: tuple[PixelRefinementTask, Path]) -> None:
    task, path = stage2
    predictor = load_predictor(path)
    assert isinstance(predictor, inference.ModuleDepthPredictor) and isinstance(predictor.model, StudentDepthModel)
    assert predictor.model.pixel_decoder == "light"
    assert predictor.kind == "depth" and predictor.name.endswith("last") and predictor.source == str(path)
    assert predictor.size_multiple == task.student.pad_multiple(("depth",)) == 32
    image = rand_image(2, 37, 45)
    with torch.no_grad():
        expected = task.predict_depth({"image": image})
    depth = predictor.predict(image)
    assert depth.shape == (2, 1, 37, 45) and depth.dtype == torch.float32
    torch.testing.assert_close(depth, expected, rtol=0, atol=0)
    assert float(depth.std()) > 0  # a real map, not a constant


def test_stage1_checkpoint_decodes_the_latent_with_the_teacher_vae(
    stage1: tuple[LatentDistillationTask, Path],
) -> None:
    task, path = stage1
    image = rand_image(1, 40, 27)
    with torch.no_grad():
        latent = task.student(image, heads=("latent",))["latent"]
        expected = task.teacher.decode_depth(latent)[..., :40, :27]  # the teacher's own decoding, cropped
    torch.testing.assert_close(load_predictor(path).predict(image), expected, rtol=1e-6, atol=1e-6)


def test_stage2_checkpoint_loads_after_its_stage1_checkpoint_is_gone(
    tmp_path: Path, stage1: tuple[LatentDistillationTask, Path]
) -> None:
    init = shutil.copy(stage1[1], tmp_path / "stage1.ckpt")
    task = PixelRefinementTask(init_from=str(init)).eval()  # stage-1 student + a new light depth head
    path = save_task(task, tmp_path / "stage2.ckpt")
    Path(init).unlink()  # init_from only seeds training; the stage-2 checkpoint holds all the student weights
    image = rand_image(1, 20, 33)
    with torch.no_grad():
        expected = task.predict_depth({"image": image})
    torch.testing.assert_close(load_predictor(path).predict(image), expected, rtol=0, atol=0)


def test_checkpoints_do_not_need_the_pretrained_backbone_file_they_started_from(tmp_path: Path) -> None:
    """``pretrained_weights`` only seeds training: predict, load_task, export and init_from work once it is gone."""
    import timm

    from d3epth.cli import export
    from tests.helpers.checkpoints import STUDENT

    weights = tmp_path / "imagenet.pth"
    torch.save(timm.create_model(STUDENT["backbone"], pretrained=False).state_dict(), weights)
    stage1 = tiny_task("stage1", seed=1, student={**STUDENT, "heads": ["latent"], "pretrained_weights": str(weights)})
    stage1_path = save_task(stage1.eval(), tmp_path / "stage1.ckpt")
    stage2 = PixelRefinementTask(init_from=str(stage1_path)).eval()
    assert "pretrained_weights" not in stage2.hparams["student"]
    stage2_path = save_task(stage2, tmp_path / "stage2.ckpt")
    image = rand_image(1, 20, 33)
    with torch.no_grad():
        expected = stage1.predict_depth({"image": image})
    weights.unlink()
    torch.testing.assert_close(load_predictor(stage1_path).predict(image), expected, rtol=0, atol=0)
    assert isinstance(inference.load_task(stage1_path), LatentDistillationTask)
    assert PixelRefinementTask(init_from=str(stage1_path)).hparams["student"]["backbone"] == STUDENT["backbone"]
    assert load_predictor(stage2_path).predict(image).shape == (1, 1, 20, 33)
    assert export.main([str(stage1_path), "--out", str(tmp_path / "exported")]) == 0


def test_stage2_vae_checkpoint_is_the_student_with_the_teacher_vae(
    tmp_path: Path, stage1: tuple[LatentDistillationTask, Path]
) -> None:
    """The predictor holds only what runs (student + VAE decoder, no UNet) and computes the task's own depth."""
    task = tiny_task("stage2_vae", seed=2, student=None, init_from=str(stage1[1])).eval()
    path = save_task(task, tmp_path / "stage2_vae.ckpt")
    model, kwargs, name = inference.load_student_checkpoint(path)
    assert name == "PixelRefinementTask" and kwargs == dict(task.hparams["student"])
    assert model.pixel_decoder == "vae" and not model.training
    predictor = load_predictor(path)
    assert isinstance(predictor.model, StudentDepthModel) and predictor.model.pixel_decoder == "vae"
    assert predictor.size_multiple == task.student.pad_multiple(("latent",))
    in_predictor = sum(p.numel() for p in predictor.parameters())
    assert in_predictor == sum(p.numel() for p in [*task.student.parameters(), *task.teacher.vae.parameters()])
    image = rand_image(1, 29, 38)
    with torch.no_grad():
        expected = task.predict_depth({"image": image})
    torch.testing.assert_close(predictor.predict(image), expected, rtol=0, atol=0)
    torch.testing.assert_close(model(image), expected, rtol=0, atol=0)


def test_load_task_rebuilds_the_task_the_registry_names(stage1: tuple[LatentDistillationTask, Path]) -> None:
    task = inference.load_task(stage1[1])
    assert type(task) is LatentDistillationTask and not task.training
    model, kwargs = inference.student_model_from_task(task)
    assert model.pixel_decoder == "vae" and kwargs == dict(stage1[0].hparams["student"])
    image = rand_image(1, 19, 30)
    with torch.no_grad():
        torch.testing.assert_close(load_predictor(stage1[1]).predict(image), model(image), rtol=0, atol=0)


def test_student_checkpoint_that_does_not_match_its_student(
    tmp_path: Path, stage2: tuple[PixelRefinementTask, Path]
) -> None:
    checkpoint = torch.load(stage2[1], map_location="cpu", weights_only=True)
    checkpoint["hyper_parameters"]["student"]["decoder_channels"] = 8
    torch.save(checkpoint, tmp_path / "changed.ckpt")
    with pytest.raises(CheckpointError, match=r"changed\.ckpt \(PixelRefinementTask\) does not match the student"):
        load_predictor(tmp_path / "changed.ckpt")
    torch.save({"d3epth_task": "TeacherTask", "state_dict": {}, "hyper_parameters": {}}, tmp_path / "t.ckpt")
    with pytest.raises(CheckpointError, match=r"written by TeacherTask, expected .* LatentDistillationTask or Pixel"):
        inference.load_student_checkpoint(tmp_path / "t.ckpt")


def test_teacher_task_checkpoint_is_a_diffusion_predictor(tmp_path: Path) -> None:
    task = tiny_task("teacher")
    with torch.no_grad():  # "trained": differs from what its config builds, so the weights must come from the file
        task.teacher.unet.conv_out.bias.add_(0.3)
    path = save_task(task, tmp_path / "teacher.ckpt")
    predictor = load_predictor(path)
    assert isinstance(predictor, inference.TeacherDepthPredictor)
    image = rand_image(1, 24, 16)
    expected = task.teacher.freeze().predict_depth(image, num_steps=1).depth
    torch.testing.assert_close(predictor.predict(image), expected, rtol=1e-6, atol=1e-6)


def test_processing_resolution_runs_the_model_at_the_rounded_size(stage2: tuple[PixelRefinementTask, Path]) -> None:
    # 60x100 at 50 with multiple 32: scale 0.5 -> 30 x 50 -> rounded to 32 x 64; back to 60x100 afterwards.
    assert inference.processing_size(60, 100, 50, 32) == (32, 64)
    assert inference.processing_size(375, 1242, 768, 32) == (224, 768)  # 231.9 -> 224
    assert inference.processing_size(10, 10, 4, 32) == (32, 32)  # never below one multiple
    predictor = load_predictor(stage2[1], processing_resolution=50)
    seen: list[tuple[int, ...]] = []
    handle = predictor.model.student.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape)))
    try:
        assert predictor.predict(rand_image(1, 60, 100)).shape == (1, 1, 60, 100)
        assert predictor.predict(rand_image(1, 60, 100), processing_resolution=0).shape == (1, 1, 60, 100)
    finally:
        handle.remove()
    assert seen == [(1, 3, 32, 64), (1, 3, 60, 100)]


def test_diffusers_directory_matches_marigold_pipeline(tiny_marigold_dir: Path) -> None:
    predictor = load_predictor(tiny_marigold_dir)
    assert isinstance(predictor, inference.TeacherDepthPredictor) and predictor.num_steps == 1
    image = rand_image(1, 24, 40)
    depth = predictor.predict(image)
    # Independent reference: diffusers' own pipeline, one step from zero latents (E2E-FT), native resolution.
    pipeline = MarigoldDepthPipeline.from_pretrained(tiny_marigold_dir, local_files_only=True)
    reference = pipeline(
        (image + 1) / 2,
        num_inference_steps=1,
        processing_resolution=0,
        latents=torch.zeros(1, 4, 3, 5),
        output_type="pt",
    ).prediction
    assert depth.shape == (1, 1, 24, 40)
    assert 0.0 <= float(depth.min()) and float(depth.max()) <= 1.0
    torch.testing.assert_close(depth, reference, rtol=1e-4, atol=1e-4)


def test_ensemble_is_seeded(tiny_marigold_dir: Path) -> None:
    image = rand_image(1, 16, 16)
    predictor = load_predictor(tiny_marigold_dir, ensemble_size=3, seed=3)
    a, b = predictor.predict(image), predictor.predict(image)  # reseeded per call: batching order does not matter
    predictor.seed = 4
    c = predictor.predict(image)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)
    # An image's depth does not depend on its batch: alone, first or second of two, beside a copy of itself.
    predictor.seed = 3
    other = rand_image(1, 16, 16, seed=9)
    pair = predictor.predict(torch.cat([other, image]))
    twins = predictor.predict(torch.cat([image, image]))
    for depth in (pair[1:], twins[:1], twins[1:]):
        torch.testing.assert_close(depth, a, rtol=0, atol=1e-6)


def test_moved_teacher_source_is_named_and_can_be_overridden(
    tmp_path: Path,
    tiny_marigold_dir: Path,
) -> None:
    teacher_dir = shutil.copytree(tiny_marigold_dir, tmp_path / "teacher")
    task = tiny_task("stage1", teacher=str(teacher_dir)).eval()
    path = save_task(task, tmp_path / "stage1.ckpt")
    moved = teacher_dir.rename(tmp_path / "moved")
    with pytest.raises(FileNotFoundError, match=r"stage1\.ckpt.*--teacher"):
        load_predictor(path)
    image = rand_image(1, 16, 24)
    with torch.no_grad():
        expected = task.predict_depth({"image": image})
    torch.testing.assert_close(load_predictor(path, teacher=moved).predict(image), expected, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------------------------ errors
def test_missing_source(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"model source not found: .*nothing_here"):
        load_predictor(tmp_path / "nothing_here")


def test_directory_that_is_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.txt").write_text("hi")
    with pytest.raises(ValueError, match=r"photos is not a model directory"):
        load_predictor(tmp_path / "photos")


def test_stable_diffusion_directory_is_not_a_depth_model(tiny_sd2_dir: Path) -> None:
    with pytest.raises(ValueError, match="Stable Diffusion"):
        load_predictor(tiny_sd2_dir)


def test_checkpoint_of_the_wrong_kind(tmp_path: Path, tiny_checkpoint) -> None:
    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {}}, plain)
    with pytest.raises(ValueError, match=r"plain\.ckpt is not a d3epth task checkpoint"):
        load_predictor(plain)
    _, autoencoder = tiny_checkpoint("autoencoder", name="ae.ckpt")
    with pytest.raises(ValueError, match=r"ae\.ckpt is an AutoencoderTask checkpoint"):
        load_predictor(autoencoder)
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"cannot read checkpoint .*corrupt\.ckpt"):
        load_predictor(corrupt)


def test_bad_image_shape(stage2: tuple[PixelRefinementTask, Path]) -> None:
    predictor: inference.DepthPredictor = load_predictor(stage2[1])
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        predictor.predict(torch.zeros(1, 4, 8, 8))


def test_run_directory_loads_its_latest_completed_checkpoint(
    tmp_path: Path, stage2: tuple[PixelRefinementTask, Path]
) -> None:
    from d3epth.checkpoints import COMPLETED_MARKER

    run = tmp_path / "stage2_run"
    for version, completed in (("version_0", True), ("version_1", False)):
        (run / version / "checkpoints").mkdir(parents=True)
        shutil.copy(stage2[1], run / version / "checkpoints" / "last.ckpt")
        if completed:
            (run / version / COMPLETED_MARKER).write_text('{"global_step": 1}')
    image = rand_image(1, 32, 32)
    with pytest.warns(UserWarning, match="skipping the newer unfinished version_1"):
        from_run = load_predictor(run)
    expected = load_predictor(stage2[1]).predict(image)
    torch.testing.assert_close(from_run.predict(image), expected)
    (run / "version_0" / COMPLETED_MARKER).unlink()
    with pytest.raises(CheckpointError, match="holds no completed run"):
        load_predictor(run)
