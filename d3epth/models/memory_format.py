"""Training in channels_last (NHWC) memory format, around one oneDNN bug.

Convolution libraries run their fastest kernels on NHWC tensors: oneDNN (CPU) reorders every NCHW activation into a
blocked layout and back, cuDNN's tensor-core kernels (fp16 / bf16) want NHWC. Storing a network's 4-D weights as
channels_last makes every convolution produce channels_last outputs, so the whole forward and backward pass stays in
that layout (PyTorch's "Channels Last Memory Format" tutorial; timm's ``train.py --channels-last``). Measured on one
thread of a 2-core Xeon (AVX-512), batch 4 at 96x128, forward + backward + fused AdamW, median of 25 steps: the
sample student (``mobilenetv3_large_100`` + 32-channel decoder) 98 -> 76 ms, ``fastvit_t8`` + 128 channels 247 ->
203 ms; a whole sample student stage (data, loss, logging included) 6-9 % less wall time; the diffusers UNet and VAE
of the sample teacher and autoencoder gain nothing measurable.

The bug: oneDNN's 1x1 convolution with a stride > 1 on an NHWC source with fewer input channels per group than its
channel block (16 fp32 channels with AVX-512) writes past a workspace in its weight-gradient pass
(https://github.com/uxlfoundation/oneDNN/issues/6035, open; reproduced with torch 2.14.1: ``Conv2d(8, 48, 1,
stride=2)`` in channels_last, 20 backward passes at 4x8x96x128, dies with SIGSEGV or ``free(): invalid size``). timm's
``fastvit_t8``'s stem has one (its first block's 1x1 "scale" branch, 3 -> 48 channels at stride 2).
:func:`to_channels_last` keeps such convolutions, and their inputs, in NCHW: oneDNN's blocked-source path has no such
bug, and the cost is one layout conversion per affected layer. The rule also covers grouped and depthwise strided 1x1
convolutions (fastvit's second stem block has a depthwise one), which did not crash here: untested is treated as
affected.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["affected_by_onednn_1x1_bug", "to_channels_last"]

#: oneDNN's channel block for fp32 on AVX-512 (the narrowest ISA block is 8 on AVX2; 16 covers both).
_ONEDNN_CHANNEL_BLOCK = 16


def affected_by_onednn_1x1_bug(module: nn.Module) -> bool:
    """Whether ``module`` is a strided 1x1 convolution whose NHWC weight gradient oneDNN computes out of bounds."""
    return (
        isinstance(module, nn.Conv2d)
        and module.kernel_size == (1, 1)
        and max(module.stride) > 1
        and module.in_channels // module.groups < _ONEDNN_CHANNEL_BLOCK
    )


def _contiguous_cpu_input(module: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """Forward pre-hook: hand an affected convolution its CPU input in NCHW (CUDA inputs pass unchanged)."""
    x = args[0]
    if x.device.type == "cpu":
        return (x.contiguous(), *args[1:])
    return args


def to_channels_last(module: nn.Module) -> nn.Module:
    """Store ``module``'s 4-D parameters and buffers channels_last, except convolutions hit by the oneDNN bug.

    Args:
        module: any network; converted in place (as ``nn.Module.to`` does) and returned.

    Returns:
        ``module``. Its affected convolutions (:func:`affected_by_onednn_1x1_bug`) keep NCHW weights and get a forward
        pre-hook that makes their CPU input contiguous, so their output, and the gradients through them, are NCHW too.
    """
    module.to(memory_format=torch.channels_last)
    for layer in module.modules():
        if affected_by_onednn_1x1_bug(layer):
            layer.to(memory_format=torch.contiguous_format)
            layer.register_forward_pre_hook(_contiguous_cpu_input)
    return module
