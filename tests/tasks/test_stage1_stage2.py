"""Stage 1 (latent distillation) and stage 2 (pixel refinement) tasks on tiny models and tiny data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from d3epth.data import DepthDataModule, HypersimDataset
from d3epth.models.depth_model import StudentDepthModel
from d3epth.tasks import LatentDistillationTask, PixelRefinementTask
from tests.helpers.checkpoints import STUDENT, TEACHER, quiet_trainer
from tests.helpers.data import write_hypersim


@pytest.fixture(scope="module")
def datamodule_factory(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("data") / "hypersim"
    write_hypersim(root, counts={"train": 4, "val": 2}, size=(32, 48))

    def make() -> DepthDataModule:
        return DepthDataModule(
            train={"hypersim": HypersimDataset(root, split="train")},
            val={"hypersim": HypersimDataset(root, split="val")},
            batch_size=2,
            val_batch_size=2,
            num_workers=0,
        )

    return make


def trainer(tmp_path: Path, steps: int = 2, **kwargs: object):
    return quiet_trainer(tmp_path, max_steps=steps, limit_val_batches=1, **kwargs)


def test_stage1_teacher_frozen_and_out_of_checkpoint(tmp_path: Path, datamodule_factory) -> None:
    task = LatentDistillationTask(student=STUDENT, teacher=TEACHER, lr=1e-3, warmup_steps=1)
    before = {k: v.clone() for k, v in task.teacher.state_dict().items()}
    fit = trainer(tmp_path)
    fit.fit(task, datamodule=datamodule_factory())

    # No teacher parameter requires or received a gradient, none is in the optimiser, none changed.
    assert all(not p.requires_grad and p.grad is None for p in task.teacher.parameters())
    optimised = {id(p) for group in fit.optimizers[0].param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in task.teacher.parameters()}
    assert optimised == {id(p) for p in task.student.parameters()}
    for key, value in task.teacher.state_dict().items():
        assert torch.equal(value, before[key]), key

    path = tmp_path / "stage1.ckpt"
    fit.save_checkpoint(path)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert ckpt["d3epth_task"] == "LatentDistillationTask"
    assert ckpt["state_dict"] and not [k for k in ckpt["state_dict"] if k.startswith("teacher.")]
    assert any(k.startswith("student.latent_head") for k in ckpt["state_dict"])

    # The checkpoint alone rebuilds the task (the teacher from its source) with the trained student.
    restored = LatentDistillationTask.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    for key, value in task.student.state_dict().items():
        assert torch.equal(restored.student.state_dict()[key], value), key


def test_stage1_loss_is_the_masked_latent_mse_to_the_teacher(datamodule_factory) -> None:
    task = LatentDistillationTask(student=STUDENT, teacher=TEACHER).eval()
    dm = datamodule_factory()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    with torch.no_grad():
        student = task.student(batch["image"], heads=("latent",))["latent"]
        rgb = task.teacher.encode_image(batch["image"])  # 32x48: no padding needed
        zeros = torch.zeros_like(rgb)
        target = task.teacher.latent_from_model_output(task.teacher(rgb, zeros, 999), zeros, 999)
        mask = batch["valid_mask"].float()
        cell_valid = -torch.nn.functional.max_pool2d(-mask, 8)  # 1 where all 8x8 pixels are valid
        cell_valid = cell_valid.expand_as(student)
        expected = ((student - target) ** 2 * cell_valid).sum() / cell_valid.sum()
        assert torch.allclose(task.training_step(batch, 0), expected, rtol=1e-5)


def test_stage_forward_is_the_student_depth_model_and_keys_are_unchanged() -> None:
    image = torch.rand(2, 3, 36, 44, generator=torch.Generator().manual_seed(0)) * 2 - 1  # not multiples of 8
    stage1 = LatentDistillationTask(student=STUDENT, teacher=TEACHER).eval()
    stage2_vae = PixelRefinementTask(student={**STUDENT, "heads": ["latent"]}, pixel_decoder="vae", teacher=TEACHER)
    stage2_light = PixelRefinementTask(student={**STUDENT, "heads": ["depth"]}).eval()
    with torch.no_grad():
        for task, vae in (
            (stage1, stage1.teacher.vae),
            (stage2_vae.eval(), stage2_vae.teacher.vae),
            (stage2_light, None),
        ):
            expected = StudentDepthModel(task.student, vae).eval()(image)
            assert task(image).shape == (2, 1, 36, 44)
            torch.testing.assert_close(task(image), expected, atol=0, rtol=0)
    # No wrapper module is registered: checkpoints keep their student.* / teacher.* / loss.* keys.
    for task in (stage1, stage2_vae, stage2_light):
        prefixes = {key.split(".")[0] for key in task.state_dict()}
        assert prefixes <= {"student", "teacher", "loss", "val_metrics", "test_metrics"}, prefixes


def test_stage1_feature_distillation_builds_matching_adapters(datamodule_factory) -> None:
    task = LatentDistillationTask(student=STUDENT, teacher=TEACHER, feature_blocks=["mid_block", "up_blocks.0"])
    info = task.teacher.feature_info(["mid_block", "up_blocks.0"])
    assert task.hparams.student["teacher_feature_channels"] == [
        info["mid_block"]["channels"],
        info["up_blocks.0"]["channels"],
    ]
    dm = datamodule_factory()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    loss = task.training_step(batch, 0)
    loss.backward()
    assert all(p.grad is not None for p in task.student.feature_adapters.parameters())


def test_stage2_starts_from_stage1_weights(tmp_path: Path, datamodule_factory) -> None:
    stage1 = LatentDistillationTask(student={**STUDENT, "heads": ["latent"]}, teacher=TEACHER, lr=1e-2, warmup_steps=1)
    fit = trainer(tmp_path)
    fit.fit(stage1, datamodule=datamodule_factory())
    path = tmp_path / "stage1.ckpt"
    fit.save_checkpoint(path)

    stage2 = PixelRefinementTask(init_from=str(path))
    assert stage2.hparams.student["heads"] == ["latent", "depth"]  # depth head added for the light decoder
    trained = stage1.student.state_dict()
    fresh = PixelRefinementTask(student={**STUDENT, "heads": ["latent", "depth"]}).student.state_dict()
    state = stage2.student.state_dict()
    # New in stage 2: the depth head and the finest decoder level it reads (the latent head reads a coarser one).
    new = {".".join(key.split(".")[:3]) for key in state.keys() - trained.keys()}
    assert {unit for unit in new if not unit.startswith("depth_head.")} == {"decoder.lateral.0", "decoder.smooth.0"}
    assert not trained.keys() - state.keys()
    for key, value in state.items():
        if key in trained:
            assert torch.equal(value, trained[key]), key
    # Only the depth path trains in stage 2: the latent head rides along frozen, out of the optimiser.
    assert not any(p.requires_grad for p in stage2.student.latent_head.parameters())
    differs = [k for k in trained if k in fresh and not torch.equal(trained[k], fresh[k])]
    assert differs, "stage-1 training should have moved some weights away from a fresh initialisation"


def test_stage2_refuses_a_checkpoint_of_the_wrong_stage(tmp_path: Path, tiny_checkpoint) -> None:
    _, path = tiny_checkpoint("teacher", name="teacher.ckpt", teacher=TEACHER, mode="e2e")
    with pytest.raises(ValueError, match=r"init_from: .*teacher\.ckpt was written by TeacherTask, expected"):
        PixelRefinementTask(init_from=str(path))
    with pytest.raises(FileNotFoundError, match="init_from: checkpoint not found"):
        PixelRefinementTask(init_from=str(tmp_path / "missing.ckpt"))


@pytest.mark.parametrize("weighting", ["uncertainty", "gradnorm"])
def test_stage2_weighting_parameters_are_optimised_without_weight_decay(
    tmp_path: Path, datamodule_factory, weighting: str
) -> None:
    task = PixelRefinementTask(
        student={**STUDENT, "heads": ["depth"]},
        loss={"weighting": weighting},
        gradnorm_shared="depth_head" if weighting == "gradnorm" else None,
        weight_decay=0.05,
        weighting_lr=0.1,
        warmup_steps=1,
    )
    weights_before = [p.detach().clone() for p in task.loss.weighting.parameters()]
    fit = trainer(tmp_path)
    fit.fit(task, datamodule=datamodule_factory())
    groups = {g["name"]: g for g in fit.optimizers[0].param_groups}
    weighting_ids = {id(p) for p in task.loss.weighting.parameters()}
    assert weighting_ids and weighting_ids == {id(p) for p in groups["weighting"]["params"]}
    assert groups["weighting"]["weight_decay"] == 0.0 and groups["decoder"]["weight_decay"] == 0.05
    assert any(not torch.equal(a, b) for a, b in zip(weights_before, task.loss.weighting.parameters(), strict=True))


def test_stage2_vae_decoder_backpropagates_through_frozen_teacher(datamodule_factory) -> None:
    task = PixelRefinementTask(student={**STUDENT, "heads": ["latent"]}, pixel_decoder="vae", teacher=TEACHER)
    dm = datamodule_factory()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    task.training_step(batch, 0).backward()
    assert task.student.latent_head is not None
    assert all(p.grad is not None for p in task.student.latent_head.parameters())
    assert all(p.grad is None for p in task.teacher.parameters())
    depth = task(batch["image"])
    assert depth.shape == batch["depth"].shape and depth.abs().max() <= 1.0


def test_light_head_first_fitted_to_the_vae_decoder_output(datamodule_factory) -> None:
    """With fit_light_to_vae_steps, the first steps regress the light head onto the VAE decoding of the latent."""
    from d3epth.losses import ssi_loss

    task = PixelRefinementTask(
        student={**STUDENT, "heads": ["latent", "depth"]}, teacher=TEACHER, fit_light_to_vae_steps=5
    )
    dm = datamodule_factory()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    loss = task.training_step(batch, 0)  # global_step 0 < 5: the VAE-fitting objective
    with torch.no_grad():
        outputs = task.student(batch["image"], heads=("latent", "depth"))
        vae_depth = task.teacher.decode_depth(outputs["latent"])[
            ..., : batch["image"].shape[-2], : batch["image"].shape[-1]
        ]
        expected = ssi_loss(outputs["depth"], vae_depth, torch.ones_like(vae_depth, dtype=torch.bool))
    assert torch.allclose(loss, expected, rtol=1e-5)
    loss.backward()
    assert all(p.grad is None for p in task.student.latent_head.parameters())  # the VAE target is detached
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in task.student.depth_head.parameters())


def test_gradient_clipping_trains_under_bf16_mixed_precision(tmp_path: Path, datamodule_factory) -> None:
    """The paper configs' combination (bf16-mixed + gradient_clip_val): Lightning refuses clipping with a fused Adam."""
    task = PixelRefinementTask(student={**STUDENT, "heads": ["depth"]}, warmup_steps=1, lr=1e-3)
    fit = trainer(tmp_path, precision="bf16-mixed", gradient_clip_val=1e-3)
    before = [p.detach().clone() for p in task.student.parameters()]
    fit.fit(task, datamodule=datamodule_factory())
    assert fit.global_step == 2
    assert not fit.optimizers[0].defaults["fused"]  # the foreach implementation
    assert any(not torch.equal(a, b) for a, b in zip(before, task.student.parameters(), strict=True))
    # Without clipping the fused implementation stays.
    unclipped = trainer(tmp_path / "fused")
    unclipped.fit(PixelRefinementTask(student={**STUDENT, "heads": ["depth"]}, warmup_steps=1), datamodule_factory())
    assert unclipped.optimizers[0].defaults["fused"]


def test_lr_schedule_ends_when_max_epochs_ends_training(tmp_path: Path, datamodule_factory) -> None:
    """max_steps 1000 but one epoch: the decay is sized to the steps that epoch takes, so the LR reaches its end."""
    task = PixelRefinementTask(student={**STUDENT, "heads": ["depth"]}, warmup_steps=1, lr=1e-3, final_lr_ratio=0.01)
    fit = quiet_trainer(tmp_path, max_steps=1000, max_epochs=1, limit_val_batches=0)
    fit.fit(task, datamodule=datamodule_factory())
    steps = fit.global_step
    assert 1 < steps < 1000
    assert fit.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-3 * 0.01 * task.hparams.backbone_lr_scale)
