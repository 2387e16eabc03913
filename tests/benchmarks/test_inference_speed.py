"""benchmarks/inference_speed.py --quick: every section runs and results.json holds what the README quotes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.data import write_nyu
from tests.tool_loader import BENCHMARKS, load_benchmark


def test_quick_run_writes_every_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # as when run as a script: it imports student_speed
    module = load_benchmark("inference_speed")
    write_nyu(tmp_path / "data" / "nyuv2", n=2, size=(48, 64))
    out = tmp_path / "out"
    assert module.main(["--quick", "--no-ort", "--data", str(tmp_path / "data"), "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["peak"]) == {"fp32", "bf16"} and results["peak"]["fp32"]["gflops_per_s"] > 0
    arms = results["student"]["arms"]
    assert set(arms) == {
        "before: fp32 NCHW eager unfused",
        "eager fp32 fused channels_last",
        "  same, upsampled maps materialised (fp32)",
        "  same, ATen GELU + grouped convs (fp32)",
        "eager bf16 fused channels_last",
        "  same, upsampled maps materialised (bf16)",
        "  same, ATen GELU + grouped convs (bf16)",
        "eager bf16 fused channels_last, batch 4",
        "eager bf16 autocast fused channels_last",
    }
    for arm in arms.values():
        assert len(arm["times_ms"]) == 2 and arm["peak_share"] > 0 and arm["peak_share_per_round"] > 0
    assert results["top_ops"] and results["top_ops"][0]["self_ms"] > 0
    # oneDNN's convolutions, their FLOPs read from its verbose lines, are the network's FLOPs by torch's own counter
    # (which also counts the head's small weight einsum, run by oneDNN as a matmul).
    groups = results["onednn"]["groups"]
    conv_gflop = sum(g["gflop"] for name, g in groups.items() if name.endswith("convolution"))
    assert conv_gflop == pytest.approx(results["student"]["gflop"], rel=0.01)
    assert all(g["ms"] > 0 and g["count"] == int(g["count"]) for g in groups.values())
    (accuracy,) = results["accuracy"].values()
    assert accuracy["images"] == 2 and 0 <= accuracy["median_rel_error"] <= accuracy["max_rel_error"] < 1
    assert accuracy["abs_rel_change"] == pytest.approx(accuracy["abs_rel_bf16"] - accuracy["abs_rel_fp32"])


def test_materialised_upsampling_keeps_the_outputs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The benchmark's two-step arm runs the same function as the default arm, with the upsampled maps written."""
    import copy

    import torch

    from d3epth.models.depth_model import StudentDepthModel
    from d3epth.models.student import TINY_BACKBONE, DepthStudent
    from d3epth.models.upsampling import BilinearUpsampleConv2d

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    module = load_benchmark("inference_speed")
    torch.manual_seed(0)
    model = StudentDepthModel(DepthStudent(TINY_BACKBONE, heads=("depth",), decoder_channels=16)).double().eval()
    assert any(isinstance(m, BilinearUpsampleConv2d) for m in model.modules())
    two_step = module.materialise_upsampling(copy.deepcopy(model))
    assert not any(isinstance(m, BilinearUpsampleConv2d) for m in two_step.modules())
    image = torch.rand(1, 3, 45, 70, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(two_step(image), model(image), atol=1e-10, rtol=0)
