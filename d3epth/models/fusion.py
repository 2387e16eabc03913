"""Inference-time folding of BatchNorm into the convolution before it (and timm's own re-parameterisation).

In eval mode a ``BatchNorm2d`` is a per-channel affine map, ``y = (x - mean) / sqrt(var + eps) * gamma + beta``, so
a ``Conv2d`` whose output feeds only that BatchNorm can absorb it: ``W' = W * s``, ``b' = (b - mean) * s + beta`` with
``s = gamma / sqrt(var + eps)`` per output channel. The arithmetic is torch's own
(:func:`torch.nn.utils.fusion.fuse_conv_bn_eval`); what this module adds is finding the pairs in a timm backbone.

Why not ``torch.fx.experimental.optimization.fuse``: it needs the whole model symbolically traceable and matches
module *types* exactly, while timm's EfficientNet / MobileNet / RegNet blocks use ``BatchNormAct2d`` (a BatchNorm2d
subclass with the activation inside) and the student's forward has input-size arithmetic that fx cannot trace. So
pairs are found by running the model once on a small example, with module hooks and a ``TorchFunctionMode`` that
counts the operations reading each convolution output: a BatchNorm is fused into a convolution when its input *is*
that convolution's output tensor and nothing else reads it. Fused BatchNorms are
replaced by ``nn.Identity`` (plain BatchNorm2d) or by ``nn.Sequential(drop, act)`` (timm's ``BatchNormAct2d``), so
the fused model holds no BatchNorm module.

What gets fused for the backbones d3epth uses (checked in ``tests/models/test_fusion.py``):

* ResNet, EfficientNet(-Lite), MobileNetV3 / V4: every conv + BN pair; no BatchNorm is left;
* ConvNeXt: nothing; it normalises with LayerNorm, whose statistics are computed from each input, so there is no
  fixed affine map to fold into a weight (the d3epth decoder's default GroupNorm likewise; its ``norm: batch``
  variant is fused);
* RepVGG / MobileOne / FastViT / RepViT style blocks: timm's :func:`timm.utils.reparameterize_model` merges their
  parallel branches first.

The fused model is for inference only (eval mode, no BatchNorm statistics left to train); the exported
``model.safetensors`` is written unfused, so it keeps loading into a plain ``DepthStudent``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from timm.utils import reparameterize_model
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

__all__ = ["find_conv_bn_pairs", "fuse_conv_bn", "has_batch_norm"]


def has_batch_norm(model: nn.Module) -> bool:
    """Whether any submodule of ``model`` is a BatchNorm (``nn.modules.batchnorm._BatchNorm``, incl. timm's)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _fusable_bn(module: nn.Module) -> bool:
    """A BatchNorm2d we know how to replace: plain, or timm's ``BatchNormAct2d`` (its ``drop`` and ``act`` kept)."""
    if type(module) is nn.BatchNorm2d:
        return True
    return isinstance(module, nn.BatchNorm2d) and hasattr(module, "act") and hasattr(module, "drop")


class _TensorUses(TorchFunctionMode):
    """Counts, for the tensors in ``watched`` (by identity), the torch calls that read them and return a tensor.

    Shape queries (``x.shape``, ``x.size()``, ``x.ndim``) return no tensor and do not count as uses.
    """

    def __init__(self) -> None:
        super().__init__()
        self.watched: dict[int, Tensor] = {}  # id -> tensor; holding it keeps the id from being reused
        self.uses: dict[int, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        result = func(*args, **(kwargs or {}))
        if any(isinstance(r, Tensor) for r in tree_flatten(result)[0]):
            for arg in tree_flatten((args, kwargs or {}))[0]:
                if isinstance(arg, Tensor) and id(arg) in self.watched:
                    self.uses[id(arg)] += 1
        return result


def find_conv_bn_pairs(model: nn.Module, run: Callable[[nn.Module], object]) -> list[tuple[str, str]]:
    """``(conv_name, bn_name)`` pairs where the BatchNorm is the only reader of the convolution's output.

    Args:
        model: the network, in eval mode.
        run: calls ``model`` once (e.g. ``lambda m: m(example)``); a small input is enough.

    Returns:
        Qualified module names as in ``model.named_modules()``, in call order. A pair is reported only when the
        BatchNorm's input *is* the convolution's output tensor and no other operation reads that tensor (a residual
        or an in-place activation in between would), and when both modules ran exactly once (a shared convolution
        cannot be folded for one of its uses).
    """
    names = {module: name for name, module in model.named_modules()}
    calls: dict[str, int] = {}
    producer: dict[int, str] = {}  # id of a conv output -> conv name
    candidates: list[tuple[str, str, int]] = []
    uses = _TensorUses()

    def after_conv(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        calls[names[module]] = calls.get(names[module], 0) + 1
        uses.watched[id(output)], uses.uses[id(output)] = output, 0
        producer[id(output)] = names[module]

    def before_bn(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        calls[names[module]] = calls.get(names[module], 0) + 1
        key = id(inputs[0]) if inputs else None
        if key in producer and uses.watched[key] is inputs[0] and _fusable_bn(module):
            candidates.append((producer[key], names[module], key))

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(after_conv))
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            handles.append(module.register_forward_pre_hook(before_bn))
    try:
        with torch.no_grad(), uses:
            run(model)
    finally:
        for handle in handles:
            handle.remove()
    # One use: the BatchNorm's own batch_norm call.
    pairs = [(c, b) for c, b, key in candidates if uses.uses[key] == 1 and calls[c] == 1 and calls[b] == 1]
    uses.watched.clear()
    return pairs


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


@torch.no_grad()
def fuse_conv_bn(model: nn.Module, run: Callable[[nn.Module], object] | None = None) -> list[tuple[str, str]]:
    """Re-parameterise timm blocks and fold every directly-following BatchNorm into its convolution, in place.

    Args:
        model: the network; put in eval mode here (folding uses the running statistics).
        run: calls ``model`` once on a small example (see :func:`find_conv_bn_pairs`). Default: an image → depth
            network's call on a ``1x3x(2m)x(2m)`` zero image on the model's device, ``m`` its ``size_multiple``
            (32 if it has none): the smallest input every level of a stride-``m`` backbone sees at least 2x2 of.

    Returns:
        The fused ``(conv_name, bn_name)`` pairs (empty for a model without BatchNorm, e.g. ConvNeXt).
    """
    model.eval()
    if run is None:
        side = 2 * int(getattr(model, "size_multiple", 32))
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        example = torch.zeros(1, 3, side, side, device=device)

        def run(m: nn.Module) -> object:
            return m(example)

    # RepVGG-style multi-branch blocks (MobileOne, FastViT, RepViT...) merge into one conv first; a no-op elsewhere.
    reparameterize_model(model, inplace=True)
    pairs = find_conv_bn_pairs(model, run)
    for conv_name, bn_name in pairs:
        conv = model.get_submodule(conv_name)
        bn = model.get_submodule(bn_name)
        _set_module(model, conv_name, fuse_conv_bn_eval(conv, bn))
        tail = nn.Sequential(bn.drop, bn.act) if type(bn) is not nn.BatchNorm2d else nn.Identity()
        _set_module(model, bn_name, tail)
    return pairs
