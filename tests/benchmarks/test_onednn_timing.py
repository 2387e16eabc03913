"""benchmarks/onednn_timing.py: parsing oneDNN's verbose lines and the FLOPs of a convolution descriptor."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.tool_loader import BENCHMARKS, load_benchmark


@pytest.fixture
def timing(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return load_benchmark("onednn_timing")


def test_convolution_flops_from_descriptors(timing) -> None:
    # Depthwise 7x7, 48 channels, 120x160 -> 120x160: 2 * 48 * 120 * 160 * 49 FLOPs.
    assert timing.convolution_flops("g48mb1_ic48oc48_ih120oh120kh7sh1dh0ph3_iw160ow160kw7sw1dw0pw3") == 90_316_800
    # Dense 3x3 stride 2, 3 -> 48 channels, batch 2, 480x640 -> 240x320: 2 * 2 * 48 * 240 * 320 * 27.
    assert timing.convolution_flops("mb2_ic3oc48_ih480oh240kh3sh2dh0ph1_iw640ow320kw3sw2dw0pw1") == 398_131_200


def test_captured_primitives_are_the_convolutions_that_ran(timing) -> None:
    """Two bf16 convolutions of known size (bf16: PyTorch sends them to oneDNN), captured with their FLOPs."""
    cast = {"dtype": torch.bfloat16, "memory_format": torch.channels_last}
    x = torch.randn(1, 8, 20, 24).to(**cast)
    dense = torch.randn(16, 8, 3, 3).to(**cast)
    depthwise = torch.randn(8, 1, 5, 5).to(**cast)

    def run() -> object:
        return F.conv2d(x, dense, padding=1), F.conv2d(x, depthwise, padding=2, groups=8)

    primitives, wall_ms = timing.primitive_times(run, calls=2)
    convolutions = [p for p in primitives if p.kind == "convolution"]
    assert len(convolutions) == 4
    assert 0 < sum(p.ms for p in convolutions) / 2 <= wall_ms
    groups = timing.group_primitives(primitives, calls=2)
    assert groups["other convolution"]["count"] == 1 and groups["depthwise convolution"]["count"] == 1
    assert groups["other convolution"]["gflop"] * 1e9 == pytest.approx(2 * 16 * 20 * 24 * 8 * 9)
    assert groups["depthwise convolution"]["gflop"] * 1e9 == pytest.approx(2 * 8 * 20 * 24 * 25)
