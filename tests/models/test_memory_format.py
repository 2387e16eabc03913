"""channels_last training (:mod:`d3epth.models.memory_format`): the layout changes, the gradients do not.

The oneDNN bug the module works around (a strided 1x1 convolution with < 16 input channels, NHWC, weight gradient)
corrupts the heap on AVX-512 CPUs and, per the upstream report, returns wrong weight gradients on some AVX2 ones; the
gradient check therefore runs in a child process, so that a crash fails the test instead of ending the session.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import timm
import torch
from torch import nn

from d3epth.models.memory_format import affected_by_onednn_1x1_bug, to_channels_last
from tests.helpers import REPO


def test_only_strided_1x1_convolutions_with_few_input_channels_are_affected() -> None:
    assert affected_by_onednn_1x1_bug(nn.Conv2d(8, 48, 1, stride=2))
    assert affected_by_onednn_1x1_bug(nn.Conv2d(48, 48, 1, stride=2, groups=48))  # 1 input channel per group
    assert not affected_by_onednn_1x1_bug(nn.Conv2d(16, 48, 1, stride=2))  # a whole 16-channel block
    assert not affected_by_onednn_1x1_bug(nn.Conv2d(8, 48, 1, stride=1))  # no strided reduction workspace
    assert not affected_by_onednn_1x1_bug(nn.Conv2d(8, 48, 3, stride=2))
    assert not affected_by_onednn_1x1_bug(nn.Linear(8, 48))


def test_fastvit_stem_is_kept_nchw_and_the_rest_converted() -> None:
    """timm's fastvit_t8 (a Pareto-front student) has the affected layer in its stem: 3 -> 48 channels, stride 2."""
    backbone = to_channels_last(timm.create_model("fastvit_t8", features_only=True))
    kept = [name for name, module in backbone.named_modules() if affected_by_onednn_1x1_bug(module)]
    assert "stem_0.conv_scale.conv" in kept
    for module in backbone.modules():
        # A weight with one input channel or a 1x1 kernel is both NCHW- and NHWC-contiguous: check the others.
        if isinstance(module, nn.Conv2d) and module.kernel_size != (1, 1) and module.weight.shape[1] > 1:
            assert module.weight.is_contiguous(memory_format=torch.channels_last) and not module.weight.is_contiguous()
    for name in kept:
        weight = backbone.get_submodule(name).weight
        assert weight.is_contiguous(), name


_CHILD = textwrap.dedent(
    """
    import torch
    from torch import nn
    from d3epth.models.memory_format import to_channels_last

    torch.set_num_threads(1)
    torch.manual_seed(0)

    def network():
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GELU(), nn.Conv2d(8, 48, 1, stride=2), nn.GELU(),
                             nn.Conv2d(48, 16, 3, padding=1))

    reference = network()
    converted = to_channels_last(network())
    converted.load_state_dict(reference.state_dict())
    for step in range(20):  # the unpatched kernel died within 1-20 passes on an AVX-512 Xeon
        x = torch.randn(4, 3, 96, 128)
        grads = []
        for net in (reference, converted):
            net.zero_grad()
            net(x).square().mean().backward()
            grads.append([p.grad for p in net.parameters()])
        for expected, got in zip(*grads):
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    assert converted[4].weight.grad.is_contiguous(memory_format=torch.channels_last)
    print("ok")
    """
)


def test_channels_last_training_matches_nchw_gradients_through_an_affected_layer() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _CHILD], cwd=REPO, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
