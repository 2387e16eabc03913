"""Inference form of a model (d3epth.inference.acceleration): precision resolution, channels_last, exported models."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn
from torch._inductor.utils import run_and_get_code

from d3epth.inference import acceleration, load_predictor
from d3epth.inference.acceleration import accelerate_predictor, prepare_for_inference, resolve_precision
from d3epth.models.cpu_layers import ChannelMultiplierConv2d
from d3epth.models.depth_model import StudentDepthModel
from d3epth.models.export import load_student, save_student
from d3epth.models.fusion import has_batch_norm
from d3epth.models.student import DepthStudent


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "expected"), [(True, False, "bf16"), (False, True, "bf16"), (False, False, "fp32")]
)
def test_auto_on_cpu_follows_the_capability_probe(
    monkeypatch: pytest.MonkeyPatch, avx512_bf16: bool, amx: bool, expected: str
) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert resolve_precision("auto", "cpu") == {"bf16": torch.bfloat16, "fp32": torch.float32}[expected]
    # Explicit names are honoured whatever the hardware.
    assert resolve_precision("fp32", "cpu") == torch.float32
    assert resolve_precision("bf16", "cpu") == torch.bfloat16
    assert resolve_precision("fp16", "cpu") == torch.float16


@pytest.mark.parametrize(("capability", "bf16"), [((8, 0), True), ((9, 0), True), ((7, 5), False), ((7, 0), False)])
def test_auto_on_cuda_is_bf16_from_compute_capability_8(
    monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int], bf16: bool
) -> None:
    """Ampere+ only: a T4 (7.5) or V100 (7.0) emulates bf16, which torch.cuda.is_bf16_supported() counts by default."""
    asked: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)  # emulation counts there
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: asked.append(device) or capability)
    # fp16 is never chosen by auto: only when asked for.
    assert resolve_precision("auto", "cuda:1") == (torch.bfloat16 if bf16 else torch.float32)
    assert asked == [torch.device("cuda:1")]  # the device asked about, not the current one


def test_unknown_precision_is_refused() -> None:
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("int8", "cpu")


def tiny_model(norm: str = "batch") -> StudentDepthModel:
    torch.manual_seed(0)
    model = StudentDepthModel(DepthStudent("test_efficientnet", heads=("depth",), decoder_channels=16, norm=norm))
    return model.eval()


def channels_last(x: torch.Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def test_channels_last_path_gives_the_same_outputs() -> None:
    model = tiny_model()
    image = torch.rand(2, 3, 45, 70) * 2 - 1  # needs internal padding
    with torch.no_grad():
        expected = model(image)
        prepared = prepare_for_inference(copy.deepcopy(model), "fp32", fuse=False, channels_last=True)
        convs = [m for m in prepared.modules() if isinstance(m, torch.nn.Conv2d)]
        layouts = []
        convs[0].register_forward_hook(lambda module, inputs, out: layouts.append(channels_last(out)))
        output = prepared(image)
    assert channels_last(next(conv.weight for conv in convs if conv.kernel_size == (3, 3)))
    assert layouts == [True]  # the NCHW image's first convolution already gives channels_last activations
    assert output.dtype == torch.float32 and output.is_contiguous()
    torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-6)


def test_bf16_runs_convolutions_in_bf16_and_returns_fp32() -> None:
    model = prepare_for_inference(tiny_model(), "bf16")
    seen = []
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    with torch.no_grad():
        depth = model(torch.rand(1, 3, 64, 64) * 2 - 1)
    assert seen == [torch.bfloat16] and depth.dtype == torch.float32


def test_exported_student_round_trip_loads_and_matches_in_inference_form(tmp_path: Path) -> None:
    """model.safetensors stays unfused (a plain DepthStudent loads it); the loader side fuses."""
    model = tiny_model()
    kwargs = {"backbone": "test_efficientnet", "heads": ["depth"], "decoder_channels": 16, "norm": "batch"}
    save_student(tmp_path / "exp", model.student, kwargs)
    loaded = load_student(tmp_path / "exp")
    assert has_batch_norm(loaded)
    image = torch.rand(1, 3, 50, 66) * 2 - 1
    with torch.no_grad():
        expected = model(image)
        torch.testing.assert_close(prepare_for_inference(loaded, "fp32")(image), expected, rtol=1e-4, atol=1e-5)
    predictor = load_predictor(tmp_path / "exp")
    assert accelerate_predictor(predictor, "fp32") == torch.float32
    assert isinstance(predictor.model, acceleration.InferenceModel) and not has_batch_norm(predictor)
    torch.testing.assert_close(predictor.predict(image), expected, rtol=1e-4, atol=1e-5)


def test_compile_uses_dynamic_shapes_and_keeps_aten_gelu(monkeypatch: pytest.MonkeyPatch) -> None:
    """One graph for every image size (a new size must not recompile); not compiled here.

    ATen's GELU stays (Inductor fuses it into the convolution before it); the channel-multiplier convolution is
    still swapped for its fast CPU form.
    """
    calls = []
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: calls.append(kwargs) or model)
    network = nn.Sequential(nn.Conv2d(3, 6, 3, groups=3), nn.GELU())
    network.size_multiple = 32
    model = prepare_for_inference(network, "fp32", compile=True)
    assert calls == [{"dynamic": True}] and model.size_multiple == 32
    assert type(network[1]) is nn.GELU and isinstance(network[0], ChannelMultiplierConv2d)


def test_compiled_model_freezes_weights_into_fused_onednn_convolutions() -> None:
    """The real compile: a conv + BatchNorm + GELU becomes one oneDNN convolution with a GELU post-op.

    ``torch.compile(options={"freezing": True})`` alone traced the weights as graph inputs: Inductor then emitted a
    plain ATen convolution and a separate GELU kernel. The process-wide flag is left as it was.
    """
    network = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.GELU(), nn.Conv2d(8, 1, 1)).eval()
    image = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        expected = network(image)
        model = prepare_for_inference(network, "fp32", compile=True)
        output, code = run_and_get_code(model, image)
    torch.testing.assert_close(output, expected, rtol=1e-4, atol=1e-5)
    source = "\n".join(code)
    assert "mkldnn._convolution_pointwise" in source and "'gelu'" in source
    assert "extern_kernels.convolution" not in source
    assert torch._inductor.config.freezing is False


@pytest.mark.slow
def test_compiled_frozen_model_matches_eager_at_two_sizes() -> None:
    """The real torch.compile (dynamic, frozen weights): same depth as eager fp32, also at a second image size."""
    model = tiny_model()
    eager = prepare_for_inference(copy.deepcopy(model), "fp32")
    compiled = prepare_for_inference(copy.deepcopy(model), "fp32", compile=True)
    with torch.inference_mode():
        for size in ((64, 96), (45, 70)):
            image = torch.rand(1, 3, *size) * 2 - 1
            torch.testing.assert_close(compiled(image), eager(image), rtol=1e-4, atol=1e-5)
