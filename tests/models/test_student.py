"""Tests for the student network: d3epth.models.student and d3epth.models.decoder (tiny timm backbones, CPU)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from d3epth.models.decoder import DepthHead, FPNDecoder
from d3epth.models.student import HEADS, DepthStudent
from tests.helpers.checkpoints import STUDENT

FEATURE_CHANNELS = [8, 12, 20]
FEATURE_STRIDES = [8, 16, 64]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def make_student(backbone: str = "test_efficientnet", seed: int = 0, **kwargs: object) -> DepthStudent:
    torch.manual_seed(seed)
    kwargs.setdefault("decoder_channels", 16)
    return DepthStudent(backbone, **kwargs)


def full_student(backbone: str = "test_efficientnet", **kwargs: object) -> DepthStudent:
    return make_student(
        backbone,
        heads=HEADS,
        teacher_feature_channels=FEATURE_CHANNELS,
        teacher_feature_strides=FEATURE_STRIDES,
        **kwargs,
    )


def rand_image(batch: int, height: int, width: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, height, width, generator=generator) * 2 - 1


@pytest.mark.parametrize(
    ("backbone", "backbone_kwargs"),
    [
        ("test_efficientnet", {}),
        ("test_resnet", {}),
        ("test_convnext", {}),
        ("test_vit", {"dynamic_img_size": True}),
    ],
)
def test_output_shapes_across_families_and_sizes(backbone: str, backbone_kwargs: dict) -> None:
    student = full_student(backbone, backbone_kwargs=backbone_kwargs)
    for height, width in [(64, 96), (37, 61), (50, 70)]:
        out = student(rand_image(2, height, width))
        assert set(out) == set(HEADS)
        # The teacher's VAE sees the image padded to a multiple of 8: its latent grid is ceil(H/8) x ceil(W/8).
        assert out["latent"].shape == (2, 4, math.ceil(height / 8), math.ceil(width / 8))
        assert out["depth"].shape == (2, 1, height, width)
        assert len(out["features"]) == len(FEATURE_CHANNELS)
        for feature, channels, stride in zip(out["features"], FEATURE_CHANNELS, FEATURE_STRIDES, strict=True):
            assert feature.shape == (2, channels, math.ceil(height / stride), math.ceil(width / stride))
        assert all(torch.isfinite(t).all() for t in [out["latent"], out["depth"], *out["features"]])


def test_pad_and_crop_matches_manual_replicate_padding() -> None:
    student = make_student().eval()
    # test_efficientnet's coarsest level has stride 32 and 8 divides 32: inputs are padded to multiples of 32.
    assert student.pad_multiple() == 32
    image = rand_image(1, 37, 61)
    padded = F.pad(image, (0, 64 - 61, 0, 64 - 37), mode="replicate")
    with torch.no_grad():
        out = student(image)
        ref = student(padded)
    torch.testing.assert_close(out["depth"], ref["depth"][..., :37, :61])
    torch.testing.assert_close(out["latent"], ref["latent"][..., :5, :8])


def test_pad_multiple_follows_requested_heads() -> None:
    student = full_student()
    assert student.pad_multiple() == 64  # lcm(32, 8, 16, 64) with the stride-64 teacher feature
    assert student.pad_multiple(("depth",)) == 32
    assert student.pad_multiple(("latent",)) == 32


@pytest.mark.parametrize("backbone", ["test_resnet", "test_efficientnet"])
def test_channels_last_gives_same_output(backbone: str) -> None:
    student = full_student(backbone).eval()
    image = rand_image(2, 37, 61)
    with torch.no_grad():
        ref = student(image)
        student = student.to(memory_format=torch.channels_last)
        out = student(image.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out["latent"], ref["latent"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out["depth"], ref["depth"], atol=1e-5, rtol=1e-4)
    for a, b in zip(out["features"], ref["features"], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_gradients_reach_backbone_and_every_head() -> None:
    student = full_student().train()
    out = student(rand_image(2, 40, 56))
    loss = (
        out["latent"].square().mean() + out["depth"].square().mean() + sum(f.square().mean() for f in out["features"])
    )
    loss.backward()
    for name, param in student.named_parameters():
        assert param.grad is not None, f"no gradient for {name}"
        assert torch.isfinite(param.grad).all(), name
    # The first backbone conv and the stride-2 skip into the depth head must carry signal, not just zeros.
    assert student.backbone.conv_stem.weight.grad.abs().sum() > 0
    assert any(p.grad.abs().sum() > 0 for p in student.depth_head.skips.parameters())


def test_head_subset_at_forward_skips_unused_heads_and_levels() -> None:
    student = full_student().eval()
    calls: dict[str, int] = {}

    def counter(name: str):
        def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
            calls[name] = calls.get(name, 0) + 1

        return hook

    student.latent_head.register_forward_hook(counter("latent"))
    student.feature_adapters.register_forward_hook(counter("features"))
    student.depth_head.register_forward_hook(counter("depth"))
    for i, smooth in student.decoder.smooth.items():
        smooth.register_forward_hook(counter(f"smooth{i}"))

    image = rand_image(1, 64, 64)
    with torch.no_grad():
        full = student(image)
        calls.clear()
        depth_only = student(image, heads=("depth",))
    assert set(depth_only) == {"depth"}
    # Only the finest decoder level is smoothed for the depth head; coarser levels contribute via the top-down sum.
    assert calls == {"depth": 1, "smooth0": 1}
    # 64x64 needs padding to 64 either way, so the depth map is identical to the full forward's.
    torch.testing.assert_close(depth_only["depth"], full["depth"])

    # Backward through one head leaves the others without gradients.
    student.train()
    student.zero_grad(set_to_none=True)
    student(image, heads="latent")["latent"].sum().backward()
    assert all(p.grad is None for p in student.depth_head.parameters())
    assert all(p.grad is None for p in student.feature_adapters.parameters())
    assert all(p.grad is not None for p in student.latent_head.parameters())


def test_head_subset_at_construction_builds_only_those_heads() -> None:
    student = make_student(heads=("depth",)).eval()
    assert student.latent_head is None and student.feature_adapters is None and student.depth_head is not None
    assert not any(name.startswith(("latent_head", "feature_adapters")) for name, _ in student.named_parameters())
    assert set(student(rand_image(1, 32, 32))) == {"depth"}
    assert make_student(heads="depth").heads == ("depth",)
    with pytest.raises(ValueError, match="built with \\['depth'\\]"):
        student(rand_image(1, 32, 32), heads=("latent",))


def test_only_the_decoder_levels_the_heads_read_are_built_and_old_full_pyramids_still_load() -> None:
    depth_only, latent_only = make_student(heads=("depth",)), make_student(heads=("latent",))
    assert depth_only.decoder.levels == (0,) and sorted(depth_only.decoder.lateral) == ["0", "1", "2", "3"]
    latent_level = latent_only.decoder.level_for_stride(8)
    assert latent_only.decoder.levels == (latent_level,) and latent_level > 0
    assert sorted(latent_only.decoder.lateral) == [str(i) for i in range(latent_level, 4)]
    # A new student's state dict round-trips strictly.
    fresh = make_student(heads=("latent",), seed=1)
    fresh.load_state_dict(latent_only.state_dict())
    assert all(
        torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), latent_only.state_dict().values(), strict=True)
    )
    # Students written when every level was built (never-read levels included) still load strictly.
    extra = {k: v for k, v in depth_only.state_dict().items() if k.startswith("decoder.")}
    old = {**extra, **latent_only.state_dict()}
    assert "decoder.smooth.0.0.weight" in old and "decoder.lateral.0.weight" in old
    fresh.load_state_dict(old)
    with pytest.raises(RuntimeError, match="Missing key"):
        fresh.load_state_dict({k: v for k, v in old.items() if not k.startswith("decoder.smooth.")})


def test_freeze_unused_freezes_exactly_what_the_trained_heads_do_not_read() -> None:
    student = full_student().train()
    frozen = set(student.freeze_unused(("depth",)))
    assert frozen and all(not p.requires_grad for n, p in student.named_parameters() if n in frozen)
    student(rand_image(2, 64, 64), heads=("depth",))["depth"].sum().backward()
    for name, param in student.named_parameters():
        assert (param.grad is None) == (name in frozen), name


def test_decoder_parameters_are_everything_but_the_backbone() -> None:
    student = full_student()
    decoder_ids = {id(p) for p in student.decoder_parameters()}
    backbone_ids = {id(p) for p in student.backbone.parameters()}
    assert decoder_ids.isdisjoint(backbone_ids)
    assert decoder_ids | backbone_ids == {id(p) for p in student.parameters()}


@pytest.mark.parametrize(
    ("backbone", "mean", "std"),
    [
        ("test_efficientnet", IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
        ("test_resnet", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    ],
)
def test_input_normalisation_matches_backbone_mean_std(backbone: str, mean: tuple, std: tuple) -> None:
    student = make_student(backbone, heads=("depth",)).eval()
    seen: list[torch.Tensor] = []
    student.backbone.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    image = rand_image(1, 32, 32)
    student(image)
    mean_t = torch.tensor(mean).view(1, 3, 1, 1)
    std_t = torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(seen[0], ((image + 1) / 2 - mean_t) / std_t)
    # Derived from the backbone name, not state: absent from the state dict.
    assert not any(key.startswith("input_") for key in student.state_dict())


@pytest.mark.parametrize(("backbone", "suffix"), [("test_efficientnet", ".safetensors"), ("test_resnet", ".pth")])
def test_local_weights_file_is_loaded(tmp_path: Path, backbone: str, suffix: str) -> None:
    torch.manual_seed(123)
    source = timm.create_model(backbone, pretrained=False)  # full classifier, as a user's checkpoint would be
    saved = {k: v.clone().contiguous() for k, v in source.state_dict().items()}
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file(saved, str(path))
    else:
        torch.save(saved, path)

    loaded = make_student(backbone, seed=0, pretrained_weights=str(path)).backbone.state_dict()
    random = make_student(backbone, seed=0).backbone.state_dict()
    float_keys = [k for k, v in loaded.items() if v.is_floating_point() and not k.endswith("running_var")]
    assert float_keys and set(loaded) <= set(saved)
    for key, value in loaded.items():
        torch.testing.assert_close(value, saved[key], rtol=0, atol=0, msg=key)
    # Without the file the same seed gives other weights, so the equality above is not a coincidence.
    assert any(not torch.equal(random[k], saved[k]) for k in float_keys)


def test_missing_weights_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "model.safetensors"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        DepthStudent("test_efficientnet", pretrained_weights=str(missing))


def test_tanh_depth_is_tanh_of_unbounded_depth() -> None:
    plain = make_student(heads=("depth",)).eval()
    bounded = make_student(heads=("depth",), seed=5, depth_activation="tanh").eval()
    bounded.load_state_dict(plain.state_dict())
    image = rand_image(1, 40, 40)
    with torch.no_grad():
        raw = plain(image)["depth"]
        out = bounded(image)["depth"]
    torch.testing.assert_close(out, torch.tanh(raw))
    assert out.abs().max() <= 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backbone": "test_efficientnett"}, "unknown timm backbone 'test_efficientnett'.*test_efficientnet"),
        ({"heads": ("latent", "normals")}, "heads must be a non-empty subset"),
        ({"heads": ("features",)}, "teacher_feature_channels and teacher_feature_strides"),
        ({"teacher_feature_channels": [8], "teacher_feature_strides": [8]}, "'features' is not in heads"),
        ({"depth_activation": "sigmoid"}, "depth activation must be 'none' or 'tanh'"),
        ({"norm": "layer"}, "norm must be one of"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs: dict, message: str) -> None:
    kwargs = {**STUDENT, **kwargs}
    with pytest.raises(ValueError, match=message):
        DepthStudent(**kwargs)


def test_bad_image_shape_raises() -> None:
    student = make_student(heads=("depth",)).eval()
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\].*\(1, 1, 32, 32\)"):
        student(torch.zeros(1, 1, 32, 32))


def test_fpn_reassembles_single_stride_pyramids_dpt_style() -> None:
    assert FPNDecoder([8, 8, 8, 8], [16, 16, 16, 16], 8).strides == [4, 8, 16, 32]
    assert FPNDecoder([8, 16, 32], [4, 8, 16], 8).strides == [4, 8, 16]
    decoder = FPNDecoder([4, 6], [8, 16], 8)
    assert decoder.level_for_stride(8) == 0 and decoder.level_for_stride(64) == 1
    outputs = decoder([torch.randn(1, 4, 4, 6), torch.randn(1, 6, 2, 3)], (32, 48), levels=[1])
    assert outputs[0] is None and outputs[1].shape == (1, 8, 2, 3)


def test_depth_head_stage_strides() -> None:
    assert DepthHead.stage_strides_for(4) == [2, 1]
    assert DepthHead.stage_strides_for(8) == [4, 2, 1]
    assert DepthHead.stage_strides_for(3.5) == [1.75, 1]
    head = DepthHead(8, 1)
    assert head(torch.randn(1, 8, 5, 7), (5, 7)).shape == (1, 1, 5, 7)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore:Constant folding:UserWarning")
def test_onnx_export_matches_eager_at_a_padded_size(tmp_path: Path) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    student = make_student(heads=("latent", "depth")).eval()
    image = rand_image(1, 40, 56)
    with torch.no_grad():
        ref = student(image)
    path = tmp_path / "student.onnx"
    # The legacy tracer turns shapes into tensors: padding and cropping must use ONNX-safe integer arithmetic.
    torch.onnx.export(student, (image,), str(path), dynamo=False, input_names=["image"])
    session = onnxruntime.InferenceSession(str(path))
    latent, depth = session.run(None, {"image": image.numpy()})
    torch.testing.assert_close(torch.from_numpy(latent), ref["latent"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.from_numpy(depth), ref["depth"], atol=1e-4, rtol=1e-4)
