"""Task weightings: combine named loss terms into one training objective.

Each weighting is an ``nn.Module`` whose state (learnable log-variances, loss history, GradNorm weights) lives in
parameters and buffers, so it is saved in and restored from checkpoints with the owning LightningModule. All share
one interface (:class:`TaskWeighting`):

- ``forward(losses, shared_parameters=None) -> Tensor``: the objective to back-propagate;
- ``weights() -> dict[str, Tensor]``: the current coefficient of each loss in that objective (detached, for logs);
- ``no_weight_decay_parameters()`` / ``param_groups(lr)``: what the owner must put in its optimiser, without
  weight decay (decay would pull log-variances or GradNorm weights towards 0, which is a bias, not a regulariser);
- ``aux_loss``: the last auxiliary loss included in the objective (GradNorm's :math:`L_{grad}`), detached, or None.

Pick one by name with :func:`build_weighting`: ``"uncertainty"``, ``"dwa"``, ``"gradnorm"`` or ``"fixed"``.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "WEIGHTINGS",
    "DynamicWeightAverage",
    "FixedWeighting",
    "GradNormWeighting",
    "TaskWeighting",
    "UncertaintyWeighting",
    "build_weighting",
    "resolve_shared_parameters",
]


def _all_reduce_mean(tensor: Tensor) -> Tensor:
    """Average ``tensor`` over processes when torch.distributed is running, so every rank uses the same weights."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= dist.get_world_size()
    return tensor


class TaskWeighting(nn.Module):
    """Base class: a weighted combination of the named losses ``task_names``.

    Args:
        task_names: names of the loss terms, in a fixed order (e.g. ``("ssi", "grad")``).

    Attributes:
        task_names: the names, as a tuple.
        aux_loss: auxiliary loss included in the last objective (detached), or None.
    """

    #: whether ``forward`` needs ``shared_parameters`` during training (GradNorm).
    needs_shared_parameters: ClassVar[bool] = False

    def __init__(self, task_names: Sequence[str]) -> None:
        super().__init__()
        names = tuple(task_names)
        if not names or not all(isinstance(name, str) and name for name in names):
            raise ValueError(f"{type(self).__name__}: task_names must be non-empty strings, got {task_names!r}")
        if len(set(names)) != len(names):
            raise ValueError(f"{type(self).__name__}: task_names must be unique, got {names!r}")
        self.task_names = names
        self.aux_loss: Tensor | None = None

    @property
    def num_tasks(self) -> int:
        """Number of loss terms K."""
        return len(self.task_names)

    def _stack(self, losses: Mapping[str, Tensor]) -> Tensor:
        """Check ``losses`` against ``task_names`` and stack them in that order into a float32 ``(K,)`` tensor."""
        if not isinstance(losses, Mapping):
            raise TypeError(
                f"{type(self).__name__}: losses must be a mapping name -> scalar tensor, got {type(losses)}"
            )
        missing = [name for name in self.task_names if name not in losses]
        unexpected = [name for name in losses if name not in self.task_names]
        if missing or unexpected:
            raise ValueError(
                f"{type(self).__name__}: losses must have exactly the keys {list(self.task_names)}; missing "
                f"{missing}, unexpected {unexpected}"
            )
        values = []
        for name in self.task_names:
            value = losses[name]
            if not isinstance(value, Tensor) or value.numel() != 1:
                got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(f"{type(self).__name__}: loss {name!r} must be a scalar tensor, got {got}")
            values.append(value.reshape(()))
        stacked = torch.stack(values)
        return stacked.float() if stacked.dtype in (torch.float16, torch.bfloat16) else stacked

    def _as_dict(self, weights: Tensor) -> dict[str, Tensor]:
        return {name: weights[i].detach() for i, name in enumerate(self.task_names)}

    def current_weights(self) -> Tensor:
        """Coefficients of the losses in the objective, shape ``(K,)``, detached."""
        raise NotImplementedError

    def weights(self) -> dict[str, Tensor]:
        """Coefficient of each loss in the objective, by name (detached scalars, for logging)."""
        return self._as_dict(self.current_weights())

    def no_weight_decay_parameters(self) -> list[nn.Parameter]:
        """Parameters the owner must optimise without weight decay (all of this module's trainable parameters)."""
        return [p for p in self.parameters() if p.requires_grad]

    def param_groups(self, lr: float | None = None) -> list[dict[str, Any]]:
        """Optimiser parameter group(s) for this weighting: ``weight_decay=0`` and, if given, its own ``lr``.

        Returns an empty list for weightings without parameters, so the owner can always write
        ``groups += weighting.param_groups(lr)``.
        """
        params = self.no_weight_decay_parameters()
        if not params:
            return []
        group: dict[str, Any] = {"params": params, "weight_decay": 0.0}
        if lr is not None:
            group["lr"] = lr
        return [group]

    def forward(self, losses: Mapping[str, Tensor], shared_parameters: Sequence[Tensor] | None = None) -> Tensor:
        """Combine ``losses`` (name -> scalar tensor) into the objective to back-propagate."""
        raise NotImplementedError


class FixedWeighting(TaskWeighting):
    r"""Constant weights: :math:`L = \sum_i w_i L_i`.

    Args:
        task_names: names of the loss terms.
        weights: one weight per task, as a sequence in ``task_names`` order or a mapping name -> weight
            (missing names get 1); default all 1.
    """

    def __init__(self, task_names: Sequence[str], weights: Sequence[float] | Mapping[str, float] | None = None) -> None:
        super().__init__(task_names)
        if weights is None:
            values = [1.0] * self.num_tasks
        elif isinstance(weights, Mapping):
            unknown = [name for name in weights if name not in self.task_names]
            if unknown:
                raise ValueError(f"FixedWeighting: weights name unknown tasks {unknown}; tasks are {self.task_names}")
            values = [float(weights.get(name, 1.0)) for name in self.task_names]
        else:
            values = [float(w) for w in weights]
            if len(values) != self.num_tasks:
                raise ValueError(
                    f"FixedWeighting: need {self.num_tasks} weights for {self.task_names}, got {len(values)}"
                )
        self.register_buffer("fixed_weights", torch.tensor(values, dtype=torch.float32))

    def current_weights(self) -> Tensor:
        """The constant weights, shape ``(K,)``."""
        return self.fixed_weights.detach().clone()

    def forward(self, losses: Mapping[str, Tensor], shared_parameters: Sequence[Tensor] | None = None) -> Tensor:
        """Return :math:`\\sum_i w_i L_i`."""
        values = self._stack(losses)
        return (self.fixed_weights.to(values.dtype) * values).sum()


class UncertaintyWeighting(TaskWeighting):
    r"""Homoscedastic-uncertainty weighting (Kendall, Gal, Cipolla, CVPR 2018).

    .. math::

        L = \sum_i \tfrac12 e^{-s_i} L_i + \tfrac12 s_i, \qquad s_i = \log \sigma_i^2 \text{ (learnable)}

    the Gaussian-likelihood form with the numerically stable log-variance parameterisation. For a fixed :math:`L_i`
    the optimum is :math:`s_i = \log L_i`, so the coefficients :math:`\tfrac12 e^{-s_i}` end up inversely
    proportional to the loss magnitudes. The :math:`s_i` must be in the optimiser, without weight decay (see
    :meth:`param_groups`); they usually need a larger learning rate than a fine-tuned network (e.g. 1e-3 to 1e-2
    with Adam), or they barely move in a short schedule. ``weights()`` reports :math:`\tfrac12 e^{-s_i}`.

    Args:
        task_names: names of the loss terms.
        init_log_var: initial :math:`s_i` (0 gives coefficients ½).
    """

    def __init__(self, task_names: Sequence[str], init_log_var: float = 0.0) -> None:
        super().__init__(task_names)
        self.log_vars = nn.Parameter(torch.full((self.num_tasks,), float(init_log_var)))

    def current_weights(self) -> Tensor:
        """Coefficients :math:`\\tfrac12 e^{-s_i}`, shape ``(K,)``."""
        return 0.5 * torch.exp(-self.log_vars.detach())

    def forward(self, losses: Mapping[str, Tensor], shared_parameters: Sequence[Tensor] | None = None) -> Tensor:
        """Return :math:`\\sum_i \\tfrac12 e^{-s_i} L_i + \\tfrac12 s_i` (differentiable in the losses and s)."""
        values = self._stack(losses)
        log_vars = self.log_vars.to(values.dtype)
        return (0.5 * torch.exp(-log_vars) * values + 0.5 * log_vars).sum()


class DynamicWeightAverage(TaskWeighting):
    r"""Dynamic Weight Average (Liu, Johns, Davison, CVPR 2019).

    .. math::

        \lambda_k(t) = K \frac{\exp(w_k(t-1)/T)}{\sum_i \exp(w_i(t-1)/T)}, \qquad
        w_k(t-1) = \frac{\bar L_k(t-1)}{\bar L_k(t-2)}, \qquad L = \sum_k \lambda_k L_k

    with temperature :math:`T = 2`; :math:`\lambda_k = 1` until two history entries exist. The paper's
    :math:`\bar L_k(t)` is the mean loss of epoch :math:`t`; here a history entry is the mean of the (unweighted,
    detached) losses over a *window* of ``window`` training-mode ``forward`` calls (``window=1``: per step), or,
    with ``window=None``, over one training epoch, the paper's form: the owner calls :meth:`start_epoch` before every
    training batch (:class:`~d3epth.tasks.base.DepthTask` does). Calls in eval mode (validation) do not record. Under
    gradient accumulation a forward call is a micro-batch. With torch.distributed running, window means are averaged
    over processes, so all ranks use the same weights. No learnable parameters; the history is kept in buffers
    (saved in checkpoints).

    Args:
        task_names: names of the loss terms.
        temperature: softmax temperature T.
        window: forward calls per history entry, or None for one entry per epoch (:meth:`start_epoch`).
    """

    def __init__(self, task_names: Sequence[str], temperature: float = 2.0, window: int | None = 100) -> None:
        super().__init__(task_names)
        if temperature <= 0:
            raise ValueError(f"DynamicWeightAverage: temperature must be > 0, got {temperature}")
        if window is not None and (not isinstance(window, int) or window < 1):
            raise ValueError(f"DynamicWeightAverage: window must be a positive int or None, got {window!r}")
        self.temperature = float(temperature)
        self.window = window
        k = self.num_tasks
        # history[0] = mean loss of the last closed window (t-1), history[1] = the one before (t-2).
        self.register_buffer("history", torch.zeros(2, k, dtype=torch.float64))
        self.register_buffer("num_entries", torch.zeros((), dtype=torch.long))
        self.register_buffer("window_sum", torch.zeros(k, dtype=torch.float64))
        self.register_buffer("window_count", torch.zeros((), dtype=torch.long))
        self.register_buffer("window_epoch", torch.zeros((), dtype=torch.long))  # the epoch the open window is of

    def current_weights(self) -> Tensor:
        """:math:`\\lambda_k`, shape ``(K,)``: 1 until two windows are closed, then K·softmax(w/T)."""
        if int(self.num_entries) < 2:
            return torch.ones(self.num_tasks, device=self.history.device)
        ratio = self.history[0] / self.history[1].clamp_min(torch.finfo(torch.float64).tiny)
        return (self.num_tasks * torch.softmax(ratio / self.temperature, dim=0)).float()

    @torch.no_grad()
    def record(self, losses: Tensor) -> None:
        """Add one step's losses ``(K,)`` to the current window; close it when it holds ``window`` steps."""
        self.window_sum += losses.detach().to(self.window_sum)
        self.window_count += 1
        if self.window is not None and int(self.window_count) >= self.window:
            self.close_window()

    @torch.no_grad()
    def close_window(self) -> None:
        """Turn the current window's mean into the newest history entry (no-op for an empty window)."""
        if int(self.window_count) == 0:
            return
        mean = _all_reduce_mean(self.window_sum / self.window_count)
        self.history[1] = self.history[0]
        self.history[0] = mean
        self.num_entries += 1
        self.window_sum.zero_()
        self.window_count.zero_()

    @torch.no_grad()
    def start_epoch(self, epoch: int) -> None:
        """Per-epoch windows (``window=None``): close the open window if it belongs to an earlier epoch.

        Called before every training batch, so an epoch's window closes at the next epoch's first batch rather than in
        ``on_train_epoch_end``: a run resumed from a checkpoint written at an epoch's last batch stays exact, although
        Lightning does not replay that epoch's end hooks. The window's epoch is a buffer, saved in checkpoints.
        """
        if self.window is None and int(self.window_epoch) != epoch:
            self.close_window()
            self.window_epoch.fill_(epoch)

    def forward(self, losses: Mapping[str, Tensor], shared_parameters: Sequence[Tensor] | None = None) -> Tensor:
        """Return :math:`\\sum_k \\lambda_k L_k` with the weights of the closed history, then record the losses."""
        values = self._stack(losses)
        weights = self.current_weights().to(values)
        if self.training:
            self.record(values)
        return (weights * values).sum()

    def extra_repr(self) -> str:
        """Show the hyper-parameters in ``print(module)``."""
        return f"tasks={self.task_names}, temperature={self.temperature}, window={self.window}"


class GradNormWeighting(TaskWeighting):
    r"""GradNorm (Chen, Badrinarayanan, Lee, Rabinovich, ICML 2018).

    On the shared parameters :math:`W` (usually the last layer shared by all tasks):

    .. math::

        G_i = \|\nabla_W (w_i L_i)\|_2 = w_i \|\nabla_W L_i\|_2, \quad
        r_i = \frac{L_i/L_i(0)}{\operatorname{mean}_j L_j/L_j(0)}, \quad
        L_{grad} = \sum_i \bigl| G_i - \operatorname{sg}[\bar G\, r_i^\alpha] \bigr|, \quad \alpha = 1.5

    Design for Lightning's automatic optimisation: the weights :math:`w_i` are an ``nn.Parameter`` in the owner's
    optimiser (no weight decay), and ``forward`` returns one objective

    .. math:: L = \sum_i \operatorname{sg}[w_i]\, L_i + L_{grad}

    The network gets the gradient of :math:`\sum_i w_i L_i` (w held constant); :math:`w` gets the gradient of
    :math:`L_{grad}` only, because the norms :math:`\|\nabla_W L_i\|` are computed with ``torch.autograd.grad`` (one
    extra partial backward per task, to :math:`W` only) and detached, and the targets are constants. After each
    optimiser step the weights are renormalised to :math:`\sum_i w_i = K` (and kept positive); this happens at the
    start of the next ``forward`` (in-place under ``no_grad``), and :meth:`weights` always reports the renormalised
    values, so the owner needs no hook. :math:`L_i(0)` is recorded at the first training call and kept in a buffer.
    In eval mode, under ``torch.no_grad`` or when no loss requires grad, ``forward`` returns
    :math:`\sum_i w_i L_i` only. ``aux_loss`` holds the last :math:`L_{grad}`, detached.

    Args:
        task_names: names of the loss terms.
        alpha: asymmetry α (1.5 in the paper's depth experiments and LibMTL).
        eps: floor for the weights and for :math:`L_i(0)`.
    """

    needs_shared_parameters: ClassVar[bool] = True

    def __init__(self, task_names: Sequence[str], alpha: float = 1.5, eps: float = 1e-6) -> None:
        super().__init__(task_names)
        self.alpha = float(alpha)
        self.eps = float(eps)
        self.task_weights = nn.Parameter(torch.ones(self.num_tasks))
        self.register_buffer("initial_losses", torch.ones(self.num_tasks))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def current_weights(self) -> Tensor:
        """:math:`w_i` renormalised to sum to K, shape ``(K,)``."""
        w = self.task_weights.detach().clamp_min(self.eps)
        return w * (self.num_tasks / w.sum())

    @torch.no_grad()
    def renormalize_(self) -> None:
        """Clamp the weights positive and rescale them in place to sum to K (also done at every ``forward``)."""
        self.task_weights.copy_(self.current_weights())

    def forward(self, losses: Mapping[str, Tensor], shared_parameters: Sequence[Tensor] | None = None) -> Tensor:
        """Return :math:`\\sum_i \\operatorname{sg}[w_i] L_i + L_{grad}` (training) or :math:`\\sum_i w_i L_i`."""
        values = self._stack(losses)
        self.renormalize_()
        w = self.task_weights.to(values.dtype)
        weighted = (w.detach() * values).sum()
        self.aux_loss = None
        if not (self.training and torch.is_grad_enabled() and values.requires_grad):
            return weighted
        if shared_parameters is None:
            raise ValueError(
                "GradNormWeighting: training needs shared_parameters (the parameters of the last layer shared by "
                "all tasks); see resolve_shared_parameters"
            )
        shared = [p for p in shared_parameters if p.requires_grad]
        if not shared:
            raise ValueError("GradNormWeighting: shared_parameters holds no parameter that requires grad")
        if not bool(self.initialized):
            self.initial_losses.copy_(_all_reduce_mean(values.detach().float()))
            self.initialized.fill_(True)
        norms = []
        for i in range(self.num_tasks):
            if not values[i].requires_grad:
                norms.append(values.new_zeros(()))
                continue
            grads = torch.autograd.grad(values[i], shared, retain_graph=True, allow_unused=True)
            squared = [g.detach().float().pow(2).sum() for g in grads if g is not None]
            norms.append(torch.stack(squared).sum().sqrt().to(values.dtype) if squared else values.new_zeros(()))
        grad_norms = w * torch.stack(norms)  # G_i, differentiable in w only
        loss_ratio = values.detach() / self.initial_losses.to(values.dtype).clamp_min(self.eps)
        relative_rate = loss_ratio / loss_ratio.mean().clamp_min(self.eps)
        targets = (grad_norms.detach().mean() * relative_rate.pow(self.alpha)).detach()
        aux = (grad_norms - targets).abs().sum()
        self.aux_loss = aux.detach()
        return weighted + aux

    def extra_repr(self) -> str:
        """Show the hyper-parameters in ``print(module)``."""
        return f"tasks={self.task_names}, alpha={self.alpha}"


WEIGHTINGS: dict[str, type[TaskWeighting]] = {
    "uncertainty": UncertaintyWeighting,
    "dwa": DynamicWeightAverage,
    "gradnorm": GradNormWeighting,
    "fixed": FixedWeighting,
}


def build_weighting(name: str, task_names: Sequence[str], **kwargs: Any) -> TaskWeighting:
    """Build a task weighting by name.

    Args:
        name: ``"uncertainty"``, ``"dwa"``, ``"gradnorm"`` or ``"fixed"``.
        task_names: names of the loss terms.
        **kwargs: constructor arguments of the chosen class (e.g. ``temperature``, ``window`` for DWA).

    Returns:
        The weighting module.

    Raises:
        ValueError: for an unknown name (the message suggests the closest one) or an unknown keyword.
    """
    if name not in WEIGHTINGS:
        close = difflib.get_close_matches(str(name), list(WEIGHTINGS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"build_weighting: unknown weighting {name!r}, expected one of {list(WEIGHTINGS)}{hint}")
    cls = WEIGHTINGS[name]
    try:
        return cls(task_names, **kwargs)
    except TypeError as error:
        raise ValueError(f"build_weighting: bad arguments {sorted(kwargs)} for weighting {name!r}: {error}") from error


def resolve_shared_parameters(module: nn.Module, name: str) -> list[nn.Parameter]:
    """Find GradNorm's shared parameters in ``module`` by a parameter name or a submodule name.

    Args:
        module: the network (e.g. the student).
        name: a name from ``module.named_parameters()`` (e.g. ``"decoder.head.0.weight"``) or
            ``module.named_modules()`` (e.g. ``"decoder.head.0"``, meaning all its trainable parameters).

    Returns:
        The trainable parameters.

    Raises:
        ValueError: if nothing trainable matches ``name``; the message suggests the closest names.
    """
    parameters = dict(module.named_parameters())
    if name in parameters:
        selected = [parameters[name]]
    else:
        modules = dict(module.named_modules())
        if name not in modules:
            close = difflib.get_close_matches(name, [*parameters, *modules], n=3)
            raise ValueError(f"resolve_shared_parameters: no parameter or submodule {name!r}; closest: {close}")
        selected = list(modules[name].parameters())
    selected = [p for p in selected if p.requires_grad]
    if not selected:
        raise ValueError(f"resolve_shared_parameters: {name!r} has no parameter that requires grad")
    return selected
