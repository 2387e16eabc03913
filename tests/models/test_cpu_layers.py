"""The CPU inference forms of GELU and of depthwise convolutions with a channel multiplier (d3epth.models.cpu_layers).

References: ``torch.nn.functional.gelu`` / ``conv2d`` on the same tensors, in float64 where exactness is checked.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from d3epth.inference.acceleration import prepare_for_inference
from d3epth.models.cpu_layers import NHWCGELU, ChannelMultiplierConv2d, use_fast_cpu_layers
from d3epth.models.depth_model import StudentDepthModel
from d3epth.models.student import DepthStudent

CHANNELS_LAST = torch.channels_last


def is_channels_last(x: torch.Tensor) -> bool:
    return x.is_contiguous(memory_format=CHANNELS_LAST) and not x.is_contiguous()


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("layout", ["channels_last", "contiguous", "3-d"])
def test_nhwc_gelu_is_gelu_and_keeps_the_layout(approximate: str, layout: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64) * 3
    if layout == "channels_last":
        x = x.contiguous(memory_format=CHANNELS_LAST)
    elif layout == "3-d":
        x = x[0]
    out = NHWCGELU(approximate)(x)
    torch.testing.assert_close(out, F.gelu(x, approximate=approximate), atol=1e-12, rtol=0)
    assert is_channels_last(out) == (layout == "channels_last")


def test_nhwc_gelu_in_bf16_is_as_close_to_float64_as_aten_gelu() -> None:
    """Both kernels (oneDNN's on the NHWC view, ATen's on channels_last) are within rounding of the exact GELU."""
    torch.manual_seed(1)
    x = (torch.randn(1, 32, 24, 40) * 3).to(torch.bfloat16).contiguous(memory_format=CHANNELS_LAST)
    exact = F.gelu(x.double())
    ours = (NHWCGELU()(x).double() - exact).abs().max()
    aten = (F.gelu(x).double() - exact).abs().max()
    # bf16 keeps 8 significant bits: at |GELU| <= 16 the spacing is <= 2**-3, so rounding costs <= 2**-4.
    assert ours <= 2**-4 and aten <= 2**-4
    assert ours <= 2 * aten


@pytest.mark.parametrize("multiplier", [2, 3])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("memory_format", [CHANNELS_LAST, torch.contiguous_format])
def test_channel_multiplier_conv_equals_the_grouped_conv(
    multiplier: int, bias: bool, memory_format: torch.memory_format
) -> None:
    torch.manual_seed(2)
    channels = 4
    plain = nn.Conv2d(channels, multiplier * channels, 7, stride=2, padding=3, groups=channels, bias=bias).double()
    plain = plain.to(memory_format=memory_format)
    x = torch.randn(2, channels, 13, 18, dtype=torch.float64).contiguous(memory_format=memory_format)
    model = nn.Sequential(plain)
    assert use_fast_cpu_layers(model) == 1
    fast = model[0]
    assert isinstance(fast, ChannelMultiplierConv2d) and fast.multiplier == multiplier
    assert fast.weight is plain.weight and fast.bias is plain.bias  # the same parameters, not copies
    out = fast(x)
    torch.testing.assert_close(out, F.conv2d(x, plain.weight, plain.bias, 2, 3, 1, channels), atol=1e-12, rtol=0)
    assert is_channels_last(out) == (memory_format == CHANNELS_LAST)


def test_only_plain_gelus_and_multiplier_convs_are_swapped() -> None:
    class CustomConv(nn.Conv2d):
        pass

    model = nn.Sequential(
        nn.Conv2d(4, 8, 3, groups=4),  # multiplier 2: swapped
        nn.GELU(),  # swapped
        nn.Conv2d(8, 8, 3, groups=8),  # plain depthwise: kept
        nn.Conv2d(8, 16, 3, groups=2),  # grouped, not depthwise: kept
        CustomConv(16, 32, 3, groups=16),  # a subclass may compute something else: kept
        nn.ReLU(),
    )
    keys = list(model.state_dict())
    assert use_fast_cpu_layers(model) == 2
    assert [type(m).__name__ for m in model] == [
        "ChannelMultiplierConv2d",
        "NHWCGELU",
        "Conv2d",
        "Conv2d",
        "CustomConv",
        "ReLU",
    ]
    assert list(model.state_dict()) == keys


def test_prepare_for_inference_swaps_them_into_fastvit_and_keeps_its_outputs() -> None:
    torch.manual_seed(3)
    model = StudentDepthModel(DepthStudent("fastvit_t8", heads=("depth",), decoder_channels=16)).eval()
    image = torch.rand(1, 3, 64, 96) * 2 - 1
    with torch.no_grad():
        expected = model(image)
        prepared = prepare_for_inference(copy.deepcopy(model), "fp32")
        output = prepared(image)
    kinds = [type(m) for m in prepared.modules()]
    # fastvit_t8: GELU after every conv block and MLP; its three patch embeddings double the channels depthwise.
    assert kinds.count(ChannelMultiplierConv2d) == 3 and NHWCGELU in kinds and nn.GELU not in kinds
    torch.testing.assert_close(output, expected, rtol=1e-4, atol=1e-5)


def test_prepare_for_inference_can_keep_the_plain_layers() -> None:
    """``cpu_layers=False`` (the benchmark's side-by-side arm) leaves GELU and the grouped convolutions as they are."""
    model = StudentDepthModel(DepthStudent("fastvit_t8", heads=("depth",), decoder_channels=16)).eval()
    kinds = {type(m) for m in prepare_for_inference(model, "fp32", cpu_layers=False).modules()}
    assert nn.GELU in kinds and NHWCGELU not in kinds and ChannelMultiplierConv2d not in kinds
