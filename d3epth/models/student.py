"""The D³epth student: a timm backbone plus a light FPN decoder with latent, feature and depth heads.

D³epth (ACML 2025) distils a diffusion depth teacher (Marigold / E2E-FT) into a fast feed-forward network in two
stages: stage 1 matches the teacher's depth latent (and optionally UNet features), stage 2 refines depth in pixel
space. The paper does not publish the student architecture; this one is an assumption documented here:

* backbone: any timm model with ``features_only=True``; the default ``fastvit_t8`` (3.2M parameters with the default
  32-channel decoder, a 4-level pyramid at strides 4-32) is the most accurate student measured at >= 100x the speed of
  the SD2-shaped one-step teacher on a CPU (benchmarks/student_pareto.py); ``test_*`` timm
  models (e.g. ``test_efficientnet``, 82K parameters) are the tiny CPU/test variants;
* decoder: :class:`~d3epth.models.decoder.FPNDecoder` (see that module for why FPN rather than DPT);
* heads: ``latent`` (4 x H/8 x W/8, the teacher VAE's latent grid), ``features`` (1x1 adapters to chosen teacher
  UNet features) and ``depth`` (full resolution).

Input sizes. The teacher's VAE sees the image padded to a multiple of 8, so its latent grid is
``ceil(H/8) x ceil(W/8)``, cell ``(i, j)`` covering pixels ``[8i, 8i+8) x [8j, 8j+8)``. The student pads the image on
the bottom and right (replicate padding) to a multiple of every stride involved in the requested heads (the
backbone's reductions, 8 for the latent, the teacher feature strides; see :meth:`DepthStudent.pad_multiple`), runs the
network on the padded image and crops each output back: the latent to ``ceil(H/8) x ceil(W/8)``, a feature at stride
``s`` to ``ceil(H/s) x ceil(W/s)`` (the size a chain of stride-2, padding-1 UNet downsamplers gives from that latent)
and depth to ``H x W``. Padding at the bottom/right keeps every output grid aligned with the teacher's (cell ``i``
covers the same pixels). 480x640 needs no padding for a stride-32 backbone; KITTI's 375x1242 becomes 384x1248.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterator, Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from timm.data import resolve_model_data_config
from torch import nn

from d3epth.models.decoder import (
    DepthHead,
    FeatureAdapters,
    FPNDecoder,
    LatentHead,
    decoder_strides,
    nearest_level,
    resize_to,
)
from d3epth.utils.arguments import arguments_dataclass

__all__ = [
    "DEFAULT_BACKBONE",
    "HEADS",
    "LATENT_STRIDE",
    "TINY_BACKBONE",
    "DepthStudent",
    "StudentConfig",
    "architecture_arguments",
]

#: Backbone of the paper-scale configs: the most accurate student at >= 100x the SD2-shaped teacher
#: (benchmarks/student_pareto.py; benchmarks/results/student_pareto/student_pareto.md).
DEFAULT_BACKBONE = "fastvit_t8"
#: Tiny backbone for tests and CPU sample runs.
TINY_BACKBONE = "test_efficientnet"
#: The heads a student can build.
HEADS = ("latent", "features", "depth")
#: The submodule of each head.
_HEAD_MODULES = {"latent": "latent_head", "features": "feature_adapters", "depth": "depth_head"}
#: Downsampling factor of the Stable Diffusion VAE: the teacher's latent is at 1/8 resolution.
LATENT_STRIDE = 8


def architecture_arguments(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``DepthStudent`` arguments that rebuild a student whose weights come from elsewhere (a checkpoint, a file).

    ``pretrained_weights`` is dropped: the trained weights replace what it would load, and the file it names need not
    exist where a checkpoint is used (another machine, a moved download).
    """
    return {key: value for key, value in kwargs.items() if key != "pretrained_weights"}


def _lcm_of_strides(strides: Sequence[float]) -> int:
    """Smallest ``m`` such that ``m / s`` is an integer for every (possibly fractional, e.g. 3.5) stride ``s``."""
    result = 1
    for s in strides:
        numerator = Fraction(s).limit_denominator(64).numerator
        result = result * numerator // math.gcd(result, numerator)
    return result


class DepthStudent(nn.Module):
    """timm backbone + FPN decoder + latent / feature / depth heads.

    Args:
        backbone: any timm model name that supports ``features_only=True``.
        pretrained_weights: local weights file (``.safetensors``, ``.pth``, ``.bin``) of the full timm model
            (classifier keys are ignored), loaded through timm's ``pretrained_cfg_overlay=dict(file=...)``; ``None``
            initialises randomly. Nothing is ever downloaded.
        out_indices: backbone levels to use (timm ``out_indices``); ``None`` takes all of them.
        decoder_channels: width of the FPN and of the latent head.
        heads: heads to build, a subset of ``("latent", "features", "depth")``.
        teacher_feature_channels: channels of each teacher feature to distil (needed for the ``features`` head).
        teacher_feature_strides: stride of each teacher feature w.r.t. the input image (8 for 1/8 = the latent grid).
        latent_channels: channels of the teacher latent (4 for the SD VAE).
        depth_activation: ``"none"`` (unbounded affine-invariant depth, default) or ``"tanh"`` (in [-1, 1]).
        min_decoder_stride: backbone levels finer than this skip the FPN and feed the depth head directly (1x1
            projections), which keeps convolutions at 1/2 resolution out of the decoder.
        norm: normalisation in the decoder and heads: ``"group"``, ``"batch"`` or ``"none"``.
        backbone_kwargs: extra ``timm.create_model`` arguments (e.g. ``drop_path_rate``, or ``dynamic_img_size=True``
            for ViTs so that any input size works).

    Raises:
        ValueError: unknown backbone, head or option, or inconsistent feature-head arguments.
        FileNotFoundError: ``pretrained_weights`` does not exist.
    """

    def __init__(
        self,
        backbone: str = DEFAULT_BACKBONE,
        pretrained_weights: str | None = None,
        out_indices: Sequence[int] | None = None,
        decoder_channels: int = 32,
        heads: Sequence[str] = ("latent", "depth"),
        teacher_feature_channels: Sequence[int] | None = None,
        teacher_feature_strides: Sequence[int] | None = None,
        latent_channels: int = 4,
        depth_activation: str = "none",
        min_decoder_stride: int = 4,
        norm: str = "group",
        backbone_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        heads = (heads,) if isinstance(heads, str) else tuple(heads)  # a YAML scalar `heads: depth` is one head
        unknown = [h for h in heads if h not in HEADS]
        if unknown or not heads or len(set(heads)) != len(heads):
            raise ValueError(f"heads must be a non-empty subset of {HEADS} without repeats, got {list(heads)}")
        self.heads: tuple[str, ...] = tuple(h for h in HEADS if h in heads)

        feature_channels = list(teacher_feature_channels or [])
        feature_strides = list(teacher_feature_strides or [])
        if "features" in self.heads:
            if not feature_channels or len(feature_channels) != len(feature_strides):
                raise ValueError(
                    "the 'features' head needs teacher_feature_channels and teacher_feature_strides of equal, "
                    f"non-zero length, got {feature_channels} and {feature_strides}"
                )
            if any(c <= 0 for c in feature_channels) or any(s <= 0 for s in feature_strides):
                raise ValueError(
                    f"teacher feature channels and strides must be positive, got {feature_channels}, {feature_strides}"
                )
        elif feature_channels or feature_strides:
            raise ValueError(
                "teacher_feature_channels/teacher_feature_strides are set but 'features' is not in heads "
                f"{list(self.heads)}; add it to heads or drop them"
            )
        self.feature_strides: list[int] = [int(s) for s in feature_strides]

        self.backbone = self._create_backbone(backbone, pretrained_weights, out_indices, backbone_kwargs or {})
        self.backbone_name = backbone
        channels = list(self.backbone.feature_info.channels())
        strides = [float(s) for s in self.backbone.feature_info.reduction()]

        # Stride-2 stems etc. are cheap skips for the depth head rather than full FPN levels.
        self._num_skips = sum(s < min_decoder_stride for s in strides)
        if self._num_skips == len(strides):
            raise ValueError(
                f"all backbone levels of {backbone!r} (strides {strides}) are finer than "
                f"min_decoder_stride={min_decoder_stride}; lower it or choose other out_indices"
            )
        skip_strides = strides[: self._num_skips]
        levels = self._decoder_levels(self.heads, decoder_strides(strides[self._num_skips :]))
        self.decoder = FPNDecoder(
            channels[self._num_skips :], strides[self._num_skips :], decoder_channels, norm, levels=set(levels.values())
        )

        self.latent_head: LatentHead | None = None
        self.feature_adapters: FeatureAdapters | None = None
        self.depth_head: DepthHead | None = None
        if "latent" in self.heads:
            self.latent_head = LatentHead(decoder_channels, latent_channels, norm)
        if "features" in self.heads:
            self.feature_adapters = FeatureAdapters(decoder_channels, feature_channels)
        if "depth" in self.heads:
            head_stride = self.decoder.strides[0]
            stage_strides = DepthHead.stage_strides_for(head_stride)
            usable = {s: c for s, c in zip(skip_strides, channels, strict=False) if s in stage_strides}
            self.depth_head = DepthHead(decoder_channels, head_stride, usable, activation=depth_activation, norm=norm)
        self._skip_strides = skip_strides

        self.latent_stride = LATENT_STRIDE
        self._backbone_multiple = _lcm_of_strides([*strides, *self.decoder.strides])

        # The model takes images in [-1, 1] (the Marigold/VAE convention of the whole pipeline); the backbone wants
        # (x01 - mean) / std with its own pretrained mean/std, i.e. x * 0.5/std + (0.5 - mean)/std. Non-persistent:
        # they follow .to(device/dtype) but are derived from the backbone name, not saved in checkpoints.
        data_config = resolve_model_data_config(self.backbone)
        mean = torch.tensor(data_config["mean"], dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(data_config["std"], dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("input_scale", 0.5 / std, persistent=False)
        self.register_buffer("input_shift", (0.5 - mean) / std, persistent=False)

    @staticmethod
    def _create_backbone(
        name: str, weights: str | None, out_indices: Sequence[int] | None, kwargs: dict[str, Any]
    ) -> nn.Module:
        if not timm.is_model(name):
            close = difflib.get_close_matches(name, timm.list_models(), n=3)
            raise ValueError(f"unknown timm backbone {name!r}; closest: {close}")
        if out_indices is not None:
            kwargs = {**kwargs, "out_indices": tuple(int(i) for i in out_indices)}
        if weights is None:
            return timm.create_model(name, pretrained=False, features_only=True, **kwargs)
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"pretrained_weights file for backbone {name!r} not found: {str(path)!r}")
        # A file in pretrained_cfg_overlay wins over every hub/URL source in timm, so this never downloads.
        return timm.create_model(
            name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, features_only=True, **kwargs
        )

    @staticmethod
    def output_size(height: int, width: int, stride: int) -> tuple[int, int]:
        """Size of an output at ``stride`` for an ``height x width`` input: ``(ceil(H/stride), ceil(W/stride))``."""
        # Positive-operand floor division: exported to ONNX, whose integer Div truncates, -(-a // b) would be wrong.
        return (height + stride - 1) // stride, (width + stride - 1) // stride

    def pad_multiple(self, heads: Sequence[str] | None = None) -> int:
        """Multiple the input is padded to when running ``heads`` (default: all built heads).

        The lcm of the backbone and decoder strides, and of 8 (latent) and the teacher feature strides when those
        heads run, so that every output grid is an exact subdivision of the padded image. Depth-only inference thus
        pads no more than the backbone needs (none at 480x640), even if the student was built with stride-64
        feature adapters.
        """
        wanted = self._resolve_heads(heads)
        strides: list[float] = [self._backbone_multiple]
        if "latent" in wanted:
            strides.append(LATENT_STRIDE)
        if "features" in wanted:
            strides.extend(self.feature_strides)
        return _lcm_of_strides(strides)

    def decoder_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the decoder and heads (everything but the backbone), for optimiser parameter groups."""
        for name, module in self.named_children():
            if name != "backbone":
                yield from module.parameters()

    def _decoder_levels(self, heads: Sequence[str], strides: Sequence[float]) -> dict[str, int]:
        """The decoder level each output of ``heads`` reads: ``latent``, ``features.<j>``, ``depth`` -> level index.

        The latent and each teacher feature read the level nearest their stride; the depth head the finest level.
        """
        levels: dict[str, int] = {}
        if "latent" in heads:
            levels["latent"] = nearest_level(strides, LATENT_STRIDE)
        if "features" in heads:
            levels.update({f"features.{j}": nearest_level(strides, s) for j, s in enumerate(self.feature_strides)})
        if "depth" in heads:
            levels["depth"] = 0
        return levels

    def freeze_unused(self, heads: Sequence[str]) -> list[str]:
        """Freeze (``requires_grad=False``) every parameter that none of ``heads`` depends on; return their names.

        A task whose loss reads only some of the built heads (stage 2's light decoder next to a stage-1 latent head it
        keeps, stage 1 given a depth head to carry to stage 2) calls this so that every trainable parameter gets a
        gradient every step: what DDP requires without ``find_unused_parameters``. The frozen parts stay in the state
        dict and in the forward of their own heads.

        Args:
            heads: the heads the loss reads, a subset of :attr:`heads`.
        """
        wanted = self._resolve_heads(heads)
        levels = set(self._decoder_levels(wanted, self.decoder.strides).values())
        used = {"backbone.", *(f"decoder.lateral.{i}." for i in range(min(levels), self.decoder.num_levels))}
        used |= {f"decoder.smooth.{i}." for i in levels}
        used |= {f"{_HEAD_MODULES[h]}." for h in wanted}
        frozen = []
        for name, param in self.named_parameters():
            if not name.startswith(tuple(used)):
                param.requires_grad_(False)
                frozen.append(name)
        return frozen

    def _resolve_heads(self, heads: Sequence[str] | None) -> tuple[str, ...]:
        if heads is None:
            return self.heads
        heads = (heads,) if isinstance(heads, str) else tuple(heads)
        missing = [h for h in heads if h not in self.heads]
        if missing or not heads:
            raise ValueError(f"requested heads {list(heads)} but this student was built with {list(self.heads)}")
        return tuple(h for h in self.heads if h in heads)

    def forward(
        self, image: torch.Tensor, heads: Sequence[str] | None = None
    ) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """Predict the requested outputs.

        Args:
            image: RGB [B,3,H,W] in [-1, 1]; any ``H, W`` (padded internally, see the module docstring).
            heads: heads to run (default: all built); unrequested heads and the decoder levels only they need are
                skipped.

        Returns:
            A dict with, for each requested head:

            * ``latent``: [B,latent_channels,ceil(H/8),ceil(W/8)] teacher-latent prediction;
            * ``features``: list, entry ``j`` [B,teacher_feature_channels[j],ceil(H/s_j),ceil(W/s_j)];
            * ``depth``: [B,1,H,W] affine-invariant depth (unbounded, or in [-1, 1] with tanh).

        Raises:
            ValueError: ``image`` is not [B,3,H,W], or a requested head was not built.
        """
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"image must be [B, 3, H, W] in [-1, 1], got shape {tuple(image.shape)}")
        wanted = self._resolve_heads(heads)
        height, width = image.shape[-2:]
        multiple = self.pad_multiple(wanted)
        hp, wp = (n * multiple for n in self.output_size(height, width, multiple))

        x = image * self.input_scale + self.input_shift
        if (hp, wp) != (height, width):
            x = F.pad(x, (0, wp - width, 0, hp - height), mode="replicate")
        features = self.backbone(x)
        skips, pyramid = features[: self._num_skips], features[self._num_skips :]

        levels = self._decoder_levels(wanted, self.decoder.strides)
        decoded = self.decoder(pyramid, (hp, wp), set(levels.values()))

        out: dict[str, torch.Tensor | list[torch.Tensor]] = {}
        if "latent" in wanted:
            assert self.latent_head is not None
            lh, lw = self.output_size(height, width, LATENT_STRIDE)
            latent = self.latent_head(resize_to(decoded[levels["latent"]], (hp // LATENT_STRIDE, wp // LATENT_STRIDE)))
            out["latent"] = latent[..., :lh, :lw]
        if "features" in wanted:
            assert self.feature_adapters is not None
            inputs = [
                resize_to(decoded[levels[f"features.{j}"]], (hp // s, wp // s))
                for j, s in enumerate(self.feature_strides)
            ]
            out["features"] = [
                f[..., : self.output_size(height, width, s)[0], : self.output_size(height, width, s)[1]]
                for f, s in zip(self.feature_adapters(inputs), self.feature_strides, strict=True)
            ]
        if "depth" in wanted:
            assert self.depth_head is not None
            skip_maps = {s: f for s, f in zip(self._skip_strides, skips, strict=True)}
            depth = self.depth_head(decoded[0], (hp, wp), skip_maps)
            out["depth"] = depth[..., :height, :width]
        return out


#: A task's ``student`` option: ``DepthStudent``'s arguments as a typed group, so a config's every key and value is
#: checked before anything is built. The teacher-feature shapes are left out: stage 1 reads them off its teacher.
StudentConfig = arguments_dataclass(
    DepthStudent, "StudentConfig", __name__, skip=("teacher_feature_channels", "teacher_feature_strides")
)
