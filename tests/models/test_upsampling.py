"""The sub-pixel form of ``conv3x3(bilinear_x2(x))`` (d3epth.models.upsampling) and its use in the depth head.

The reference is the two-step computation itself (``F.interpolate`` then the convolution), in float64.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from d3epth.models.decoder import DepthHead
from d3epth.models.upsampling import subpixel_upsample_conv, subpixel_weight


def reference(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    return conv(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))


def replicate_conv(in_channels: int, out_channels: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, padding=1, padding_mode="replicate", bias=bias).double()


@pytest.mark.parametrize(("height", "width"), [(1, 1), (2, 3), (7, 11), (16, 16)])
@pytest.mark.parametrize("bias", [True, False])
def test_subpixel_form_equals_upsampling_then_convolution(height: int, width: int, bias: bool) -> None:
    torch.manual_seed(0)
    conv = replicate_conv(5, 3, bias)
    x = torch.randn(2, 5, height, width, dtype=torch.float64)
    out = subpixel_upsample_conv(x, conv)
    assert out.shape == (2, 3, 2 * height, 2 * width)
    torch.testing.assert_close(out, reference(x, conv), atol=1e-12, rtol=0)


def test_gradients_equal_those_of_the_two_step_form() -> None:
    torch.manual_seed(1)
    conv = replicate_conv(4, 2)
    x = torch.randn(1, 4, 6, 9, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(1, 2, 12, 18, dtype=torch.float64)
    grads = []
    for fn in (subpixel_upsample_conv, reference):
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


def test_zero_padded_convolutions_are_refused() -> None:
    with pytest.raises(ValueError, match="replicate"):
        subpixel_upsample_conv(torch.randn(1, 2, 4, 4), nn.Conv2d(2, 1, 3, padding=1))


@pytest.mark.parametrize("in_stride", [2, 4, 8])
def test_depth_head_folds_its_last_upsampling_without_changing_the_output(in_stride: int) -> None:
    torch.manual_seed(2)
    head = DepthHead(16, in_stride).double().eval()
    assert head.fold_last_upsample
    x = torch.randn(1, 16, 40 // in_stride, 56 // in_stride, dtype=torch.float64)
    folded = head(x, (40, 56))
    head.fold_last_upsample = False  # the two-step path: resize to full resolution, then the conv
    torch.testing.assert_close(folded, head(x, (40, 56)), atol=1e-12, rtol=0)


def test_depth_head_keeps_two_steps_where_the_last_upsampling_is_not_x2_or_a_skip_follows_it() -> None:
    assert not DepthHead(16, 3.5).fold_last_upsample  # 1.75 -> 1
    assert not DepthHead(16, 1).fold_last_upsample  # no upsampling at all
    assert not DepthHead(16, 2, skip_channels={1.0: 3}).fold_last_upsample
