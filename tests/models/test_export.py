"""The exported-student format of d3epth.models.export (safetensors + config.json, optional VAE decoder)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from d3epth.inference import load_predictor, student_model_from_task
from d3epth.models import DepthStudent, DiffusionDepthTeacher
from d3epth.models.depth_model import StudentDepthModel, decode_depth_latent
from d3epth.models.export import is_exported_student, load_student, read_export_config, save_student
from d3epth.tasks import PixelRefinementTask
from d3epth.tasks.stage1 import LatentDistillationTask
from tests.helpers.checkpoints import student
from tests.helpers.tensors import rand_image


def test_exported_student_round_trip(tmp_path: Path, stage2: tuple[PixelRefinementTask, Path]) -> None:
    task = stage2[0]
    model, kwargs = student_model_from_task(task)
    assert model.pixel_decoder == "light" and kwargs == student("depth")
    save_student(tmp_path / "exp", task.student, {**kwargs, "pretrained_weights": "/nowhere.pth"})
    config = read_export_config(tmp_path / "exp")
    assert is_exported_student(tmp_path / "exp")
    assert config["student"] == student("depth")  # the weights path is dropped: the weights are in model.safetensors
    assert config["pixel_decoder"] == "light" and config["heads"] == ["depth"] and config["size_multiple"] == 32
    assert config["input"]["range"] == [-1.0, 1.0] and "affine-invariant" in config["output"]["description"]
    loaded = load_student(tmp_path / "exp")
    assert isinstance(loaded, StudentDepthModel) and not loaded.training
    image = rand_image(2, 33, 50)
    with torch.no_grad():
        torch.testing.assert_close(loaded(image), task(image), rtol=0, atol=0)
    predictor = load_predictor(tmp_path / "exp")
    torch.testing.assert_close(predictor.predict(image), task(image), rtol=0, atol=0)


def test_exported_vae_student_decodes_like_the_teacher(
    tmp_path: Path, stage1: tuple[LatentDistillationTask, Path]
) -> None:
    task = stage1[0]
    model, kwargs = student_model_from_task(task)
    assert model.pixel_decoder == "vae"
    latent = torch.randn(1, 4, 3, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(decode_depth_latent(model.vae, latent), task.teacher.decode_depth(latent))
    save_student(tmp_path / "exp", model.student, kwargs, model.vae)
    assert (tmp_path / "exp" / "vae" / "config.json").is_file()
    image = rand_image(1, 21, 35)
    with torch.no_grad():
        torch.testing.assert_close(load_student(tmp_path / "exp")(image), task(image), rtol=1e-6, atol=1e-6)


def test_student_model_refuses_a_missing_head() -> None:
    depth_student = DepthStudent(**student("depth"))
    vae = DiffusionDepthTeacher.from_config().vae
    with pytest.raises(ValueError, match="'latent' head"):
        StudentDepthModel(depth_student, vae)
