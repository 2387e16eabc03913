"""Stage 2 of D³epth: pixel-space refinement of the student with the Hybrid Depth Loss.

The student predicts depth in pixel space and is trained against ground truth with
:class:`~d3epth.losses.HybridDepthLoss` (SSI + edge-aware gradient Huber under a dynamic task weighting). The pixel
decoder is either

* ``"light"`` — the student's own upsampling depth head (the fast model; default), or
* ``"vae"`` — the frozen teacher VAE decoder applied to the student's latent (gradients flow through the decoder
  into the student, as in E2E-FT; slower at inference, since the VAE decoder runs every time).

Images without ground truth (an unlabeled training set, ``has_depth`` False) train on the teacher's one-step decoded
depth as a pseudo-label (``pseudo_labels``), as Depth Anything V2 trains its students; an extension beyond the paper.

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
from d3epth.data.teacher_cache import teacher_fingerprint
from d3epth.errors import ConfigError
from d3epth.losses import HybridDepthLoss, resolve_shared_parameters, ssi_loss
from d3epth.losses.hybrid import LossConfig
from d3epth.losses.ssi import align_prediction
from d3epth.models.depth_model import student_depth
from d3epth.models.student import DepthStudent, StudentConfig, architecture_arguments
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
        pseudo_labels: which batches also train on the teacher's one-step decoded depth (``teacher_depth``, from the
            datamodule's teacher cache when it holds it, else computed live with ``teacher``) -- an extension beyond
            the paper, after Depth Anything V2's students: ``"unlabeled"`` (batches of training sets without ground
            truth), ``"all"`` (those, plus a pseudo-label term on every labelled batch), ``"none"`` (unlabeled batches
            are skipped: no optimiser update).
        pseudo_label_weight: weight of the pseudo-label terms (the Hybrid Depth Loss's SSI and gradient terms against
            ``teacher_depth``), added to the ground-truth terms before the one weighting of the step; logged apart as
            ``train/pseudo_loss`` (their unweighted sum) and ``train/pseudo_loss_{ssi,grad}``.
        pseudo_label_ignore_fraction: per image, leave out this fraction of pixels with the largest aligned error to
            the pseudo-label (Depth Anything V2 ignores the top 10 % for noisy pseudo-labels); 0 keeps all.
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
        pseudo_labels: Literal["unlabeled", "all", "none"] = "unlabeled",
        pseudo_label_weight: float = 1.0,
        pseudo_label_ignore_fraction: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if pseudo_labels not in ("unlabeled", "all", "none"):
            raise ValueError(f"pseudo_labels must be 'unlabeled', 'all' or 'none', got {pseudo_labels!r}")
        if not 0.0 <= pseudo_label_ignore_fraction < 1.0:
            raise ValueError(f"pseudo_label_ignore_fraction must be in [0, 1), got {pseudo_label_ignore_fraction}")
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
        if init_from is not None:
            student = architecture_arguments(student)  # init_from's weights replace any pretrained backbone file
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

    # ----------------------------------------------------------------------------------------------- pseudo-labels
    def check_unlabeled_sets(self, names: list[str]) -> None:
        """Accept training sets without ground truth when their pseudo-labels can be had (or they are skipped).

        Raises:
            ConfigError: unlabeled sets, ``pseudo_labels`` not ``"none"``, and neither a teacher nor a teacher cache
                holding ``teacher_depth``; or ``"none"`` under DDP (a skipped step on one rank would stall the others).
        """
        pseudo = self.hparams.pseudo_labels
        if pseudo == "none":
            if names and self.trainer.world_size > 1:
                raise ConfigError(
                    f"data.init_args.train.{names[0]} has no depth and pseudo_labels is 'none' (skip its batches), "
                    "which multi-process training cannot do; remove the set from data.init_args.train"
                )
            return
        if pseudo == "unlabeled" and not names:
            return
        cache = getattr(getattr(self.trainer, "datamodule", None), "teacher_cache", None)
        cached = cache is not None and cache.has_depth
        if self.teacher is None and not cached:
            where = f"data.init_args.train.{names[0]}" if names else "model.init_args.pseudo_labels"
            raise ConfigError(
                f"{where}: pseudo_labels={pseudo!r} needs the teacher's depth, but there is no "
                "model.init_args.teacher and no teacher cache with depth (tools/cache_teacher.py --with-depth); set "
                "one, or remove the unlabeled sets (the GT-only baseline trains on ground truth alone)"
            )
        if cached and self.teacher is not None:  # pseudo-labels from the cache must be this teacher's
            cache.check_teacher(teacher_fingerprint(self.teacher), self.hparams.get("teacher"))

    @torch.no_grad()
    def pseudo_label(self, batch: Batch) -> Tensor:
        """The teacher's one-step decoded depth [B,1,H,W] in [−1,1]: from the cache (``teacher_depth``) or live."""
        cached = batch.get("teacher_depth")
        if cached is not None:
            return cached.float()
        assert self.teacher is not None, "check_unlabeled_sets guarantees a teacher or a cache with depth"
        return self.teacher.one_step_depth(batch["image"]).float()

    def pseudo_label_mask(self, pred: Tensor, target: Tensor) -> Tensor:
        """Pixels the pseudo-label term uses: all, minus each image's ``pseudo_label_ignore_fraction`` worst.

        "Worst" is the absolute error of the prediction least-squares aligned to the pseudo-label (the SSI residual),
        detached; bool [B,1,H,W].
        """
        keep = torch.ones_like(target, dtype=torch.bool)
        fraction = float(self.hparams.pseudo_label_ignore_fraction)
        if fraction <= 0.0:
            return keep
        with torch.no_grad():
            residual = (align_prediction(pred.detach().float(), target, keep) - target).abs().flatten(1)
            threshold = torch.quantile(residual, 1.0 - fraction, dim=1, keepdim=True)
            return (residual <= threshold).view_as(target)

    # -------------------------------------------------------------------------------------------------- training
    def training_step(self, batch: Batch, batch_idx: int) -> Tensor | None:
        """Hybrid Depth Loss against ``depth_norm`` and/or the teacher's pseudo-label; SSI while fitting the light head.

        Returns ``None`` (no update) for an unlabeled batch with ``pseudo_labels: none``.
        """
        image = batch["image"]
        labelled = batch.get("has_depth")
        unlabeled = labelled is not None and not bool(labelled.any())
        if unlabeled and self.hparams.pseudo_labels == "none":
            return None
        if self.global_step < self.hparams.fit_light_to_vae_steps:
            outputs = self.student(image, heads=("latent", "depth"))
            assert self.teacher is not None
            with torch.no_grad():
                # [B,1,8h,8w]: the latent grid covers the image padded to a multiple of 8; crop to the image.
                target = self.teacher.decode_depth(outputs["latent"], image.shape[-2:])
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
        batch_size = image.shape[0]
        terms: dict[str, Tensor] = {}
        if not unlabeled:
            terms = self.loss.terms(pred, batch["depth_norm"], batch["valid_mask"], image=image)
            self.log_dict({f"train/loss_{k}": v.detach() for k, v in terms.items()}, batch_size=batch_size)
        if unlabeled or self.hparams.pseudo_labels == "all":
            target = self.pseudo_label(batch)
            pseudo = self.loss.terms(pred, target, self.pseudo_label_mask(pred, target), image=image)
            self.log_dict({f"train/pseudo_loss_{k}": v.detach() for k, v in pseudo.items()}, batch_size=batch_size)
            self.log("train/pseudo_loss", sum(pseudo.values()).detach(), batch_size=batch_size)
            weight = self.hparams.pseudo_label_weight
            terms = {k: terms.get(k, 0.0) + weight * v for k, v in pseudo.items()}
        # One weighting call per step on the summed terms: its regulariser, history or gradient norms see one objective.
        loss, parts = self.loss.weigh(terms, shared_parameters=shared)
        self.log_dict(
            # the terms are logged above, per target; here the weights and GradNorm's auxiliary loss
            {f"train/{k}": v for k, v in parts.items() if k.startswith("weight_") or k == "loss_gradnorm"},
            batch_size=batch_size,
        )
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        return loss

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Backbone (``backbone_lr_scale`` × LR), decoder and heads, and the weighting (own LR, no weight decay)."""
        groups = student_parameter_groups(self.student, self.hparams.lr, self.hparams.backbone_lr_scale)
        groups += [
            {"name": "weighting", **group} for group in self.loss.weighting.param_groups(lr=self.hparams.weighting_lr)
        ]
        return groups
