"""A x2 bilinear upsampling followed by a 3x3 convolution, computed as one sub-pixel convolution at the low resolution.

The depth head (:class:`~d3epth.models.decoder.DepthHead`) alternates 3x3 convolutions and x2 bilinear
upsamplings; at 480x640 the upsampled maps (64 channels at 1/2, 32 at full resolution) are the largest tensors of the
whole student, and writing them and reading them back is pure memory traffic. Both steps are linear, so their
composition is one linear map of the low-resolution input, and it has a sub-pixel form (Shi et al., "Real-Time
Single Image and Video Super-Resolution Using an Efficient Sub-Pixel Convolutional Neural Network", CVPR 2016):
output pixel ``(2i + a, 2j + b)`` is a 3x3 convolution of the low-resolution map around ``(i, j)`` with a kernel that
depends on the phase ``(a, b)``. So a 3x3 convolution to ``4 * out_channels`` channels at the low resolution
followed by ``pixel_shuffle(2)`` gives the same values with the same FLOPs, without the upsampled map. Measured
with the ``fastvit_t8`` + 128-channel student at 480x640 on 2 AMD EPYC cores, same weights, side by side
(``benchmarks/inference_speed.py``, two runs, best-of): bf16 42.3 / 54.3 ms vs 52.2 / 60.4 ms with the maps
materialised, fp32 65.0 / 77.8 vs 73.7 / 94.0 ms.

Derivation, one axis: ``align_corners=False`` bilinear x2 with clamped borders gives
``u[2i] = x[i-1]/4 + 3 x[i]/4`` and ``u[2i+1] = 3 x[i]/4 + x[i+1]/4`` (``x[-1] = x[0]``, ``x[n] = x[n-1]``). A 3-tap
filter ``w`` over ``u`` at ``2i + a`` reads ``u[2i+a-1 .. 2i+a+1]``, i.e. ``x[i-1 .. i+1]`` through the 3x3 matrix
``PHASE_TAPS[a]`` (rows: the tap ``k`` of ``w``, columns: the offsets -1, 0, 1 in ``x``). In 2-D the kernel of phase
``(a, b)`` is ``PHASE_TAPS[a] @ w @ PHASE_TAPS[b]^T``. The identity is exact when the convolution pads ``u`` by
replication: at a border the bilinear extension of ``u`` equals its edge value (``u[-1] = x[0] = u[0]``), which is what
padding ``x`` by replication gives in the low-resolution form. (Zero padding of ``u`` would differ on the outermost
output rows and columns.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PHASE_TAPS", "BilinearUpsampleConv2d", "subpixel_weight"]

#: ``PHASE_TAPS[a][k][m]``: weight of ``x[i + m - 1]`` in ``u[2i + a + k - 1]`` (bilinear x2, ``align_corners=False``).
PHASE_TAPS = torch.tensor(
    [
        [[0.75, 0.25, 0.0], [0.25, 0.75, 0.0], [0.0, 0.75, 0.25]],  # a = 0: u[2i-1], u[2i], u[2i+1]
        [[0.25, 0.75, 0.0], [0.0, 0.75, 0.25], [0.0, 0.25, 0.75]],  # a = 1: u[2i], u[2i+1], u[2i+2]
    ]
)


def subpixel_weight(weight: torch.Tensor) -> torch.Tensor:
    """Sub-pixel kernels of ``conv3x3(upsample_x2(x))``.

    Args:
        weight: the convolution's weight [O,C,3,3] (any float dtype, differentiable).

    Returns:
        [4*O,C,3,3], output channel ``4*o + 2*a + b`` for phase ``(a, b)`` of channel ``o``: the channel order
        ``pixel_shuffle(2)`` expects.
    """
    taps = PHASE_TAPS.to(weight)
    kernels = torch.einsum("akm,bln,ockl->oabcmn", taps, taps, weight)
    return kernels.reshape(4 * weight.shape[0], weight.shape[1], 3, 3)


class BilinearUpsampleConv2d(nn.Conv2d):
    """``conv3x3(interpolate(x, scale_factor=2, mode="bilinear"))``, computed without the upsampled map.

    An ``nn.Conv2d`` (3x3, stride 1, padding 1 by replication) whose input is the map *before* the x2 upsampling: its
    parameters, state-dict keys and BatchNorm folding are those of the plain convolution, only the input is half the
    size.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        bias: add a learnable bias.
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, 3, padding=1, bias=bias, padding_mode="replicate")

    # Left to eager under torch.compile: Inductor's dynamic-shape code for the channels_last pad + pixel_shuffle was
    # slow (fastvit_t8/w128 bf16 at 480x640, 2-core EPYC: compiled 74.0 ms vs eager 46.2; with this, 43.7 vs 43.4).
    @torch.compiler.disable
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B,C,h,w]`` -> ``[B,O,2h,2w]``, equal (up to rounding) to the convolution of the upsampled ``x``."""
        bias = None if self.bias is None else self.bias.repeat_interleave(4)
        padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
        phases = F.conv2d(padded, subpixel_weight(self.weight), bias)  # [B,4*O,h,w]
        if self.out_channels == 1 and phases.is_contiguous(memory_format=torch.channels_last):
            # pixel_shuffle by hand for one output channel: channels_last phases are a contiguous [B,h,w,2,2] array,
            # and ATen's channels_last pixel_shuffle is slow for it (bf16 at [1,4,240,320], 2 EPYC cores: 0.70 ms,
            # this 0.18 ms).
            batch, _, height, width = phases.shape
            rows = phases.permute(0, 2, 3, 1).view(batch, height, width, 2, 2).transpose(2, 3)
            return rows.reshape(batch, 1, 2 * height, 2 * width)
        return F.pixel_shuffle(phases, 2)
