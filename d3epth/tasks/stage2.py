"""Stage 2 of D³epth: pixel-space refinement of the student with the Hybrid Depth Loss.

The student predicts depth in pixel space and is trained against ground truth with
:class:`~d3epth.losses.HybridDepthLoss` (SSI + edge-aware gradient Huber under a dynamic task weighting). The pixel
decoder is either

* ``"light"`` — the student's own upsampling depth head (the fast model; default), or
* ``"vae"`` — the frozen teacher VAE decoder applied to the student's latent (gradients flow through the decoder
  into the student, as in E2E-FT; slower at inference, since the VAE decoder runs every time).

Stage 2 starts from a stage-1 checkpoint (``init_from``), whose student architecture it reuses. Without
``init_from`` and with the light decoder, no teacher is involved at all: that is the no-teacher baseline
(``configs/sample/baseline.yaml``), the same student and loss trained on ground truth alone.

Targets are the dataset's ``depth_norm`` (per-image 2 %/98 % normalised depth, clipped to [−1, 1]): an affine map of
the depth clamped to its 2 %/98 % quantiles, i.e. E2E-FT's clamped metric target up to a per-image affine change,
which the SSI loss is invariant to — but with per-image loss magnitudes made comparable.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from d3epth.checkpoints import (
    STUDENT,
    load_task_checkpoint,
    plain_data,
    resolve_run_checkpoint,
    student_state_dict,
    tasks_with,
)
from d3epth.losses import HybridDepthLoss, resolve_shared_parameters, ssi_loss
from d3epth.losses.hybrid import LossConfig
from d3epth.models.depth_model import decode_depth_latent, student_depth
from d3epth.models.padding import crop_to
from d3epth.models.student import DepthStudent, StudentConfig
from d3epth.models.teacher.sources import TeacherSpec, load_teacher, resolve_teacher_source
from d3epth.tasks.base import Batch, DepthTask, student_parameter_groups


def _module_of(key: str) -> str:
    """The unit a student weight belongs to: ``decoder.smooth.0`` for a decoder level, else its head/backbone."""
    parts = key.split(".")
    return ".".join(parts[:3]) if parts[0] == "decoder" else parts[0]


class PixelRefinementTask(DepthTask):
    """Stage 2: train a :class:`~d3epth.models.DepthStudent` in pixel space with the Hybrid Depth Loss.

    Args:
        student: ``DepthStudent`` keyword arguments. With ``init_from`` it may be omitted: the stage-1 student's
            arguments are reused, with the heads this stage needs added. Only the pixel decoder's head (``depth`` for
            ``light``, ``latent`` for ``vae``) trains; the others are kept frozen.
        init_from: stage-1 (``LatentDistillationTask``) or stage-2 checkpoint whose student weights initialise this
            one; ``None`` starts from the backbone's own initialisation (the no-teacher baseline).
        pixel_decoder: ``"light"`` (the student's depth head) or ``"vae"`` (frozen teacher VAE decoder on the
            student's latent).
        teacher: teacher source for the ``"vae"`` decoder or for ``fit_light_to_vae_steps`` (see
            :func:`d3epth.models.teacher.sources.load_teacher`): a local diffusers directory, a ``TeacherTask``
            checkpoint, or a dict spec. Kept frozen and out of this task's checkpoints.
        loss: ``HybridDepthLoss`` keyword arguments (``weighting``: ``uncertainty`` | ``dwa`` | ``gradnorm`` |
            ``fixed``, edge options, δ, ...).
        weighting_lr: learning rate of the weighting's own parameters (uncertainty log-variances, GradNorm weights);
            they move too slowly at the network's LR. No weight decay is applied to them.
        gradnorm_shared: GradNorm's shared layer, a parameter or module name in the student (e.g.
            ``"decoder.smooth.0"``); required with ``weighting: gradnorm``.
        fit_light_to_vae_steps: with the light decoder and a teacher, spend the first N optimiser steps fitting the
            light head to the teacher VAE decoder's output on the student's latent (SSI loss), before ground truth.
        backbone_lr_scale: learning-rate factor for the backbone relative to the decoder and heads.
        **kwargs: :class:`~d3epth.tasks.base.DepthTask` arguments (``lr``, ``weight_decay``, ``optimizer``,
            ``warmup_steps``, ``decay_steps``, ``final_lr_ratio``, ``benchmarks``, ``alignment``,
            ``num_logged_images``).
    """

    def __init__(
        self,
        student: StudentConfig | None = None,
        init_from: str | None = None,
        pixel_decoder: Literal["light", "vae"] = "light",
        teacher: str | TeacherSpec | None = None,
        loss: LossConfig | None = None,
        weighting_lr: float = 1e-2,
        gradnorm_shared: str | None = None,
        fit_light_to_vae_steps: int = 0,
        backbone_lr_scale: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if pixel_decoder not in ("light", "vae"):
            raise ValueError(f"pixel_decoder must be 'light' or 'vae', got {pixel_decoder!r}")
        if (pixel_decoder == "vae" or fit_light_to_vae_steps > 0) and teacher is None:
            raise ValueError(
                f"pixel_decoder={pixel_decoder!r} with fit_light_to_vae_steps={fit_light_to_vae_steps} needs a "
                "teacher (its VAE decoder): set model.init_args.teacher"
            )
        checkpoint = None
        if init_from is not None:
            init_from = str(resolve_run_checkpoint(init_from, "model.init_args.init_from"))
            self.hparams["init_from"] = init_from  # a run directory as the checkpoint it named
            checkpoint = load_task_checkpoint(init_from, tasks_with(STUDENT), "model.init_args.init_from")
            if student is None:
                student = dict(checkpoint["hyper_parameters"]["student"])
        if student is None:
            raise ValueError("set model.init_args.student (DepthStudent arguments) or init_from (a stage-1 checkpoint)")
        student = plain_data(student)
        needed = "depth" if pixel_decoder == "light" else "latent"
        heads = list(student.get("heads", ("latent", "depth")))
        if isinstance(heads, str):
            heads = [heads]
        if needed not in heads or (fit_light_to_vae_steps > 0 and "latent" not in heads):
            heads = [h for h in ("latent", "features", "depth") if h in {*heads, needed, "latent"}]
        student = {**student, "heads": heads}
        self.hparams["student"] = student  # the arguments actually used, so the checkpoint rebuilds this student

        self.student = DepthStudent(**student)
        if checkpoint is not None:
            self._load_student(checkpoint, init_from)
        # Only the pixel decoder's head learns; others (a stage-1 latent head kept for the VAE fit, whose target is
        # detached) would get no gradient, so they are frozen: DDP then needs no find_unused_parameters.
        self.student.freeze_unused(("depth",) if pixel_decoder == "light" else ("latent",))
        teacher = resolve_teacher_source(teacher, "model.init_args.teacher")
        self.hparams["teacher"] = teacher
        self.teacher = None if teacher is None else load_teacher(teacher, purpose="model.init_args.teacher").freeze()
        self.loss = HybridDepthLoss(**plain_data(loss or {}))
        self._gradnorm_parameters = None
        if self.loss.weighting.__class__.__name__ == "GradNormWeighting":
            if gradnorm_shared is None:
                raise ValueError("weighting 'gradnorm' needs model.init_args.gradnorm_shared (a student layer name)")
            self._gradnorm_parameters = resolve_shared_parameters(self.student, gradnorm_shared)

    def _load_student(self, checkpoint: dict[str, Any], path: str) -> None:
        """Initialise the student from a checkpoint; heads new to this stage keep their fresh initialisation."""
        state = student_state_dict(checkpoint)  # stage 1's EMA weights when it kept them
        result = self.student.load_state_dict(state, strict=False)
        if result.unexpected_keys:
            raise ValueError(
                f"model.init_args.init_from: {path} has student weights this student lacks "
                f"(e.g. {result.unexpected_keys[:3]}); the student arguments must match the stage-1 student's"
            )
        # A head, or a decoder level (``decoder.smooth.<i>``), the earlier stage did not build starts fresh here; a
        # module the checkpoint holds only in part means another architecture.
        modules = {_module_of(key) for key in state}
        lacking = [key for key in result.missing_keys if _module_of(key) in modules]
        if lacking:
            raise ValueError(f"model.init_args.init_from: {path} lacks student weights {lacking[:3]}")

    # ------------------------------------------------------------------------------------------------- prediction
    def forward(self, image: Tensor) -> Tensor:
        """Depth [B,1,H,W] for images [B,3,H,W] in [−1,1]: affine-invariant (light) or in [−1,1] (vae)."""
        if self.hparams.pixel_decoder == "light":
            return student_depth(self.student, image)
        assert self.teacher is not None
        return student_depth(self.student, image, self.teacher.vae)

    def predict_depth(self, batch: Batch) -> Tensor:
        """Depth for ``batch['image']`` from the configured pixel decoder."""
        return self(batch["image"])

    # -------------------------------------------------------------------------------------------------- training
    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        """Hybrid Depth Loss against ``depth_norm``; or, while fitting the light head, SSI against the VAE output."""
        image = batch["image"]
        if self.global_step < self.hparams.fit_light_to_vae_steps:
            outputs = self.student(image, heads=("latent", "depth"))
            assert self.teacher is not None
            with torch.no_grad():
                # [B,1,8h,8w]: the latent grid covers the image padded to a multiple of 8; crop to the image.
                target = crop_to(decode_depth_latent(self.teacher.vae, outputs["latent"]), image.shape[-2:])
            mask = torch.ones_like(target, dtype=torch.bool)
            loss = ssi_loss(outputs["depth"], target, mask)
            # DDP without find_unused_parameters needs every trainable parameter in every step's graph; the
            # weighting's have no part in this objective, so they enter with weight 0: zero gradients, Adam's moments
            # stay 0 and the parameters do not move.
            loss = loss + 0.0 * sum(p.sum() for p in self.loss.weighting.parameters())
            self.log("train/loss_fit_vae", loss, prog_bar=True, batch_size=image.shape[0])
            return loss

        pred = self(image)
        shared = self._gradnorm_parameters if self.training else None
        loss, parts = self.loss(pred, batch["depth_norm"], batch["valid_mask"], image=image, shared_parameters=shared)
        batch_size = image.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        self.log_dict({f"train/{key}": value for key, value in parts.items()}, batch_size=batch_size)
        return loss

    def on_train_epoch_end(self) -> None:
        """DWA with per-epoch windows closes its window here (a no-op for the other weightings)."""
        close = getattr(self.loss.weighting, "close_window", None)
        if close is not None and getattr(self.loss.weighting, "window", 1) is None:
            close()

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Backbone (``backbone_lr_scale`` × LR), decoder and heads, and the weighting (own LR, no weight decay)."""
        groups = student_parameter_groups(self.student, self.hparams.lr, self.hparams.backbone_lr_scale)
        groups += [
            {"name": "weighting", **group} for group in self.loss.weighting.param_groups(lr=self.hparams.weighting_lr)
        ]
        return groups
