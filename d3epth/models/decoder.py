"""Light FPN decoder and output heads of the D³epth student.

The student (:class:`d3epth.models.student.DepthStudent`) is a timm backbone plus this decoder. The decoder turns the
backbone's feature pyramid (a list of [B,C_i,H/s_i,W/s_i] maps) into one pyramid of ``channels``-wide maps,
from which three heads read:

* :class:`LatentHead`: the 4-channel depth latent of the teacher's VAE at 1/8 of the input resolution (stage 1 of
  D³epth distils the teacher in this latent space). Linear output: the VAE latent is unbounded.
* :class:`FeatureAdapters`: 1x1 convolutions that map decoder maps to the channel widths and strides of chosen
  teacher UNet features (optional feature distillation in stage 1).
* :class:`DepthHead`: a light upsampling head that predicts depth at full input resolution (stage 2, "light" pixel
  decoder).

Design choice: FPN rather than DPT. DPT's reassemble/fusion stages (residual conv units at every scale, transposed
convolutions) were designed to give a single-stride ViT a multi-scale pyramid; the default student backbones are
convolutional and already hierarchical, for which a feature pyramid network (Lin et al., CVPR 2017) is the cheapest
decoder that still gives every scale high-level context: one 1x1 lateral conv and one 3x3 smoothing conv per level,
top-down additions in between. Single-stride (ViT) pyramids are still supported: their levels are first resampled to
strides ``s/4, s/2, s, 2s`` (the DPT "reassemble" geometry, done with parameter-free bilinear resampling after the
lateral projection), then go through the same FPN. All resampling uses ``interpolate(size=...)`` to exact target
sizes, so any stride ratio works.

Sizes: every map here is computed over the *padded* input extent (the student pads the image to a multiple of all
strides involved, see :class:`~d3epth.models.student.DepthStudent`), so a map at stride ``s`` has exactly
``H_pad / s`` rows; the student crops the results back to ``ceil(H / s)``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import nn

from d3epth.models.upsampling import BilinearUpsampleConv2d

__all__ = [
    "DepthHead",
    "FPNDecoder",
    "FeatureAdapters",
    "LatentHead",
    "conv_norm_act",
    "decoder_strides",
    "nearest_level",
    "resize_to",
    "scaled_size",
]

_NORMS = ("group", "batch", "none")


def resize_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a feature map to an exact spatial size (bilinear, ``align_corners=False``).

    ``align_corners=False`` keeps pixel *areas* aligned: cell ``i`` at stride ``s`` covers ``[s*i, s*(i+1))`` at any
    scale, which is what the padded-extent bookkeeping of the student relies on.

    Args:
        x: feature map [B,C,h,w].
        size: target ``(height, width)``.

    Returns:
        [B,C,size[0],size[1]]; ``x`` itself when the size already matches.
    """
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def scaled_size(size: int, stride: float) -> int:
    """``size / stride`` in integer arithmetic, for a stride (possibly fractional, e.g. 3.5) that divides ``size``.

    Integer arithmetic (no ``round``) keeps the shape computation traceable for ONNX export.
    """
    fraction = Fraction(stride).limit_denominator(64)
    return size * fraction.denominator // fraction.numerator


def _norm(norm: str, channels: int) -> nn.Module:
    if norm == "group":
        # 32 groups as in Wu & He (2018), fewer for narrow (tiny test) decoders; the group count must divide channels.
        groups = math.gcd(32, channels)
        return nn.GroupNorm(groups, channels)
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"norm must be one of {_NORMS}, got {norm!r}")


def conv_norm_act(
    in_channels: int,
    out_channels: int,
    kernel_size: int = 3,
    norm: str = "group",
    padding_mode: str = "zeros",
    upsample: bool = False,
) -> nn.Sequential:
    """``Conv2d -> norm -> ReLU`` with "same" padding; the conv has a bias only when there is no norm after it.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: odd kernel size.
        norm: ``"group"`` (GroupNorm, default: batch-size independent, the teacher-matched recipes train with
            micro-batches of 2), ``"batch"`` or ``"none"``.
        padding_mode: ``nn.Conv2d``'s (``"zeros"``, ``"replicate"``, ...).
        upsample: the conv first upsamples its input x2 bilinearly
            (:class:`~d3epth.models.upsampling.BilinearUpsampleConv2d`; 3x3 with replicate padding only).

    Returns:
        The block as an ``nn.Sequential``.
    """
    bias = norm == "none"
    if upsample:
        if (kernel_size, padding_mode) != (3, "replicate"):
            raise ValueError(f"an upsampling conv is 3x3 with replicate padding, got {kernel_size}, {padding_mode!r}")
        conv: nn.Conv2d = BilinearUpsampleConv2d(in_channels, out_channels, bias=bias)
    else:
        padding = kernel_size // 2
        conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, bias=bias, padding_mode=padding_mode)
    return nn.Sequential(conv, _norm(norm, out_channels), nn.ReLU(inplace=True))


def decoder_strides(strides: Sequence[float]) -> list[float]:
    """Strides the decoder assigns to the input levels.

    A hierarchical pyramid (strictly increasing strides) keeps its strides. A pyramid with repeated strides (ViT
    blocks, all at the patch stride ``s``) is spread DPT-style: level ``i`` of ``n`` gets ``s * 2**(i - k)`` with
    ``k = max(n - 2, 0)``, i.e. ``s/4, s/2, s, 2s`` for four levels.
    """
    if all(b > a for a, b in itertools.pairwise(strides)):
        return [float(s) for s in strides]
    n = len(strides)
    k = max(n - 2, 0)
    return [float(strides[i]) * 2.0 ** (i - k) for i in range(n)]


def nearest_level(strides: Sequence[float], stride: float) -> int:
    """Index of the level of ``strides`` closest to ``stride`` (in log scale; ties go to the finer)."""
    return min(range(len(strides)), key=lambda i: (abs(math.log2(strides[i] / stride)), strides[i]))


class FPNDecoder(nn.Module):
    """Feature pyramid network over a timm ``features_only`` pyramid.

    ``p_top = lateral_top(c_top)``, ``p_i = lateral_i(c_i) + resize(p_{i+1})``, ``out_i = smooth_i(p_i)`` where
    ``lateral_i`` is a 1x1 conv to ``channels`` and ``smooth_i`` a 3x3 conv-norm-ReLU.

    Only what the heads read is built: the smoothing convs of ``levels`` and the laterals from the finest of them up.
    A module no output depends on would never get a gradient, and DDP then needs ``find_unused_parameters`` (a
    graph traversal every step) or fails. ``lateral`` and ``smooth`` are keyed by the level index, so a level's
    weights have the same state-dict keys (``smooth.<i>.…``) in every configuration.

    Args:
        in_channels: channels of each backbone level, finest first.
        in_strides: reduction of each backbone level w.r.t. the input, finest first.
        channels: width of every decoder level.
        norm: normalisation in the smoothing convs (see :func:`conv_norm_act`).
        levels: the levels whose outputs are read (default: all).

    Attributes:
        strides: the decoder's stride per level (after the ViT reassembly, if any), finest first; all levels, built
            or not.
        levels: the built output levels, ascending.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        in_strides: Sequence[float],
        channels: int,
        norm: str = "group",
        levels: Iterable[int] | None = None,
    ) -> None:
        super().__init__()
        if len(in_channels) == 0 or len(in_channels) != len(in_strides):
            raise ValueError(
                f"in_channels and in_strides must be non-empty and of equal length, got {list(in_channels)} "
                f"and {list(in_strides)}"
            )
        if channels <= 0:
            raise ValueError(f"decoder channels must be positive, got {channels}")
        n = len(in_channels)
        self.levels: tuple[int, ...] = tuple(sorted(set(range(n) if levels is None else levels)))
        if not self.levels or not set(self.levels) <= set(range(n)):
            raise ValueError(f"decoder levels must be a non-empty subset of 0..{n - 1}, got {list(self.levels)}")
        self.channels = channels
        self.num_levels = n
        self.strides: list[float] = decoder_strides(in_strides)
        finest = self.levels[0]
        self.lateral = nn.ModuleDict({str(i): nn.Conv2d(in_channels[i], channels, 1) for i in range(finest, n)})
        self.smooth = nn.ModuleDict({str(i): conv_norm_act(channels, channels, 3, norm) for i in self.levels})
        self.register_load_state_dict_pre_hook(_drop_unbuilt_levels)

    def level_for_stride(self, stride: float) -> int:
        """Index of the decoder level whose stride is closest to ``stride`` (in log scale; ties go to the finer)."""
        return nearest_level(self.strides, stride)

    def forward(
        self, features: Sequence[torch.Tensor], padded_size: tuple[int, int], levels: Iterable[int] | None = None
    ) -> list[torch.Tensor | None]:
        """Run the top-down pathway.

        Args:
            features: backbone maps [B,C_i,H_pad/s_i,W_pad/s_i], finest first.
            padded_size: ``(H_pad, W_pad)`` of the (padded) input image; level ``i`` is produced at
                ``(H_pad/strides[i], W_pad/strides[i])``.
            levels: decoder levels whose outputs are needed (default: all built ones), a subset of :attr:`levels`.
                The top-down path stops at the finest needed level and smoothing convs run only for the needed levels.

        Returns:
            One entry per level: [B,channels,H_pad/strides[i],W_pad/strides[i]], or ``None`` for levels that
            were not requested.

        Raises:
            ValueError: wrong number of feature maps, or a requested level that was not built.
        """
        if len(features) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} feature maps, got {len(features)}")
        wanted = set(self.levels if levels is None else levels)
        if not wanted <= set(self.levels):
            raise ValueError(f"decoder levels {sorted(wanted)} requested, but only {list(self.levels)} were built")
        outputs: list[torch.Tensor | None] = [None] * len(features)
        if not wanted:
            return outputs
        finest = min(wanted)
        hp, wp = padded_size
        top_down: torch.Tensor | None = None
        for i in range(len(features) - 1, finest - 1, -1):
            size = (scaled_size(hp, self.strides[i]), scaled_size(wp, self.strides[i]))
            lateral = resize_to(self.lateral[str(i)](features[i]), size)
            top_down = lateral if top_down is None else lateral + resize_to(top_down, size)
            if i in wanted:
                outputs[i] = self.smooth[str(i)](top_down)
        return outputs


def _drop_unbuilt_levels(module: FPNDecoder, state_dict: dict[str, torch.Tensor], prefix: str, *args: object) -> None:
    """Load-state-dict pre-hook: drop the weights of levels this decoder does not build.

    Students written before only-what-is-read was built (see :class:`FPNDecoder`) hold every level; the extra ones
    were never read by a head, hence never trained, so dropping them loses nothing and their checkpoints still load
    strictly.
    """
    built = {"lateral": module.lateral, "smooth": module.smooth}
    for key in [k for k in state_dict if k.startswith(prefix)]:
        parts = key[len(prefix) :].split(".")
        if len(parts) > 2 and parts[0] in built and parts[1].isdigit() and parts[1] not in built[parts[0]]:
            del state_dict[key]


class LatentHead(nn.Module):
    """Predict the teacher's 4-channel VAE depth latent from a decoder map.

    ``conv3x3-norm-ReLU -> conv1x1``; no output activation (the SD VAE latent, scaled by 0.18215, is unbounded).

    Args:
        in_channels: decoder width.
        latent_channels: channels of the latent (4 for the SD VAE).
        norm: normalisation in the hidden conv.
    """

    def __init__(self, in_channels: int, latent_channels: int = 4, norm: str = "group") -> None:
        super().__init__()
        self.block = conv_norm_act(in_channels, in_channels, 3, norm)
        self.proj = nn.Conv2d(in_channels, latent_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map [B,C,h,w] to the latent [B,latent_channels,h,w]."""
        return self.proj(self.block(x))


class FeatureAdapters(nn.Module):
    """1x1 conv adapters from decoder maps to teacher feature widths (one adapter per distilled teacher feature).

    Args:
        in_channels: decoder width.
        out_channels: channel count of each distilled teacher feature.
    """

    def __init__(self, in_channels: int, out_channels: Sequence[int]) -> None:
        super().__init__()
        self.adapters = nn.ModuleList(nn.Conv2d(in_channels, c, 1) for c in out_channels)

    def __len__(self) -> int:
        """Number of adapters."""
        return len(self.adapters)

    def forward(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Apply adapter ``j`` to ``inputs[j]`` ([B,C,h_j,w_j] -> [B,out_channels[j],h_j,w_j])."""
        if len(inputs) != len(self.adapters):
            raise ValueError(f"expected {len(self.adapters)} inputs, got {len(inputs)}")
        return [adapter(x) for adapter, x in zip(self.adapters, inputs, strict=True)]


class DepthHead(nn.Module):
    """Light upsampling head: decoder map at stride ``in_stride`` -> depth at full resolution.

    Each stage halves the width at the current (low) resolution, where convolutions are cheap, and then upsamples
    x2 bilinearly; backbone maps finer than the FPN (e.g. the stride-2 stem of ResNets/EfficientNets) are added at
    their stride through 1x1 projections, to recover edges. The last conv (3x3, to 1 channel) runs at full
    resolution and smooths the bilinear upsampling. With ``in_stride = 4`` and width 128 this is
    ``conv3x3(128->64) @1/4, conv3x3(64->32) @1/2, conv3x3(32->1) @1/1``. Every conv of the head pads by replication,
    like the student's input: a depth map does not fall to zero outside the image.

    Where an upsampling is exactly x2 and no skip is added after it (every stage, for a power-of-two ``in_stride``
    and no skips), the conv that reads it is a :class:`~d3epth.models.upsampling.BilinearUpsampleConv2d`: upsampling
    and conv are computed as one sub-pixel convolution at the lower resolution, the same values without the
    upsampled map (at 480x640: a 64-channel map at 1/2 and a 32-channel one at 1/1, the two largest tensors of the
    student).

    Output range: ``activation="none"`` (default) gives unbounded, affine-invariant depth: the stage-2 loss is
    scale-and-shift invariant and the evaluator aligns every image, so bounding the output would only saturate
    gradients. ``activation="tanh"`` bounds it to [-1, 1], Marigold's normalised depth space, for losses that compare
    to ``depth_norm`` directly.

    Args:
        in_channels: decoder width.
        in_stride: stride of the input decoder map (``>= 1``).
        skip_channels: ``{stride: channels}`` of backbone maps finer than ``in_stride`` to inject.
        min_channels: lower bound for the stage widths.
        activation: ``"none"`` or ``"tanh"``.
        norm: normalisation in the hidden convs.
    """

    def __init__(
        self,
        in_channels: int,
        in_stride: float,
        skip_channels: dict[float, int] | None = None,
        min_channels: int = 16,
        activation: str = "none",
        norm: str = "group",
    ) -> None:
        super().__init__()
        if activation not in ("none", "tanh"):
            raise ValueError(f"depth activation must be 'none' or 'tanh', got {activation!r}")
        if in_stride < 1:
            raise ValueError(f"in_stride must be >= 1, got {in_stride}")
        self.activation = activation
        self.stage_strides: list[float] = self.stage_strides_for(in_stride)
        skip_channels = skip_channels or {}
        for stride in skip_channels:
            if stride not in self.stage_strides:
                raise ValueError(f"skip stride {stride} is not one of the head's stage strides {self.stage_strides}")
        # Stage j's conv runs at conv_strides[j] and its output is resized to stage_strides[j]; the next conv folds
        # that resize in when it is x2 (maps at stride s have exactly H_pad / s rows, so the ratio of strides is the
        # ratio of sizes) and no skip is added in between.
        conv_strides = [in_stride, *self.stage_strides][: len(self.stage_strides)]
        self.folded: tuple[bool, ...] = tuple(
            a == 2 * b and b not in skip_channels for a, b in zip(conv_strides, self.stage_strides, strict=True)
        )
        self.stages = nn.ModuleList()
        width = in_channels
        for j in range(len(self.stage_strides)):
            out = max(width // 2, min_channels)
            upsample = j > 0 and self.folded[j - 1]
            self.stages.append(conv_norm_act(width, out, 3, norm, padding_mode="replicate", upsample=upsample))
            width = out
        self.skips = nn.ModuleDict()
        for stride, channels in skip_channels.items():
            j = self.stage_strides.index(stride)
            self.skips[str(j)] = nn.Conv2d(channels, self.stage_width(j), 1)
        if self.folded and self.folded[-1]:
            self.out: nn.Conv2d = BilinearUpsampleConv2d(width, 1)
        else:
            self.out = nn.Conv2d(width, 1, 3, padding=1, padding_mode="replicate")

    @staticmethod
    def stage_strides_for(in_stride: float) -> list[float]:
        """Output stride of each x2 stage for a given input stride; the last is exactly 1 (full resolution)."""
        n_up = math.ceil(math.log2(in_stride)) if in_stride > 1 else 0
        return [max(in_stride / 2 ** (j + 1), 1.0) for j in range(n_up)]

    def stage_width(self, j: int) -> int:
        """Width of the map after stage ``j`` (its conv output)."""
        return self.stages[j][0].out_channels

    def forward(
        self, x: torch.Tensor, padded_size: tuple[int, int], skips: dict[float, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Upsample a decoder map to a depth map.

        Args:
            x: decoder map [B,C,H_pad/in_stride,W_pad/in_stride].
            padded_size: ``(H_pad, W_pad)``, the full output size.
            skips: ``{stride: [B,C_s,H_pad/stride,W_pad/stride]}`` backbone maps, matching ``skip_channels``.

        Returns:
            Depth [B,1,H_pad,W_pad] (unbounded, or in [-1, 1] with ``activation="tanh"``).
        """
        hp, wp = padded_size
        skips = skips or {}
        for j, (stage, stride) in enumerate(zip(self.stages, self.stage_strides, strict=True)):
            x = stage(x)
            if self.folded[j]:
                continue  # the next conv upsamples
            x = resize_to(x, (scaled_size(hp, stride), scaled_size(wp, stride)))
            key = str(j)
            if key in self.skips:
                x = x + self.skips[key](skips[stride])
        x = self.out(x)
        return torch.tanh(x) if self.activation == "tanh" else x
