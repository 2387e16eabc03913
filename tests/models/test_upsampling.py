"""The sub-pixel form of ``conv3x3(bilinear_x2(x))`` (d3epth.models.upsampling) and its use in the depth head.

The reference is the two-step computation itself (``F.interpolate`` then the convolution), in float64.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from d3epth.models.decoder import DepthHead
from d3epth.models.upsampling import BilinearUpsampleConv2d, subpixel_weight


def replicate_conv(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), conv.weight, conv.bias)


def reference(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """The two-step form: upsample, then the convolution (replicate padding 1) with the module's own parameters."""
    return replicate_conv(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False), conv)


@pytest.mark.parametrize(("height", "width"), [(1, 1), (2, 3), (7, 11), (16, 16)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("out_channels", [3, 1])  # one output channel: the hand-written pixel shuffle
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_subpixel_form_equals_upsampling_then_convolution(
    height: int, width: int, bias: bool, out_channels: int, memory_format: torch.memory_format
) -> None:
    torch.manual_seed(0)
    conv = BilinearUpsampleConv2d(5, out_channels, bias).double().to(memory_format=memory_format)
    x = torch.randn(2, 5, height, width, dtype=torch.float64).contiguous(memory_format=memory_format)
    out = conv(x)
    assert out.shape == (2, out_channels, 2 * height, 2 * width)
    torch.testing.assert_close(out, reference(x, conv), atol=1e-12, rtol=0)


def test_gradients_equal_those_of_the_two_step_form() -> None:
    torch.manual_seed(1)
    conv = BilinearUpsampleConv2d(4, 2).double()
    x = torch.randn(1, 4, 6, 9, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(1, 2, 12, 18, dtype=torch.float64)
    grads = []
    for fn in (lambda x, conv: conv(x), reference):
        conv.zero_grad()
        x.grad = None
        (fn(x, conv) * upstream).sum().backward()
        grads.append((x.grad.clone(), conv.weight.grad.clone(), conv.bias.grad.clone()))
    for ours, theirs in zip(*grads, strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-12, rtol=0)


def test_an_identity_kernel_reproduces_bilinear_upsampling() -> None:
    """A centre-tap kernel makes the convolution the identity: the four phase kernels are the bilinear weights."""
    weight = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
    weight[0, 0, 1, 1] = 1
    phases = subpixel_weight(weight)[:, 0]
    # Phase (0, 0) of output (2i, 2j) weighs x[i-1, j-1], x[i-1, j], x[i, j-1], x[i, j] by 1/16, 3/16, 3/16, 9/16.
    expected = torch.tensor([[1, 3, 0], [3, 9, 0], [0, 0, 0]], dtype=torch.float64) / 16
    torch.testing.assert_close(phases[0], expected)
    torch.testing.assert_close(phases[3], expected.flip(0, 1))  # phase (1, 1): x[i..i+1, j..j+1]
    torch.testing.assert_close(phases.sum((1, 2)), torch.ones(4, dtype=torch.float64))


def two_step_head(head: DepthHead, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The head with every upsampling materialised: conv (plain, replicate padding), norm, ReLU, F.interpolate."""
    for stage, stride in zip(head.stages, head.stage_strides, strict=True):
        x = stage[1:](replicate_conv(x, stage[0]))
        x = F.interpolate(x, size=(int(size[0] / stride), int(size[1] / stride)), mode="bilinear")
    return replicate_conv(x, head.out)


@pytest.mark.parametrize("in_stride", [2, 4, 8])
def test_depth_head_folds_every_x2_upsampling_without_changing_the_output(in_stride: int) -> None:
    torch.manual_seed(2)
    head = DepthHead(32, in_stride).double().eval()
    convs = [stage[0] for stage in head.stages[1:]] + [head.out]
    assert all(isinstance(conv, BilinearUpsampleConv2d) for conv in convs) and head.folded == (True,) * len(convs)
    x = torch.randn(1, 32, 80 // in_stride, 112 // in_stride, dtype=torch.float64)
    torch.testing.assert_close(head(x, (80, 112)), two_step_head(head, x, (80, 112)), atol=1e-12, rtol=0)


def test_depth_head_keeps_two_steps_where_an_upsampling_is_not_x2_or_a_skip_follows_it() -> None:
    assert DepthHead(16, 3.5).folded == (True, False)  # 3.5 -> 1.75 (x2) -> 1 (x1.75)
    assert DepthHead(16, 1).folded == ()  # no upsampling at all
    head = DepthHead(16, 4, skip_channels={2.0: 3})
    assert head.folded == (False, True)  # the skip is added at 1/2, after that upsampling
    assert not isinstance(head.stages[1][0], BilinearUpsampleConv2d) and isinstance(head.out, BilinearUpsampleConv2d)
    x, skip = torch.randn(1, 16, 10, 14), torch.randn(1, 3, 20, 28)
    assert head(x, (40, 56), {2.0: skip}).shape == (1, 1, 40, 56)
