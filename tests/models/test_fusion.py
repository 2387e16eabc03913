"""Conv + BatchNorm folding (d3epth.models.fusion) on the timm backbone families the students use."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from d3epth.models.depth_model import StudentDepthModel
from d3epth.models.fusion import fuse_conv_bn, has_batch_norm
from d3epth.models.student import DepthStudent


def randomise_batch_norms(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial running statistics and affine parameters, so a wrong fold cannot pass by accident."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
            module.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=generator) * 0.4 - 0.2)


def student(backbone: str, norm: str = "group") -> StudentDepthModel:
    torch.manual_seed(0)
    model = StudentDepthModel(DepthStudent(backbone, heads=("depth",), decoder_channels=16, norm=norm)).eval()
    randomise_batch_norms(model)
    return model


@pytest.mark.parametrize(
    ("backbone", "norm"),
    [("efficientnet_lite0", "batch"), ("resnet18", "group"), ("mobilenetv3_small_050", "group")],
)
def test_fusion_keeps_outputs_and_leaves_no_batch_norm(backbone: str, norm: str) -> None:
    model = student(backbone, norm)
    batch_norms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    image = torch.rand(2, 3, 64, 96) * 2 - 1
    with torch.no_grad():
        expected = model(image)
    fused = copy.deepcopy(model)
    pairs = fuse_conv_bn(fused, lambda m: m(image[:1]))
    assert len(pairs) == batch_norms > 0  # every BatchNorm sits right after a convolution in these families
    assert not has_batch_norm(fused)
    with torch.no_grad():
        torch.testing.assert_close(fused(image), expected, rtol=1e-4, atol=1e-5)


def test_convnext_has_nothing_to_fuse() -> None:
    """ConvNeXt normalises with LayerNorm (statistics of each input): no BatchNorm, nothing folded, same outputs."""
    model = student("convnext_atto")
    image = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        expected = model(image)
    assert not has_batch_norm(model)
    assert fuse_conv_bn(model, lambda m: m(image)) == []
    with torch.no_grad():
        torch.testing.assert_close(model(image), expected, rtol=0, atol=0)


def test_only_a_batch_norm_that_alone_reads_the_conv_output_is_fused() -> None:
    class Blocks(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.act, self.bn1 = nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4)  # ReLU in between
            self.conv2, self.bn2 = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)  # + a residual reading conv2's output
            self.conv3, self.bn3 = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)  # a plain pair

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv2(self.bn1(self.act(self.conv1(x))))
            return self.bn3(self.conv3(self.bn2(y) + y))

    model = Blocks().eval()
    randomise_batch_norms(model)
    image = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        expected = model(image)
    assert fuse_conv_bn(model, lambda m: m(image)) == [("conv3", "bn3")]
    assert isinstance(model.bn1, nn.BatchNorm2d) and isinstance(model.bn2, nn.BatchNorm2d)
    with torch.no_grad():
        torch.testing.assert_close(model(image), expected, rtol=1e-5, atol=1e-6)


def test_default_example_finds_the_same_pairs_as_an_explicit_run() -> None:
    """Without ``run``, the student is run on a 1x3x(2m)x(2m) zero image: the same pairs, the same fused outputs."""
    model = student("resnet18", "batch")
    side = 2 * model.size_multiple
    explicit = copy.deepcopy(model)
    expected_pairs = fuse_conv_bn(explicit, lambda m: m(torch.zeros(1, 3, side, side)))
    assert len(expected_pairs) > 20
    assert fuse_conv_bn(model) == expected_pairs
    image = torch.rand(1, 3, 64, 96) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(model(image), explicit(image), rtol=0, atol=0)
