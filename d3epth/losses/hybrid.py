"""Hybrid Depth Loss: SSI (global structure) + edge-aware gradient Huber (detail) under a task weighting.

D³epth's stage-2 (and D²epth's) pixel-space objective. The paper names the two terms and says they are balanced by
"dynamic task weighting" but publishes no formula; the forms here are our documented assumptions
(``docs/design.md``, "Choices where the paper is silent"):
:func:`~d3epth.losses.ssi.ssi_loss` and :func:`~d3epth.losses.gradient.gradient_huber_loss`, combined by a weighting
from :mod:`d3epth.losses.weighting` (uncertainty by default).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from d3epth.losses.gradient import EdgeSource, GradientHuberLoss, GradientMode
from d3epth.losses.ssi import DataTerm, Reduction, align_prediction, aligned_data_loss, check_depth_inputs
from d3epth.losses.weighting import TaskWeighting, build_weighting
from d3epth.utils.arguments import arguments_dataclass

__all__ = ["HybridDepthLoss", "LossConfig"]

TASK_NAMES = ("ssi", "grad")


class HybridDepthLoss(nn.Module):
    r"""SSI + edge-aware gradient Huber, balanced by a task weighting chosen by name.

    .. math::

        \hat p = s\,p + t \;\text{(per-image least squares)}, \quad
        L_{ssi} = \operatorname{mean}_M \rho(\hat p - g), \quad
        L_{grad} = \text{gradient\_huber}(\hat p, g, M, I), \quad
        L = \text{weighting}(\{ssi: L_{ssi},\ grad: L_{grad}\})

    The gradient term uses the *same* aligned prediction :math:`\hat p` as the SSI term (one least-squares solve,
    gradients flow through s and t into both terms). With the default uncertainty weighting
    :math:`L = \tfrac12 e^{-s_1} L_{ssi} + \tfrac12 e^{-s_2} L_{grad} + \tfrac12 (s_1 + s_2)`.

    The owner must put ``self.weighting`` 's parameters in its optimiser without weight decay
    (``loss.weighting.param_groups(lr)``), and for ``weighting="gradnorm"`` pass ``shared_parameters`` to
    :meth:`forward` during training (see :class:`~d3epth.losses.weighting.GradNormWeighting`).

    Args:
        data_term: SSI data term, ``"l1"`` (E2E-FT) or ``"l2"`` (MiDaS).
        reduction: ``"batch"`` or ``"image"``, for both terms.
        scales: scales of the gradient term.
        delta: Huber threshold δ of the gradient term (target units per pixel).
        edge_source: ``"image"``, ``"depth"``, ``"both"`` or ``"none"``.
        edge_beta: extra weight at a full edge.
        edge_sigma_image: image-gradient scale of the edge weight (image in [-1, 1]).
        edge_sigma_depth: relative depth-gradient scale of the edge weight.
        gradient_mode: ``"sobel"`` or ``"diff"``.
        weighting: ``"uncertainty"``, ``"dwa"``, ``"gradnorm"`` or ``"fixed"``.
        weighting_kwargs: keyword arguments of the weighting (e.g. ``{"weights": [1.0, 0.5]}`` for ``"fixed"``,
            ``{"window": 50}`` for ``"dwa"``).

    Shape:
        - pred, target, mask: ``[B,1,H,W]``; mask is ``torch.bool``; image ``[B,3,H,W]`` in [-1, 1].
        - Output: ``(loss, parts)``; ``loss`` a scalar, ``parts`` a dict of detached scalars ``loss_ssi``,
          ``loss_grad``, ``weight_ssi``, ``weight_grad`` (and ``loss_gradnorm`` with GradNorm in training).
    """

    def __init__(
        self,
        data_term: DataTerm = "l1",
        reduction: Reduction = "batch",
        scales: int = 4,
        delta: float = 0.05,
        edge_source: EdgeSource = "image",
        edge_beta: float = 1.0,
        edge_sigma_image: float = 0.1,
        edge_sigma_depth: float = 0.05,
        gradient_mode: GradientMode = "sobel",
        weighting: str = "uncertainty",
        weighting_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if data_term not in ("l1", "l2"):
            raise ValueError(f"HybridDepthLoss: data_term must be 'l1' or 'l2', got {data_term!r}")
        if reduction not in ("batch", "image"):
            raise ValueError(f"HybridDepthLoss: reduction must be 'batch' or 'image', got {reduction!r}")
        self.data_term = data_term
        self.reduction = reduction
        # The gradient term is applied to the prediction already aligned for the SSI term (align=False); it checks
        # its own options.
        self.gradient = GradientHuberLoss(
            scales=scales,
            delta=delta,
            edge_source=edge_source,
            edge_beta=edge_beta,
            edge_sigma_image=edge_sigma_image,
            edge_sigma_depth=edge_sigma_depth,
            gradient_mode=gradient_mode,
            reduction=reduction,
            align=False,
        )
        self.weighting: TaskWeighting = build_weighting(weighting, TASK_NAMES, **dict(weighting_kwargs or {}))

    def forward(
        self,
        pred: Tensor,
        target: Tensor,
        mask: Tensor,
        image: Tensor | None = None,
        shared_parameters: Sequence[Tensor] | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Compute the weighted hybrid loss.

        Args:
            pred: predicted depth, shape ``[B,1,H,W]``.
            target: ground-truth depth, shape ``[B,1,H,W]``.
            mask: valid pixels, ``torch.bool``, shape ``[B,1,H,W]``.
            image: RGB in [-1, 1], shape ``[B,3,H,W]``; required when ``edge_source`` is ``"image"``/``"both"``.
            shared_parameters: GradNorm's shared parameters (training only); ignored by the other weightings.

        Returns:
            ``(loss, parts)``: the objective to back-propagate (float32) and detached scalars for logging.
        """
        return self.weigh(self.terms(pred, target, mask, image), shared_parameters)

    def terms(self, pred: Tensor, target: Tensor, mask: Tensor, image: Tensor | None = None) -> dict[str, Tensor]:
        """The unweighted terms ``{"ssi": L_ssi, "grad": L_grad}`` (float32 scalars); arguments as :meth:`forward`.

        With several targets in one step (ground truth and a pseudo-label), sum their terms and :meth:`weigh` once:
        the weighting (its regulariser, DWA's history, GradNorm's gradient norms) then sees one objective per step.
        """
        check_depth_inputs(pred, target, mask, caller="HybridDepthLoss")
        if self.gradient.edge_source in ("image", "both") and image is None:
            raise ValueError(
                f"HybridDepthLoss: edge_source={self.gradient.edge_source!r} needs 'image' [B,3,H,W], got None"
            )
        aligned = align_prediction(pred, target, mask)
        loss_ssi = aligned_data_loss(aligned, target, mask, data_term=self.data_term, reduction=self.reduction)
        return {"ssi": loss_ssi, "grad": self.gradient(aligned, target, mask, image=image)}

    def weigh(
        self, terms: dict[str, Tensor], shared_parameters: Sequence[Tensor] | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The weighted objective of :meth:`terms` and the logged parts (terms, weights, GradNorm's auxiliary loss)."""
        # Read the weights before the call: DWA may close a history window inside it, and the logged weights should
        # be the ones this step's objective used.
        weights = self.weighting.weights()
        total = self.weighting(terms, shared_parameters=shared_parameters)
        parts = {f"loss_{name}": value.detach() for name, value in terms.items()}
        parts.update({f"weight_{name}": weights[name] for name in terms})
        if self.weighting.aux_loss is not None:
            parts["loss_gradnorm"] = self.weighting.aux_loss
        return total, parts

    def extra_repr(self) -> str:
        """Show the SSI options in ``print(module)`` (the gradient term and the weighting print as children)."""
        return f"data_term={self.data_term!r}, reduction={self.reduction!r}"


#: Stage 2's ``loss`` option: ``HybridDepthLoss``'s arguments as a typed group (``weighting_kwargs`` stays a mapping:
#: its keys depend on the weighting chosen).
LossConfig = arguments_dataclass(HybridDepthLoss, "LossConfig", __name__)
