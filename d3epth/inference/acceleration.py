"""Preparing a model for fast inference: conv + BatchNorm fusion, channels_last, a precision, optional compile.

The one place where ``tools/predict.py``, ``tools/evaluate.py`` and ``benchmarks/inference_speed.py`` get their
inference form of a student (the exported ONNX graph shares its conv + BatchNorm fusion)::

    model = prepare_for_inference(load_student("exported/student"), precision="auto")
    depth = model(image)  # float32 [B,1,H,W]

Measured on a 2-core AMD EPYC with AVX-512 BF16 (``benchmarks/inference_speed.py``, README "Inference speed"):
channels_last lets oneDNN pick its blocked convolution kernels without a layout reorder before every convolution,
and bf16 roughly halves the time again on CPUs with native bf16 dot products (AVX512-BF16 or AMX) and on
GPUs with bf16 tensor cores. Where the hardware has no native bf16, ``auto`` stays fp32: emulated bf16 is slower.
fp16 is never chosen by ``auto`` (its narrower range can overflow); ask for it on GPUs without bf16. On the CPU,
GELU and depthwise convolutions with a channel multiplier are swapped for forms that reach oneDNN's fast kernels on
channels_last activations (:mod:`d3epth.models.cpu_layers`; ``fastvit_t8``/w32 at 480x640, side by side: 1.19-1.31x in
bf16, 0.99-1.18x in fp32, medians of two runs).

Precision names: ``auto`` (bf16 where :func:`bf16_supported`, else fp32), ``fp32``, ``bf16``, ``fp16``. A student
in a reduced precision is *converted* (weights and input in bf16 / fp16; PyTorch's CPU norm kernels still accumulate
in fp32) rather than run under :func:`torch.autocast`, which re-casts every weight at every call and keeps the fp32
weights: the converted model holds half the memory and was faster in the measurements (``fastvit_t8``/w32, two runs:
median 30.3 vs 33.7 ms and 31.2 vs 39.8 ms; for the 128-channel head 3 % slower to 25 % faster in earlier ones). The
depth map is returned in fp32. (Diffusion teachers use autocast, :func:`accelerate_predictor`.)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from d3epth.inference.predictor import DepthPredictor, ModuleDepthPredictor, TeacherDepthPredictor
from d3epth.models.cpu_layers import use_fast_cpu_layers
from d3epth.models.fusion import fuse_conv_bn
from d3epth.utils.allocator import reuse_freed_memory

__all__ = [
    "PRECISIONS",
    "FrozenCompiledModel",
    "InferenceModel",
    "accelerate_predictor",
    "bf16_supported",
    "prepare_for_inference",
    "resolve_precision",
]

#: Accepted ``--precision`` values.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def bf16_supported(device: str | torch.device) -> bool:
    """Whether ``device`` computes in bf16 natively (so bf16 is faster, not emulated).

    CPU: AVX512-BF16 or AMX tiles (what oneDNN's bf16 convolutions use); CUDA: compute capability 8.0+ of that
    device (``torch.cuda.is_bf16_supported()`` also counts emulated bf16 on older GPUs, and asks the current
    device). Other devices: ``False``.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type == "cpu":
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return False


def resolve_precision(precision: str, device: str | torch.device) -> torch.dtype:
    """The compute dtype for a precision name on ``device``.

    Raises:
        ValueError: an unknown name.
    """
    if precision == "auto":
        return torch.bfloat16 if bf16_supported(device) else torch.float32
    if precision not in _DTYPES:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return _DTYPES[precision]


class InferenceModel(nn.Module):
    """An image → depth network run in the inference precision.

    The image is only cast, not converted to channels_last: a network whose weights are channels_last gives
    channels_last outputs from its first convolution on (PyTorch picks the layout from the input *or* the weight),
    while the student's input normalisation and padding before it run faster on the 3-channel image in NCHW
    (``fastvit_t8`` at 480x640 in bf16 on 2 EPYC cores, profiled: 2.4 ms on the channels_last image, 0.2 ms in NCHW).

    Args:
        model: the (prepared) network, image ``[B,3,H,W]`` → depth ``[B,1,H,W]``, its weights already in ``dtype``.
        dtype: the network's floating-point dtype; the input is cast to it.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.model = model
        self.dtype = dtype
        self.size_multiple = int(getattr(model, "size_multiple", 1))

    def forward(self, image: Tensor) -> Tensor:
        """Depth for RGB images.

        Args:
            image: ``[B,3,H,W]`` in [−1, 1], on the model's device.

        Returns:
            float32 ``[B,1,H,W]``, contiguous (NCHW).
        """
        return self.model(image.to(self.dtype)).float().contiguous()

    def extra_repr(self) -> str:
        """Show the precision in ``print(model)``."""
        return f"dtype={self.dtype}"


class FrozenCompiledModel(nn.Module):
    """``torch.compile(dynamic=True)`` of a network with Inductor's freezing: its weights folded in as constants.

    Freezing lets Inductor pre-pack the convolution weights for oneDNN and fuse the element-wise operations after a
    convolution into it (GELU, the residual addition: ``mkldnn._convolution_pointwise`` post-ops). Dynamo decides
    whether the parameters become constants of the graph or inputs to it *when it traces*, from the global
    ``torch._inductor.config.freezing`` (``torch._dynamo.utils.is_parameter_freezing``), while the ``options`` of
    ``torch.compile`` reach only the Inductor backend after the trace: ``options={"freezing": True}`` alone leaves the
    weights as inputs, and Inductor emits ATen's convolutions and separate element-wise kernels (torch 2.14,
    ``tests/inference/test_acceleration.py``). So every call, and with it every trace and recompile, runs with the
    flag set, which stays unchanged for the rest of the process. Freezing applies under ``torch.no_grad`` /
    ``inference_mode`` (the predictors' own); the weights must not change afterwards.

    Args:
        model: the prepared network, image ``[B,3,H,W]`` → depth ``[B,1,H,W]``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.size_multiple = int(getattr(model, "size_multiple", 1))
        # dynamic: one graph for every image size, so a new size does not recompile.
        self.compiled = torch.compile(model, dynamic=True)

    def forward(self, image: Tensor) -> Tensor:
        """The compiled network's output for ``image``, traced (on a first call or a new guard) with freezing on."""
        with torch._inductor.config.patch(freezing=True):
            return self.compiled(image)


def prepare_for_inference(
    model: nn.Module,
    precision: str | torch.dtype = "fp32",
    *,
    fuse: bool = True,
    channels_last: bool = True,
    compile: bool = False,
    cpu_layers: bool = True,
) -> InferenceModel:
    """Eval mode, conv + BatchNorm fusion, channels_last weights, a dtype and optionally ``torch.compile``.

    ``model`` is changed in place (fused modules, weight layout): pass a copy to keep the original trainable.

    Args:
        model: an image → depth network such as :class:`~d3epth.models.depth_model.StudentDepthModel`, on its
            device.
        precision: a name of :data:`PRECISIONS` (resolved for the model's device) or a dtype; the weights are
            converted to it after fusion (which runs in fp32).
        fuse: fold BatchNorms into their convolutions (:func:`~d3epth.models.fusion.fuse_conv_bn`), found by running
            the model once on a small ``1x3x(2m)x(2m)`` image, ``m`` its ``size_multiple``.
        channels_last: store 4-D weights as channels_last (the activations follow, :class:`InferenceModel`).
        cpu_layers: with ``channels_last`` on the CPU, swap in the forms of GELU and of channel-multiplier depthwise
            convolutions that are faster on channels_last activations
            (:func:`~d3epth.models.cpu_layers.use_fast_cpu_layers`; same function, same parameters). With ``compile``
            only the convolutions: Inductor fuses ATen's GELU into the convolution before it.
        compile: wrap the network in a :class:`FrozenCompiledModel` (``torch.compile(dynamic=True)`` with Inductor's
            freezing, the weights folded in, element-wise operations fused into the convolutions). The first call pays
            the compilation (tens of seconds on a CPU); the README's "Inference speed" has the measurements.

    Returns:
        The :class:`InferenceModel`, in eval mode.
    """
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    dtype = resolve_precision(precision, device) if isinstance(precision, str) else precision
    if fuse:
        fuse_conv_bn(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        if cpu_layers and device.type == "cpu":
            use_fast_cpu_layers(model, gelu=not compile)
    model = model.to(dtype)
    if compile:
        model = FrozenCompiledModel(model)
    return InferenceModel(model, dtype).eval()


def accelerate_predictor(
    predictor: DepthPredictor,
    precision: str = "auto",
    *,
    fuse: bool = True,
    channels_last: bool = True,
    compile: bool = False,
) -> torch.dtype:
    """Switch a loaded predictor to its inference form, in place; returns the dtype chosen.

    Students (:class:`ModuleDepthPredictor`) get :func:`prepare_for_inference`. Diffusion teachers get the precision
    only: their UNet and VAE have no BatchNorm to fuse, and the teacher's own padding and resizing stay as they are.
    On the CPU, the process also keeps freed memory for reuse (:func:`~d3epth.utils.allocator.reuse_freed_memory`),
    so that the activations of every image do not cost fresh page faults.

    Args:
        predictor: from :func:`~d3epth.inference.load_predictor`.
        precision: a name of :data:`PRECISIONS`, resolved for the predictor's device.
        fuse: students: conv + BatchNorm fusion.
        channels_last: students: channels_last weights.
        compile: students: ``torch.compile(dynamic=True)``.
    """
    dtype = resolve_precision(precision, predictor.device)
    if torch.device(predictor.device).type == "cpu":
        reuse_freed_memory()
    if isinstance(predictor, ModuleDepthPredictor):
        predictor.model = prepare_for_inference(
            predictor.model, dtype, fuse=fuse, channels_last=channels_last, compile=compile
        )
    elif isinstance(predictor, TeacherDepthPredictor):
        predictor.autocast_dtype = dtype
    return dtype
