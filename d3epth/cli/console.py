"""A quiet, truthful training console: step-based progress, a summary without an empty FLOPs column, no ads.

Lightning's defaults print things that are noise or wrong for d3epth runs: a "💡 Tip" for cloud services at every
trainer start, a ``_pytree.LeafSpec`` deprecation warning raised inside Lightning's own batch handling, a model
summary whose FLOPs column is all 0 (FLOPs are only counted with an ``example_input_array``), and a progress bar
reading "Epoch 17/-2" because d3epth bounds training by ``max_steps`` with ``max_epochs: -1``. Each is replaced or
filtered by its exact message, never by silencing a whole category.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelSummary, TQDMProgressBar
from lightning.pytorch.utilities.model_summary.model_summary import _format_summary_table

__all__ = ["ParameterSummary", "StepProgressBar", "quiet_lightning"]

log = logging.getLogger("lightning.pytorch.callbacks.model_summary")


class _DropTips(logging.Filter):
    """Drop Lightning's advertising lines ("💡 Tip: ... litlogger / litmodels")."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith("💡 Tip")


def quiet_lightning() -> None:
    """Filter Lightning's tips, its ``_pytree`` LeafSpec deprecation and its sync advice (idempotent).

    The sync advice concerns d3epth's validation metrics, which are already synchronised.
    """
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in logger.filters):
            logger.addFilter(_DropTips())
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated", category=FutureWarning)
    # Under DDP Lightning recommends sync_dist for every epoch-level metric; d3epth's validation metrics are
    # torchmetrics states, already reduced over ranks by compute(), so syncing again would only cost a collective.
    warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\('(val|test)/")
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated", category=DeprecationWarning)


class ParameterSummary(ModelSummary):
    """Lightning's model summary without the FLOPs column and total (always 0 without an example input)."""

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        """Log the table without FLOPs."""
        columns = [(name, values) for name, values in summary_data if name != "FLOPs"]
        table = _format_summary_table(
            total_parameters, trainable_parameters, model_size, total_training_modes, total_flops, *columns
        )
        log.info("\n" + "\n".join(line for line in table.splitlines() if not line.rstrip().endswith("Total Flops")))


class StepProgressBar(TQDMProgressBar):
    """One bar over optimiser steps when training is bounded by ``max_steps`` (d3epth's schedules are step-based).

    Counts ``trainer.global_step`` out of ``max_steps`` across epochs and resumes (a resumed run starts where it
    stopped); without ``max_steps`` it is Lightning's per-epoch bar.
    """

    def _bounded(self, trainer: L.Trainer) -> bool:
        return trainer.max_steps is not None and trainer.max_steps > 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Open the bar at the current step."""
        super().on_train_start(trainer, pl_module)
        if self._bounded(trainer):
            self.train_progress_bar.reset(total=trainer.max_steps)
            self.train_progress_bar.initial = trainer.global_step
            self.train_progress_bar.set_description("Training (steps)")

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        """Keep one bar across epochs when step-bounded."""
        if not self._bounded(trainer):
            super().on_train_epoch_start(trainer, *args)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Advance to the current optimiser step."""
        if not self._bounded(trainer):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            return
        bar = self.train_progress_bar
        if bar is not None and self._should_update(trainer.global_step, bar.total):
            bar.n = trainer.global_step
            bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
            bar.refresh()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Keep the bar open across epochs when step-bounded."""
        if not self._bounded(trainer):
            super().on_train_epoch_end(trainer, pl_module)
