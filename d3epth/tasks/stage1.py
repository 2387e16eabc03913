"""Stage 1 of D³epth: distil the diffusion teacher's depth latent (and optionally UNet features) into the student.

The frozen teacher turns each image into its single-step depth latent: the RGB latent and a zero depth latent go
through the UNet once at t = 999 (trailing spacing) and x0 is read off the model output — the deterministic one-step
prediction of E2E-FT (Garcia et al., WACV 2025). This target is an assumption: D³epth (ACML 2025) says only
"latent-space distillation". The student's ``latent`` head regresses it with the masked latent MSE of Marigold (a
latent cell counts only when all its 8×8 pixels have valid ground truth). Optionally, the student's ``features`` head
(1×1 adapters) regresses the outputs of named UNet blocks captured by forward hooks in the same teacher pass.

Validation decodes the student's latent with the teacher's VAE decoder and scores it with the shared evaluator, next
to the teacher's own one-step depth in the logged images (RGB | GT | student | error | teacher | error).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from d3epth.checkpoints import plain_data
from d3epth.data.sample import target_mask
from d3epth.data.teacher_cache import teacher_fingerprint
from d3epth.losses import feature_distillation_loss, latent_distillation_loss
from d3epth.models.depth_model import student_depth
from d3epth.models.padding import pad_to_multiple
from d3epth.models.student import DepthStudent, StudentConfig
from d3epth.models.teacher import DiffusionDepthTeacher
from d3epth.models.teacher.sources import TeacherSpec, load_teacher, resolve_teacher_source
from d3epth.tasks.base import Batch, DepthTask, student_parameter_groups


class LatentDistillationTask(DepthTask):
    """Stage 1: the student learns the frozen teacher's one-step depth latent (+ optional UNet features).

    Args:
        student: ``DepthStudent`` keyword arguments. The ``latent`` head is always built; with ``feature_blocks`` the
            ``features`` head is added with channels and strides read from the teacher. Another head (``depth``, kept
            for stage 2) is built but frozen: stage 1 trains only what its loss reads.
        teacher: teacher source (see :func:`d3epth.models.teacher.sources.load_teacher`): a local diffusers / Marigold /
            E2E-FT directory, a ``TeacherTask`` checkpoint, or a dict spec. Frozen, out of the optimiser and out of
            this task's checkpoints (it is rebuilt from this source when a checkpoint is loaded).
        feature_blocks: UNet submodules whose outputs the student also regresses (e.g. ``["mid_block",
            "up_blocks.1"]``); ``None`` or empty = latent only.
        feature_weight: weight of the feature loss relative to the latent loss.
        mask_latent_loss: mask latent cells with invalid ground truth (Marigold); ``False`` uses every cell, since
            the teacher's target is defined everywhere. Images without ground truth (``has_depth`` False, from an
            unlabeled training set) always use every cell.
        backbone_lr_scale: learning-rate factor for the backbone relative to the decoder and heads.
        **kwargs: :class:`~d3epth.tasks.base.DepthTask` arguments.
    """

    def __init__(
        self,
        student: StudentConfig | None,
        teacher: str | TeacherSpec,
        feature_blocks: list[str] | None = None,
        feature_weight: float = 1.0,
        mask_latent_loss: bool = True,
        backbone_lr_scale: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        teacher = resolve_teacher_source(teacher, "model.init_args.teacher")
        self.hparams["teacher"] = teacher  # run directories as the checkpoints they named
        self.teacher: DiffusionDepthTeacher = load_teacher(teacher, purpose="model.init_args.teacher").freeze()
        if student is None:
            raise ValueError("model.init_args.student: LatentDistillationTask needs a student (DepthStudent arguments)")
        student = plain_data(student)
        heads = [student["heads"]] if isinstance(student.get("heads"), str) else list(student.get("heads", ["latent"]))
        student = {**student, "heads": [h for h in ("latent", "features", "depth") if h in {*heads, "latent"}]}
        self.feature_blocks = list(feature_blocks or [])
        if self.feature_blocks:
            info = self.teacher.feature_info(self.feature_blocks)
            student["heads"] = [h for h in ("latent", "features", "depth") if h in {*student["heads"], "features"}]
            student["teacher_feature_channels"] = [info[name]["channels"] for name in self.feature_blocks]
            student["teacher_feature_strides"] = [info[name]["reduction"] for name in self.feature_blocks]
        self.hparams["student"] = student  # the arguments actually used, so the checkpoint rebuilds this student
        self.student = DepthStudent(**student)
        # A depth head asked for here (to carry into stage 2) gets no loss in stage 1: frozen, so DDP needs no
        # find_unused_parameters.
        self.student.freeze_unused(("latent", "features") if self.feature_blocks else ("latent",))

    def check_unlabeled_sets(self, names: list[str]) -> None:
        """Stage 1 distils images without ground truth like any other (every latent cell counts)."""

    def setup(self, stage: str) -> None:
        """Build the evaluators; for ``fit`` with the datamodule's teacher cache, check it was made by this teacher.

        Raises:
            TeacherCacheError: the cache was computed with a teacher of another weight fingerprint.
        """
        super().setup(stage)
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        cache = getattr(datamodule, "teacher_cache", None)
        if stage != "fit" or cache is None or getattr(self, "_teacher_cache_checked", None) is cache:
            return
        cache.check_teacher(teacher_fingerprint(self.teacher), self.hparams.get("teacher"))
        self._teacher_cache_checked = cache
        if self.feature_blocks:
            warnings.warn(
                f"teacher_cache {cache.root}: the task distils UNet features "
                f"({self.feature_blocks}), so it runs the teacher every step anyway and ignores the cached latents",
                stacklevel=2,
            )

    # ------------------------------------------------------------------------------------------------------ teacher
    @torch.no_grad()
    def teacher_targets(self, image: Tensor) -> tuple[Tensor, list[Tensor]]:
        """The teacher's one-step depth latent [B,4,⌈H/8⌉,⌈W/8⌉] and the requested UNet features for images."""
        latent, features = self.teacher.one_step(image, self.feature_blocks)
        return latent.float(), [features[name].float() for name in self.feature_blocks]

    # ------------------------------------------------------------------------------------------------- training
    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        """Masked latent MSE to the teacher's latent (+ weighted feature MSE)."""
        image = batch["image"]
        heads = ("latent", "features") if self.feature_blocks else ("latent",)
        outputs = self.student(image, heads=heads)
        cached = batch.get("teacher_latent")
        if cached is not None and not self.feature_blocks:
            target, teacher_features = cached.float(), []
        else:
            target, teacher_features = self.teacher_targets(image)
        mask = None
        if self.hparams.mask_latent_loss:
            # An image without ground truth (has_depth False) has no invalid pixels to leave out: every latent cell
            # counts, since the teacher's target is defined everywhere.
            valid = target_mask(batch["valid_mask"], batch.get("has_depth"))
            mask = pad_to_multiple(valid, self.teacher.vae_scale_factor, value=False)
        loss_latent = latent_distillation_loss(outputs["latent"].float(), target, mask)
        parts = {"loss_latent": loss_latent.detach()}
        loss = loss_latent
        if self.feature_blocks:
            loss_feat, feat_parts = feature_distillation_loss(
                [f.float() for f in outputs["features"]], teacher_features
            )
            loss = loss + self.hparams.feature_weight * loss_feat
            parts.update({"loss_feat": loss_feat.detach(), **feat_parts})
        batch_size = image.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        self.log_dict({f"train/{key}": value for key, value in parts.items()}, batch_size=batch_size)
        return loss

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Backbone (``backbone_lr_scale`` × LR) and decoder + heads; the teacher is never optimised."""
        return student_parameter_groups(self.student, self.hparams.lr, self.hparams.backbone_lr_scale)

    # ----------------------------------------------------------------------------------------------- evaluation
    def forward(self, image: Tensor) -> Tensor:
        """Depth [B,1,H,W] in [−1,1]: the student's latent decoded by the teacher's VAE decoder."""
        return student_depth(self.student, image, self.teacher.vae).float()

    def predict_depth(self, batch: Batch) -> Tensor:
        """The student's decoded depth (affine-invariant; the evaluator aligns it)."""
        return self(batch["image"])

    def validation_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Score the student; on the first batch also log the teacher's one-step depth beside it."""
        pred = self.predict_depth(batch)
        self.val_metrics[dataloader_idx].update(pred, batch["depth"].float(), batch["valid_mask"])
        if batch_idx == 0:
            teacher_depth = self.teacher.one_step_depth(batch["image"]).float()
            name = self._set_names["val"][dataloader_idx]
            self._log_images(f"val_images/{name}", batch, pred, extra={"teacher": teacher_depth})
