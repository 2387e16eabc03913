"""Inference forms of two layers whose PyTorch CPU kernels are slow on channels_last tensors: same function, faster.

Both are found in ``fastvit_t8`` (the paper-scale default student) by profiling it at 480x640 on 2 AMD EPYC cores
(``benchmarks/inference_speed.py``; figures for one layer, bf16, best of 40 calls):

* **GELU.** ATen's CPU ``gelu`` (``gelu_out_cpu`` in ``aten/src/ATen/native/Activation.cpp``) hands an input that
  ``is_contiguous()`` in the default format to oneDNN's eltwise kernel (exact form, fp32 or bf16) and anything else,
  a channels_last activation included, to its own element-wise loop: on the ``[1,144,120,160]`` MLP activation
  0.95 ms vs 0.34 ms for the same values through the contiguous NHWC view (fp32: 0.54 vs 0.39 ms). A channels_last
  tensor *is* a contiguous NHWC tensor, so :class:`NHWCGELU` applies GELU to that view (``permute``, no copy) and
  permutes back; both kernels compute the exact erf form, equally close to a float64 reference
  (``tests/models/test_cpu_layers.py``).
* **Depthwise convolution with a channel multiplier** (``groups == in_channels``, ``out_channels = m * in_channels``,
  ``m > 1``; FastViT's stride-2 7x7 patch embeddings, 48 -> 96 channels and so on). oneDNN runs this shape in a
  generic grouped kernel: 2.59 ms at ``[1,48,120,160]``, while the ``m`` depthwise convolutions it consists of (one
  per output channel of each group, ``out_channels == in_channels``, oneDNN's fast depthwise kernel) plus the
  interleaving of their outputs take 0.39 ms (fp32: 1.57 vs 0.51 ms). :class:`ChannelMultiplierConv2d` computes it
  so, from the same weight; output channel ``g * m + j`` is the ``j``-th convolution's channel ``g``.

:func:`use_fast_cpu_layers` swaps them into a model in place; :func:`~d3epth.inference.prepare_for_inference` does it
for CPU models. The state dict is unchanged (same parameters, same names). ONNX export keeps the plain layers: the
permutes would become real transposes in an ONNX graph, and onnxruntime picks its own layouts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["NHWCGELU", "ChannelMultiplierConv2d", "use_fast_cpu_layers"]


def _is_channels_last_only(x: Tensor) -> bool:
    """A 4-D tensor laid out channels_last and not also contiguous (e.g. not ``[B,1,H,W]``)."""
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


class NHWCGELU(nn.GELU):
    """:class:`torch.nn.GELU` evaluated on the contiguous NHWC view of a channels_last input (oneDNN's kernel).

    Input and output: any shape; a channels_last ``[B,C,H,W]`` input gives a channels_last output.
    """

    def forward(self, x: Tensor) -> Tensor:
        """GELU of ``x``."""
        if _is_channels_last_only(x):
            return F.gelu(x.permute(0, 2, 3, 1), approximate=self.approximate).permute(0, 3, 1, 2)
        return F.gelu(x, approximate=self.approximate)


class ChannelMultiplierConv2d(nn.Conv2d):
    """A depthwise convolution with channel multiplier ``m > 1``, computed as ``m`` depthwise ones and interleaved.

    Same parameters as the :class:`torch.nn.Conv2d` it replaces (weight ``[m*C,1,kh,kw]``, bias ``[m*C]``);
    input ``[B,C,H,W]``, output ``[B,m*C,H',W']`` in the input's memory format (channels_last or contiguous).
    """

    @property
    def multiplier(self) -> int:
        """Output channels per input channel, ``m``."""
        return self.out_channels // self.in_channels

    def forward(self, x: Tensor) -> Tensor:
        """The convolution of ``x``."""
        m, channels = self.multiplier, self.in_channels
        weight = self.weight.view(channels, m, 1, *self.weight.shape[2:])
        bias = None if self.bias is None else self.bias.view(channels, m)
        outputs = [
            self._conv_forward(x, weight[:, j].contiguous(), None if bias is None else bias[:, j].contiguous())
            for j in range(m)
        ]
        if _is_channels_last_only(outputs[0]):
            # [B,H,W,C] views, stacked to [B,H,W,C,m]: channel g*m + j is contiguous in memory, as channels_last wants.
            return torch.stack([o.permute(0, 2, 3, 1) for o in outputs], dim=-1).flatten(3).permute(0, 3, 1, 2)
        return torch.stack(outputs, dim=2).flatten(1, 2)


def _has_channel_multiplier(conv: nn.Conv2d) -> bool:
    channels = conv.in_channels
    return (
        channels > 1 and conv.groups == channels and conv.out_channels > channels and conv.out_channels % channels == 0
    )


def _with_parameters_of(conv: nn.Conv2d) -> ChannelMultiplierConv2d:
    """A :class:`ChannelMultiplierConv2d` configured like ``conv`` and holding its parameters."""
    fast = ChannelMultiplierConv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        conv.bias is not None,
        conv.padding_mode,
        device="meta",
    )
    fast.weight, fast.bias = conv.weight, conv.bias
    return fast


def use_fast_cpu_layers(model: nn.Module, gelu: bool = True) -> int:
    """Swap the two layers' CPU inference forms into ``model``, in place; returns how many modules were swapped.

    Every ``nn.GELU`` becomes an :class:`NHWCGELU` (unless ``gelu=False``), every ``nn.Conv2d`` that is a depthwise
    convolution with a channel multiplier a :class:`ChannelMultiplierConv2d`. Only modules of exactly these types are
    swapped (subclasses may compute something else); the new modules share the old ones' parameters.

    Args:
        model: the network, changed in place.
        gelu: swap the GELUs too. A model for ``torch.compile`` keeps ATen's: Inductor fuses a GELU into the
            convolution before it (a oneDNN post-op), which :class:`NHWCGELU`'s permutes prevent.
    """
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.GELU and gelu:
                setattr(parent, name, NHWCGELU(approximate=child.approximate))
            elif type(child) is nn.Conv2d and _has_channel_multiplier(child):
                setattr(parent, name, _with_parameters_of(child))
            else:
                continue
            swapped += 1
    return swapped
