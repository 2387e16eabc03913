"""Non-finite training steps: detected, skipped on every rank alike, named, and fatal after K in a row.

:class:`StepGuard` is the bookkeeping behind :class:`~d3epth.tasks.base.DepthTask`'s Lightning hooks. One optimiser
step is one accumulation window of micro-batches:

1. :meth:`StepGuard.start_batch` (``on_train_batch_start``) records each micro-batch's sample names, which of its
   samples hold a non-finite input, whether it has no valid depth pixel at all, and how many bad files the data
   skipped for it. At the first micro-batch of a window it copies the module's buffers (BatchNorm statistics, the loss
   weighting's history, the autoencoder's latent statistics): a forward pass updates them in place, so a skipped
   step must put them back.
2. :meth:`StepGuard.record_loss` (``on_before_backward``) keeps whether each micro-batch's loss is finite.
3. :meth:`StepGuard.conclude` (``optimizer_step``, after the window's last backward, before gradient clipping and the
   optimiser) turns the losses and the total gradient norm into one flag and sums it over ranks together with the
   counters: one all-reduce and one host sync per optimiser step, and every rank takes the same decision, so DDP ranks
   neither diverge nor wait on each other.

A skipped step leaves the weights, the optimiser state (Adam's moments and step count), the buffers and the LR
schedule as they were; Lightning's ``global_step`` still counts it (it counts optimiser-step attempts). The whole-set
counters are logged as ``train/skipped_steps``, ``train/empty_batches`` and ``train/skipped_samples``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from d3epth.data.sample import target_mask
from d3epth.errors import TrainingDivergedError

__all__ = ["GUARD_KEY", "StepGuard", "check_finite_checkpoint"]

logger = logging.getLogger(__name__)

#: Checkpoint key of the guard's counters.
GUARD_KEY = "d3epth_step_guard"
#: At most this many sample names in a warning or an error.
MAX_NAMED = 8


@dataclass
class _MicroBatch:
    """What one micro-batch of the current window left behind (tensors on the module's device, not yet synced)."""

    names: list[str]
    inputs_finite: Tensor  # bool [B]: every float input of the sample is finite
    empty: Tensor  # bool []: no valid depth pixel in the whole batch
    skipped_samples: Tensor  # float []: bad files the dataset skipped to fill this batch
    loss_finite: Tensor | None = None  # bool []; None while the backward has not run


def _names(batch: dict[str, Any], size: int) -> list[str]:
    """``dataset:path`` of each sample (the sample dict's provenance keys), or the batch position when absent."""
    paths = batch.get("path")
    if not isinstance(paths, (list, tuple)) or len(paths) != size:
        return [f"sample {i} of the batch" for i in range(size)]
    datasets = batch.get("dataset")
    if isinstance(datasets, (list, tuple)) and len(datasets) == size:
        return [f"{d}:{p}" for d, p in zip(datasets, paths, strict=True)]
    return [str(p) for p in paths]


def _shorten(names: list[str]) -> str:
    more = f" and {len(names) - MAX_NAMED} more" if len(names) > MAX_NAMED else ""
    return ", ".join(names[:MAX_NAMED]) + more


class StepGuard:
    """Decides, once per optimiser step and identically on every rank, whether the step is finite.

    Args:
        max_consecutive: skipped steps in a row after which :meth:`conclude` raises.

    Attributes:
        skipped_steps: optimiser steps skipped since training began (over resumes: kept in checkpoints).
        consecutive: skipped steps since the last good one.
        empty_batches: micro-batches (over all ranks) without a valid depth pixel; their masked losses are 0.
        skipped_samples: bad files the datasets skipped (``skip_bad_samples``), over all ranks.
        last_skipped: whether the last optimiser step was skipped (the LR schedule then does not advance).
    """

    def __init__(self, max_consecutive: int) -> None:
        if max_consecutive < 1:
            raise ValueError(f"max_consecutive_skipped_steps must be >= 1, got {max_consecutive}")
        self.max_consecutive = int(max_consecutive)
        self.skipped_steps = 0
        self.consecutive = 0
        self.empty_batches = 0
        self.skipped_samples = 0
        self.last_skipped = False
        self._window: list[_MicroBatch] = []
        self._buffers: list[Tensor] = []

    # ------------------------------------------------------------------------------------------------- recording
    def start_batch(self, batch: dict[str, Any], module: nn.Module) -> None:
        """Record a micro-batch before its forward (and, at a window's start, snapshot the buffers)."""
        if not self._window:
            self._buffers = [buffer.detach().clone() for buffer in module.buffers()]
        image = batch.get("image")
        size = int(image.shape[0]) if isinstance(image, Tensor) and image.ndim > 0 else 1
        floats = [
            value.reshape(size, -1)
            for value in batch.values()
            if isinstance(value, Tensor) and value.is_floating_point() and value.ndim > 0 and value.shape[0] == size
        ]
        device = floats[0].device if floats else torch.device("cpu")
        inputs_finite = torch.ones(size, dtype=torch.bool, device=device)
        for value in floats:
            inputs_finite &= torch.isfinite(value).all(dim=1)
        valid = batch.get("valid_mask")
        labelled = batch.get("has_depth")
        if isinstance(valid, Tensor):  # an unlabeled image is not "empty": its teacher target covers every pixel
            valid = target_mask(valid, labelled if isinstance(labelled, Tensor) else None)
        empty = ~valid.any() if isinstance(valid, Tensor) else torch.zeros((), dtype=torch.bool, device=device)
        skipped = batch.get("skipped_samples")
        skipped = skipped.float().sum() if isinstance(skipped, Tensor) else torch.zeros((), device=device)
        self._window.append(_MicroBatch(_names(batch, size), inputs_finite, empty, skipped))

    def record_loss(self, loss: Tensor) -> None:
        """Keep whether the current micro-batch's loss is finite (no host sync)."""
        if self._window:
            self._window[-1].loss_finite = torch.isfinite(loss.detach()).all()

    # ------------------------------------------------------------------------------------------------- deciding
    def conclude(self, module: nn.Module, optimizer: Any, check_gradients: bool = True) -> bool:
        """Whether to take the optimiser step of the window just computed; on ``False`` the buffers are restored.

        Args:
            module: the task (its buffers are restored on a skip).
            optimizer: the optimiser about to step (its parameters' gradients are checked).
            check_gradients: include the gradients (``False`` under a GradScaler, whose scaled gradients overflow by
                design and whose own step skips those).

        Returns:
            ``True`` when every loss and gradient of the window is finite on every rank.

        Raises:
            TrainingDivergedError: this skip makes ``max_consecutive`` skipped steps in a row.
        """
        window, self._window = self._window, []
        device = next((p.device for group in optimizer.param_groups for p in group["params"]), torch.device("cpu"))
        bad = torch.zeros((), dtype=torch.bool, device=device)
        for micro in window:
            if micro.loss_finite is not None:
                bad |= ~micro.loss_finite.to(device)
        if check_gradients:
            grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            if grads:
                # A NaN or Inf anywhere makes the total norm non-finite: one reduction instead of one per tensor.
                bad |= ~torch.isfinite(torch.nn.utils.get_total_norm(grads).to(device))
        zero = torch.zeros((), device=device)
        stats = torch.stack(
            [
                bad.float(),
                sum((m.empty.to(device).float() for m in window), zero),
                sum((m.skipped_samples.to(device) for m in window), zero),
            ]
        )
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(stats)  # SUM: a step is skipped everywhere as soon as one rank saw a non-finite value
        n_bad, empty, skipped_samples = stats.tolist()
        self.empty_batches += round(empty)
        self.skipped_samples += round(skipped_samples)
        self.last_skipped = n_bad > 0
        if not self.last_skipped:
            self.consecutive = 0
            return True

        if window:  # the snapshot belongs to this window's first micro-batch
            for buffer, saved in zip(module.buffers(), self._buffers, strict=True):
                buffer.copy_(saved)
        self.skipped_steps += 1
        self.consecutive += 1
        culprits = self._culprits(window)
        step = getattr(module, "global_step", "?")
        if self.consecutive >= self.max_consecutive:
            raise TrainingDivergedError(
                f"training diverged: {self.consecutive} optimiser steps in a row had a non-finite loss or gradient "
                f"(the last at step {step}, samples: {culprits}); lower model.init_args.lr, set "
                "trainer.gradient_clip_val, or check those samples (the last checkpoint holds the last finite weights)"
            )
        logger.warning(
            "step %s: non-finite loss or gradient, optimiser step skipped (%d in a row, %d in all); samples: %s",
            step,
            self.consecutive,
            self.skipped_steps,
            culprits,
        )
        return False

    @staticmethod
    def _culprits(window: list[_MicroBatch]) -> str:
        """The samples to blame: those with a non-finite input, else those of micro-batches with a non-finite loss."""
        flagged = [n for m in window for n, ok in zip(m.names, m.inputs_finite.tolist(), strict=True) if not ok]
        if not flagged:
            flagged = [n for m in window if m.loss_finite is not None and not bool(m.loss_finite) for n in m.names]
        if not flagged:
            flagged = [n for m in window for n in m.names]
            if not flagged:
                return "none on this rank (another rank's batch was non-finite)"
            return f"{_shorten(flagged)} (finite losses: the gradient was non-finite, here or on another rank)"
        return _shorten(flagged)

    # --------------------------------------------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, int]:
        """The counters, for the checkpoint."""
        keys = ("skipped_steps", "consecutive", "empty_batches", "skipped_samples")
        return {key: int(getattr(self, key)) for key in keys}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore the counters of :meth:`state_dict` (missing keys keep their value)."""
        for key, value in state.items():
            if key in self.state_dict():
                setattr(self, key, int(value))


def check_finite_checkpoint(checkpoint: dict[str, Any], step: int) -> None:
    """Refuse to write a checkpoint whose weights, buffers or optimiser state hold NaN or Inf.

    Raises:
        TrainingDivergedError: naming the first non-finite entry; the checkpoint files on disk stay as they were.
    """
    named: list[tuple[str, Any]] = [(f"state_dict.{k}", v) for k, v in checkpoint.get("state_dict", {}).items()]
    for i, state in enumerate(checkpoint.get("optimizer_states", [])):
        for param_id, values in state.get("state", {}).items():
            named.extend((f"optimizer_states.{i}.{param_id}.{k}", v) for k, v in values.items())
    for key, value in named:
        if isinstance(value, Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise TrainingDivergedError(
                f"refusing to write a checkpoint at step {step}: {key} holds NaN or Inf; the checkpoints already "
                "written keep the last finite weights (resume from last.ckpt with a lower learning rate)"
            )
