"""An exponential moving average (EMA) of the student's weights, and nothing else (never the frozen teacher).

Marigold v1-1 and most diffusion/distillation recipes evaluate an EMA of the trained network rather than its last
weights. Lightning 2.6's ``WeightAveraging`` / ``EMAWeightAveraging`` callback wraps the *whole* LightningModule in an
``AveragedModel`` (``lightning/pytorch/callbacks/weight_averaging.py``, ``setup``): here that would deep-copy the
frozen teacher, average it every step and store it into every checkpoint, and on ``on_train_end`` it overwrites the
live weights with the average. So the task keeps its own :class:`StudentEMA`, an
:class:`torch.optim.swa_utils.AveragedModel` of ``task.student`` alone, registered as the sub-module ``ema``.

Update rule (after every optimiser step that was taken; a step skipped by the non-finite guard is not one)::

    w_ema(0) = w(0)                                      weights when the EMA is created (before the first step)
    w_ema(n) = decay · w_ema(n − 1) + (1 − decay) · w(n) after optimiser step n

so after N steps ``w_ema(N) = decay^N · w(0) + (1 − decay) · Σ_{k=1..N} decay^(N−k) · w(k)``. Floating-point
buffers (BatchNorm running statistics) are averaged the same way; integer buffers (``num_batches_tracked``) follow the
live model.

Checkpoint layout: the live weights stay under ``student.*`` (what training resumes from, bit for bit) and the EMA is
stored once, under ``ema.module.*`` plus its step count ``ema.n_averaged``. Everything that *uses* a trained student —
validation during training, the final ``hp/`` metrics, ``trainer.test``, ``tools/evaluate.py``, ``tools/predict.py``
and ``tools/export.py`` — uses the EMA weights when a checkpoint has them
(:func:`d3epth.checkpoints.student_state_dict`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from d3epth.checkpoints import EMA_PREFIX

__all__ = ["EMA_PREFIX", "StudentEMA", "ema_update"]


def ema_update(decay: float) -> Callable[[list[Tensor], list[Tensor], Tensor], None]:
    """The ``multi_avg_fn`` of :class:`AveragedModel` for an EMA: lerp float tensors, copy the others.

    ``torch.optim.swa_utils.get_ema_multi_avg_fn`` would blend integer buffers as ``int(decay · a + (1 − decay) · b)``,
    which truncates a step counter; here they are copied from the live model instead.
    """
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"EMA decay must be in [0, 1), got {decay}")

    @torch.no_grad()
    def update(averaged: list[Tensor], current: list[Tensor], _: Tensor) -> None:
        if torch.is_floating_point(averaged[0]) or torch.is_complex(averaged[0]):
            torch._foreach_lerp_(averaged, current, 1.0 - decay)  # a + (1 − decay)(b − a) = decay·a + (1 − decay)·b
        else:
            for a, b in zip(averaged, current, strict=True):
                a.copy_(b)

    return update


class StudentEMA(AveragedModel):
    """EMA copy of one module; starts equal to it (``n_averaged`` = 1) and follows it with :meth:`update`.

    Args:
        module: the live network (e.g. ``task.student``); deep-copied, its copy frozen.
        decay: weight of the running average per update, in [0, 1) (0.999 ≈ a 1,000-step horizon).
    """

    def __init__(self, module: nn.Module, decay: float) -> None:
        # AveragedModel deep-copies `module`; the copy only ever receives averaged values.
        super().__init__(copy.deepcopy(module), multi_avg_fn=ema_update(decay), use_buffers=True)
        self.decay = float(decay)
        self.module.requires_grad_(False).eval()
        self.update(module)  # n_averaged 0 -> 1: the copy of w(0); later updates blend

    def update(self, module: nn.Module) -> None:
        """Blend ``module``'s current weights into the average (one optimiser step)."""
        self.update_parameters(module)

    def _pairs(self, module: nn.Module) -> Iterator[tuple[Tensor, Tensor]]:
        live = [*module.parameters(), *module.buffers()]
        averaged = [*self.module.parameters(), *self.module.buffers()]
        if len(live) != len(averaged):
            raise RuntimeError(f"EMA holds {len(averaged)} tensors but the module has {len(live)}")
        return zip(live, averaged, strict=True)

    @torch.no_grad()
    def swap(self, module: nn.Module) -> None:
        """Exchange the live and averaged weights in place (twice = unchanged, bit for bit)."""
        for live, averaged in self._pairs(module):
            held = live.detach().clone()
            live.detach().copy_(averaged.detach())
            averaged.detach().copy_(held)

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        """Overwrite ``module``'s weights with the average (for inference on a loaded task)."""
        for live, averaged in self._pairs(module):
            live.detach().copy_(averaged.detach())
