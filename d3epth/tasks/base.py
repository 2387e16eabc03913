"""The skeleton every d3epth LightningModule shares: optimiser and LR schedule, evaluation, image logging.

A task subclasses :class:`DepthTask` and provides

* ``training_step`` — returns the loss (and logs its parts under ``train/``),
* :meth:`DepthTask.predict_depth` — affine-invariant depth [B,1,H,W] for a batch (larger = farther),
* :meth:`DepthTask.parameter_groups` — the parameters to optimise, as explicit groups (never ``self.parameters()``,
  which would pick up a frozen teacher).

Every training step goes through one guard (:mod:`d3epth.tasks.guard`): a step whose loss or gradient is NaN/Inf
on any rank is skipped on all of them (weights, optimiser state, buffers and LR schedule unchanged), the samples are
named in a warning, ``max_consecutive_skipped_steps`` skips in a row stop training with
:class:`~d3epth.errors.TrainingDivergedError`, and no checkpoint is written with non-finite weights.

Validation and test then run the shared evaluator (:mod:`d3epth.metrics`) on every validation/test set of the
datamodule and log ``val/<set>/<metric>``; the first validation set is also logged as ``val/<metric>``, the key the
best checkpoint monitors (as Marigold, whose first validation set drives model selection).

With ``ema_decay`` set, the task keeps an EMA of ``self.student`` (:mod:`d3epth.tasks.ema`; never the teacher),
updated after every optimiser step taken; validation and test swap the averaged weights in for their duration, and the
checkpoint stores them once under ``ema.*`` beside the live ``student.*`` weights that training resumes from.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn

from d3epth.checkpoints import TASK_KEY, load_task_checkpoint, plain_data, sub_state_dict
from d3epth.errors import ConfigError
from d3epth.losses.weighting import DynamicWeightAverage
from d3epth.metrics import DepthMetrics, benchmark_metrics
from d3epth.models.memory_format import to_channels_last
from d3epth.tasks.ema import EMA_PREFIX, StudentEMA
from d3epth.tasks.guard import GUARD_KEY, StepGuard, check_finite_checkpoint
from d3epth.utils.seeding import derive_seed
from d3epth.utils.visualize import PANEL_TAG_SUFFIX, depth_error_panel

Batch = dict[str, Any]

#: Checkpoint key of the run's seed, from which the global RNG is re-seeded at every training batch.
RUN_SEED_KEY = "d3epth_run_seed"
#: ``derive_seed`` key suffix of the global RNG's per-batch stream (tasks derive their own streams without one).
_GLOBAL_STREAM = 1

__all__ = ["TASK_KEY", "Batch", "DepthTask", "load_task_checkpoint", "student_parameter_groups", "sub_state_dict"]


def iter_exponential(step: int, total_steps: int, warmup_steps: int = 100, final_ratio: float = 0.01) -> float:
    """Marigold's ``IterExponential`` LR factor: linear warm-up, then exponential decay to ``final_ratio``.

    λ(n) = n / warmup for n < warmup; final_ratio for n ≥ total; else
    exp((n − warmup) / (total − warmup) · ln final_ratio). ``n`` counts optimiser steps (not micro-batches).
    """
    if step < warmup_steps:
        return step / warmup_steps
    if step >= total_steps:
        return final_ratio
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    return math.exp(progress * math.log(final_ratio))


def student_parameter_groups(student: nn.Module, lr: float, backbone_lr_scale: float = 1.0) -> list[dict[str, Any]]:
    """Optimiser groups of a :class:`~d3epth.models.DepthStudent`.

    The backbone runs at ``backbone_lr_scale`` × ``lr``; the decoder and heads at ``lr``. Frozen parameters (see
    :meth:`~d3epth.models.DepthStudent.freeze_unused`) stay out.
    """
    return [
        {
            "name": "backbone",
            "params": [p for p in student.backbone.parameters() if p.requires_grad],
            "lr": lr * backbone_lr_scale,
        },
        {"name": "decoder", "params": [p for p in student.decoder_parameters() if p.requires_grad]},
    ]


class DepthTask(L.LightningModule):
    """Shared optimisation, evaluation and logging for depth tasks.

    Subclasses take their own arguments plus ``**kwargs`` passed on to this constructor, which saves all of them as
    hyper-parameters (so ``load_from_checkpoint`` rebuilds the task); a subclass that normalises an argument updates
    ``self.hparams`` itself.

    Frozen sub-modules named in :attr:`frozen_prefixes` (the teacher) are left out of checkpoints: they are rebuilt
    from their own source (a local diffusers directory or a teacher checkpoint) when the task is built, and put back
    into the state dict before loading so that loading stays strict.

    Args:
        lr: peak learning rate (Marigold / E2E-FT: 3e-5 for the UNet; students usually take more).
        weight_decay: decoupled weight decay for groups that allow it (AdamW); 0 gives Adam's behaviour.
        optimizer: ``"adamw"`` (E2E-FT) or ``"adam"`` (Marigold).
        warmup_steps: linear LR warm-up, in optimiser steps.
        decay_steps: optimiser step at which the LR reaches ``final_lr_ratio``; ``None`` = ``trainer.max_steps``.
        final_lr_ratio: LR factor at the end of the decay.
        benchmarks: evaluation preset per validation/test set name (e.g. ``{"nyu": "nyu", "kitti": "kitti_eigen"}``);
            a set without an entry is looked up by its own name, then falls back to its dataset's valid mask only.
        alignment: per-image alignment before scoring: ``"depth"`` (affine-invariant depth models), ``"disparity"``
            or ``"none"`` (metric models).
        num_logged_images: validation images written to TensorBoard per validation set and validation run.
        max_consecutive_skipped_steps: optimiser steps in a row with a non-finite loss or gradient (each skipped)
            after which training stops with :class:`~d3epth.errors.TrainingDivergedError`.
        ema_decay: keep an exponential moving average of the student's weights with this decay per optimiser step
            (e.g. 0.999; :mod:`d3epth.tasks.ema`), used by validation, test, evaluation, prediction and export;
            ``None`` = off. Tasks without a ``student`` (teacher, autoencoder) refuse it.
        channels_last: train with 4-D weights (and so activations) in channels_last memory format
            (:func:`~d3epth.models.memory_format.to_channels_last`): the sample student's CPU step 98 -> 76 ms.
            Results match NCHW training to float rounding, not bitwise.
    """

    #: State-dict prefixes of frozen modules that checkpoints do not store.
    frozen_prefixes: tuple[str, ...] = ("teacher.",)
    #: The attribute whose weights ``ema_decay`` averages.
    ema_target: str = "student"

    def __init__(
        self,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        optimizer: str = "adamw",
        warmup_steps: int = 100,
        decay_steps: int | None = None,
        final_lr_ratio: float = 0.01,
        benchmarks: dict[str, str] | None = None,
        alignment: str = "depth",
        num_logged_images: int = 4,
        max_consecutive_skipped_steps: int = 10,
        ema_decay: float | None = None,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        # Records the arguments of this constructor and of the subclass constructors that called it, as plain data
        # (typed option groups become dicts; a path or numpy number passed from Python a str or float), so that
        # checkpoints load with torch.load(weights_only=True) and hparams.yaml stays readable.
        self.save_hyperparameters()
        for key, value in list(self.hparams.items()):
            self.hparams[key] = plain_data(value)
        if optimizer not in ("adam", "adamw"):
            raise ConfigError(f"model.init_args.optimizer: must be 'adam' or 'adamw', got {optimizer!r}")
        checks = {"lr": (lr, lr > 0, "> 0"), "weight_decay": (weight_decay, weight_decay >= 0, ">= 0")}
        checks["warmup_steps"] = (warmup_steps, warmup_steps >= 0, ">= 0")
        checks["final_lr_ratio"] = (final_lr_ratio, 0 < final_lr_ratio <= 1, "in (0, 1]")
        for key, (value, valid, expected) in checks.items():
            if not valid:  # caught here, before a trainer is built, rather than by torch.optim after set-up
                raise ConfigError(f"model.init_args.{key}: must be {expected}, got {value}")
        self.val_metrics = nn.ModuleList()
        self.test_metrics = nn.ModuleList()
        self._set_names: dict[str, list[str]] = {"val": [], "test": []}
        self._final_val_metrics: dict[str, float] = {}  # the first validation set's last metrics, for hparams
        self._step_guard = StepGuard(max_consecutive_skipped_steps)
        self._run_seed: int | None = None  # at the first training batch, or from a checkpoint
        if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
            raise ConfigError(f"model.init_args.ema_decay: must be in [0, 1) (e.g. 0.999) or null, got {ema_decay}")
        # Built by _ensure_ema once the subclass has made its student (setup, or on_load_checkpoint before loading).
        self.ema: StudentEMA | None = None
        self._ema_swapped = False

    # ------------------------------------------------------------------------------------------------------ EMA
    def _ensure_ema(self) -> None:
        """Create the student's EMA (a copy of its current weights) when ``ema_decay`` is set and it does not exist."""
        decay = self.hparams.get("ema_decay")
        if decay is None or self.ema is not None:
            return
        target = getattr(self, self.ema_target, None)
        if not isinstance(target, nn.Module):
            raise ConfigError(
                f"model.init_args.ema_decay: {type(self).__name__} has no {self.ema_target!r} network to average; "
                "set ema_decay: null"
            )
        self.ema = StudentEMA(target, decay)

    def _swap_ema(self, averaged: bool) -> None:
        """Put the averaged (``True``) or the live (``False``) weights into the student."""
        if self.ema is not None and self._ema_swapped != averaged:
            self.ema.swap(getattr(self, self.ema_target))
            self._ema_swapped = averaged

    def use_ema_weights(self) -> None:
        """For inference: copy the EMA into the student for good (no-op without an EMA)."""
        if self.ema is not None:
            self._swap_ema(False)
            self.ema.copy_to(getattr(self, self.ema_target))

    # ------------------------------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the task class and the step guard's counters, drop the frozen teacher's weights (not ours to store).

        Raises:
            TrainingDivergedError: a weight or optimiser state is NaN/Inf; nothing is written, so ``last.ckpt``
                keeps the last finite state.
        """
        checkpoint[TASK_KEY] = type(self).__name__
        checkpoint[GUARD_KEY] = self._step_guard.state_dict()
        if self._run_seed is not None:
            checkpoint[RUN_SEED_KEY] = self._run_seed
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith(self.frozen_prefixes)]:
            del state[key]
        if self._ema_swapped:  # saved mid-validation (e.g. on an exception): store each set under its own name
            live = f"{self.ema_target}."
            for key in [k for k in state if k.startswith(live)]:
                other = EMA_PREFIX + key[len(live) :]
                state[key], state[other] = state[other], state[key]
        check_finite_checkpoint(checkpoint, self.global_step)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Fill the frozen modules' entries from the modules as built, so strict loading still checks the rest.

        An EMA missing from the checkpoint (ema_decay turned on for a resumed run) starts from the loaded weights; one
        present while ``ema_decay`` is off is dropped.
        """
        self._ensure_ema()
        state = checkpoint["state_dict"]
        has_ema = any(k.startswith("ema.") for k in state)
        if self.ema is None:
            for key in [k for k in state if k.startswith("ema.")]:
                del state[key]
        elif not has_ema:
            live = f"{self.ema_target}."
            for key in [k for k in state if k.startswith(live)]:
                state[EMA_PREFIX + key[len(live) :]] = state[key]
            state["ema.n_averaged"] = torch.ones_like(self.ema.n_averaged)
        for key, value in self.state_dict().items():
            if key.startswith(self.frozen_prefixes):
                state.setdefault(key, value)
        self._step_guard.load_state_dict(checkpoint.get(GUARD_KEY, {}))
        if RUN_SEED_KEY in checkpoint:
            self._run_seed = int(checkpoint[RUN_SEED_KEY])

    def configure_model(self) -> None:
        """Convert the networks to channels_last when ``channels_last`` is set.

        Lightning calls this after the networks are built and before the optimiser and a resumed checkpoint exist, so
        both see the converted tensors (``load_state_dict`` copies into them).
        """
        if self.hparams.get("channels_last"):
            to_channels_last(self)

    def on_fit_start(self) -> None:
        """Silence Lightning's "module(s) in eval mode" warning when exactly the frozen modules are in eval mode.

        The teacher (and the teacher task's VAE) is frozen on purpose; the warning stays for any eval-mode module that
        still has a trainable parameter, which would be a real mistake.
        """
        in_eval = [module for module in self.modules() if not module.training]
        if in_eval and not any(p.requires_grad for module in in_eval for p in module.parameters()):
            warnings.filterwarnings("ignore", message=rf"Found {len(in_eval)} module\(s\) in eval mode at the start")

    # ----------------------------------------------------------------------------------------------- subclass API
    def predict_depth(self, batch: Batch) -> Tensor:
        """Affine-invariant depth [B,1,H,W] at the resolution of ``batch["image"]`` (larger = farther)."""
        raise NotImplementedError

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Parameter groups for the optimiser: ``[{"params": [...], "weight_decay": ..., "name": ...}, ...]``."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        """Adam/AdamW over :meth:`parameter_groups` with Marigold's step-wise warm-up + exponential decay."""
        groups = [g for g in self.parameter_groups() if len(list(g["params"])) > 0]
        for group in groups:
            group.setdefault("weight_decay", self.hparams.weight_decay)
        optimizer_cls = torch.optim.AdamW if self.hparams.optimizer == "adamw" else torch.optim.Adam
        # The fused implementation updates every tensor in one kernel: an AdamW step of the sample UNet (324 tensors)
        # takes 5.7 ms fused vs 27.5 ms with PyTorch's per-tensor default on one CPU thread; on CUDA it is PyTorch's
        # fastest Adam too. It needs floating-point parameters on CPU or CUDA (else: the default implementation).
        # Lightning's mixed-precision plugins refuse gradient clipping with a fused optimiser (it would unscale the
        # gradients itself), so with trainer.gradient_clip_val the multi-tensor (foreach) implementation is used.
        params = [p for group in groups for p in group["params"]]
        fast = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
        clipping = self._trainer is not None and bool(self._trainer.gradient_clip_val)
        optimizer = optimizer_cls(
            groups, lr=self.hparams.lr, fused=fast and not clipping, foreach=(fast and clipping) or None
        )
        total = self.hparams.decay_steps
        if not total:
            if self.trainer.max_steps is None or self.trainer.max_steps <= 0:
                raise ValueError("set trainer.max_steps or model.init_args.decay_steps: the LR schedule needs a length")
            # The optimiser steps training will take: max_steps, or fewer when max_epochs ends training first.
            total = int(self.trainer.estimated_stepping_batches)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: iter_exponential(step, total, self.hparams.warmup_steps, self.hparams.final_lr_ratio),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # ---------------------------------------------------------------------------------------- non-finite steps
    def on_train_batch_start(self, batch: Batch, batch_idx: int) -> None:
        """Re-seed the global RNG for this micro-batch; record it for the step guard (names, finiteness, counts).

        Dropout, drop-path, a VAE posterior sample and anything else drawing from the global RNG then draw what the
        uninterrupted run drew when a run resumes from any checkpoint: Lightning saves no RNG state (and a rank's
        state could not be saved by rank 0 anyway), so the state is made a function of the position instead.
        """
        torch.manual_seed(self.batch_seed(_GLOBAL_STREAM))
        for weighting in self._epoch_weightings:
            weighting.start_epoch(self.current_epoch)
        self._step_guard.start_batch(batch, self)

    @functools.cached_property
    def _epoch_weightings(self) -> list[DynamicWeightAverage]:
        """The loss weightings whose windows follow the epochs (DWA): found once, the modules do not change."""
        return [module for module in self.modules() if isinstance(module, DynamicWeightAverage)]

    @property
    def run_seed(self) -> int:
        """The run's base seed, fixed when first asked for in ``fit`` and saved in every checkpoint.

        ``torch.initial_seed()`` at that moment (what ``seed_everything`` set), kept under :data:`RUN_SEED_KEY`, so a
        resumed run keeps it.
        """
        if self._run_seed is None:
            self._run_seed = torch.initial_seed() % 2**63
        return self._run_seed

    def batch_seed(self, *stream: int, seed: int | None = None) -> int:
        """A seed for this training micro-batch: ``(seed, global rank, batch index across epochs, *stream)``.

        ``seed`` defaults to :attr:`run_seed`. Lightning restores the batch index with the loops' progress, so the
        seed of a position never changes.
        """
        batch_index = self.trainer.fit_loop.epoch_loop.total_batch_idx
        base = self.run_seed if seed is None else seed
        return derive_seed(base, self.trainer.global_rank, batch_index, *stream)

    def on_before_backward(self, loss: Tensor) -> None:
        """Record whether the micro-batch's loss is finite."""
        self._step_guard.record_loss(loss)

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        """Run the closure (training step + backward), then step only when the whole window is finite on all ranks.

        The closure runs first, outside ``optimizer.step``, because a skipped step must not reach the optimiser at
        all: Adam would still move the weights (and count a step) with zeroed gradients. The checked step then goes
        through ``optimizer.step`` with the finished loss, so Lightning's ``on_before_optimizer_step`` hooks and
        gradient clipping run as usual (after the check: clipping would turn an Inf gradient into NaNs).
        """
        if optimizer_closure is None:
            optimizer.step()
            return
        loss = optimizer_closure()
        # Under fp16 with a GradScaler the gradients are still scaled and overflow by design; the scaler skips those.
        scaler = getattr(self.trainer.precision_plugin, "scaler", None) if self._trainer is not None else None
        finite = self._step_guard.conclude(self, optimizer, check_gradients=scaler is None)
        for key in ("skipped_steps", "empty_batches", "skipped_samples"):  # totals over ranks: no sync_dist
            self.log(f"train/{key}", float(getattr(self._step_guard, key)), on_step=True, on_epoch=False)
        if finite:
            optimizer.step(closure=lambda: loss)
            if self.ema is not None:
                self.ema.update(getattr(self, self.ema_target))

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        """Advance the LR schedule, except after a skipped step: the schedule follows the steps taken."""
        if not self._step_guard.last_skipped:
            super().lr_scheduler_step(scheduler, metric)

    # -------------------------------------------------------------------------------------------------- evaluation
    def check_unlabeled_sets(self, names: list[str]) -> None:
        """Called at ``fit`` with the training sets that have no ground truth; this default refuses any.

        A task that can train on images without depth (stage 1, stage 2 with pseudo-labels) overrides it.

        Raises:
            ConfigError: one line naming the set and the remedy.
        """
        if names:
            raise ConfigError(
                f"data.init_args.train.{names[0]}: {type(self).__name__} trains on ground truth, and this set has "
                "none (has_depth: false); remove it from data.init_args.train, or distil it (stage 1, or stage 2 "
                "with a teacher for pseudo-labels)"
            )

    def setup(self, stage: str) -> None:
        """Build the student's EMA (when asked), check the training sets' labels (``fit``), build the evaluators."""
        self._ensure_ema()
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if stage == "fit":
            self.check_unlabeled_sets(list(getattr(datamodule, "unlabeled_set_names", None) or []))
        for split, metrics in (("val", self.val_metrics), ("test", self.test_metrics)):
            names = list(getattr(datamodule, f"{split}_set_names", None) or [])
            if names == self._set_names[split]:
                continue
            self._set_names[split] = names
            metrics.extend(self._build_metrics(name) for name in names[len(metrics) :])

    def _build_metrics(self, set_name: str) -> DepthMetrics:
        return benchmark_metrics(set_name, self.hparams.alignment, (self.hparams.benchmarks or {}).get(set_name))

    def _evaluate(self, split: str, batch: Batch, batch_idx: int, dataloader_idx: int) -> None:
        pred = self.predict_depth(batch)
        metrics = (self.val_metrics if split == "val" else self.test_metrics)[dataloader_idx]
        metrics.update(pred.float(), batch["depth"].float(), batch["valid_mask"])
        if split == "val" and batch_idx == 0:
            self._log_images(f"{split}_images/{self._set_names[split][dataloader_idx]}", batch, pred)

    def validation_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Score the prediction for one validation batch (and log images for the first)."""
        self._evaluate("val", batch, batch_idx, dataloader_idx)

    def test_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Score the prediction for one test batch."""
        self._evaluate("test", batch, batch_idx, dataloader_idx)

    def _log_metrics(self, split: str) -> None:
        metrics_list = self.val_metrics if split == "val" else self.test_metrics
        for idx, (name, metrics) in enumerate(zip(self._set_names[split], metrics_list, strict=True)):
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*compute.*before.*update.*")
                values = metrics.compute()
            metrics.reset()
            if idx == 0 and split == "val" and not self.trainer.sanity_checking:
                self._final_val_metrics = {f"hp/{key}": float(value) for key, value in values.items()}
            for key, value in values.items():
                self.log(f"{split}/{name}/{key}", value, sync_dist=False, add_dataloader_idx=False)
                if idx == 0:
                    self.log(
                        f"{split}/{key}", value, sync_dist=False, add_dataloader_idx=False, prog_bar=key == "abs_rel"
                    )

    def on_validation_epoch_start(self) -> None:
        """Validate the EMA weights when there are any."""
        self._swap_ema(True)

    def on_validation_epoch_end(self) -> None:
        """Log the validation metrics of every validation set (the first also as ``val/<metric>``)."""
        self._log_metrics("val")
        self._swap_ema(False)

    def on_test_epoch_start(self) -> None:
        """Test the EMA weights when there are any."""
        self._swap_ema(True)

    def on_test_epoch_end(self) -> None:
        """Log the test metrics of every test set."""
        self._log_metrics("test")
        self._swap_ema(False)

    def on_fit_end(self) -> None:
        """Record the hyper-parameters with the last validation metrics (TensorBoard's HPARAMS tab: ``hp/<metric>``)."""
        if self.logger is not None and self._final_val_metrics:
            self.logger.log_hyperparams(self.hparams, metrics=self._final_val_metrics)

    # ----------------------------------------------------------------------------------------------------- logging
    @torch.no_grad()
    def _log_images(self, tag: str, batch: Batch, pred: Tensor, extra: dict[str, Tensor] | None = None) -> None:
        """Write RGB | GT | prediction (| extra columns) | error panels to TensorBoard, when the logger is one.

        The tag is ``<tag>/<PANEL_TAG_SUFFIX>`` (the error column's fixed scale), the step that of the scalars.
        """
        if not isinstance(self.logger, TensorBoardLogger) or not self.trainer.is_global_zero:
            return
        if self.trainer.sanity_checking:  # Lightning logs no scalars then either: a panel would have no step of its own
            return
        n = min(self.hparams.num_logged_images, batch["image"].shape[0])
        columns = {"prediction": pred[:n], **{k: v[:n] for k, v in (extra or {}).items()}}
        panel = depth_error_panel(
            batch["image"][:n], batch["depth"][:n], batch["valid_mask"][:n], columns, self.hparams.alignment
        )
        # The step the validation scalars of this run are logged at: Lightning logs them at the fit loop's
        # `_batches_that_stepped` (as its LearningRateMonitor does), which during a mid-training validation is one
        # behind `global_step` and also counts steps the non-finite guard skipped.
        step = self.trainer.fit_loop.epoch_loop._batches_that_stepped
        self.logger.experiment.add_image(f"{tag}/{PANEL_TAG_SUFFIX}", panel, step)
