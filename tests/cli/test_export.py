"""tools/export.py: student → safetensors + config (+ ONNX parity), teacher → diffusers directory; error messages."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch
from diffusers import MarigoldDepthPipeline

from d3epth.models import DiffusionDepthTeacher
from d3epth.models.depth_model import StudentDepthModel
from d3epth.models.export import load_student
from d3epth.tasks import PixelRefinementTask
from tests.helpers.checkpoints import save_task, student, tiny_task
from tests.helpers.tensors import rand_image
from tests.tool_loader import load_tool

export = load_tool("export")


def test_student_export_reloads_identically_and_onnx_matches(
    tmp_path: Path, stage2: tuple[PixelRefinementTask, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    task, ckpt = stage2
    out = tmp_path / "student"
    assert export.main([str(ckpt), "--out", str(out), "--onnx"]) == 0
    printed = capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", "model.onnx"}
    config = json.loads((out / "config.json").read_text())
    assert config["student"] == student("depth") and config["pixel_decoder"] == "light"
    assert config["source"]["task"] == "PixelRefinementTask" and config["d3epth_version"]

    # Reload without Lightning: identical outputs, at a size that needs padding.
    image = rand_image(2, 45, 70)
    with torch.no_grad():
        expected = task(image)
        torch.testing.assert_close(load_student(out)(image), expected, rtol=0, atol=0)

    # The tool's own check is reported with its numbers...
    match = re.search(r"max abs diff ([0-9.e+-]+), tolerance ([0-9.e+-]+) .* -> OK", printed)
    assert match is not None, printed
    assert float(match.group(1)) <= float(match.group(2))
    assert float(match.group(2)) == pytest.approx(config["onnx"]["check"]["tolerance"], rel=1e-2)
    # ...and an independent run at yet another size and batch (dynamic axes) agrees within 1e-4 of the range.
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    image = rand_image(3, 50, 39, seed=5)
    with torch.no_grad():
        expected = task(image)
    (onnx_depth,) = session.run(None, {"image": image.numpy()})
    assert onnx_depth.shape == (3, 1, 50, 39)
    span = float(expected.max() - expected.min())
    assert float((torch.from_numpy(onnx_depth) - expected).abs().max()) <= 1e-4 * span


def test_stage1_student_exports_the_vae_decoder(tmp_path: Path) -> None:
    task = tiny_task("stage1", seed=2, teacher={"config": {"vae_block_out_channels": (8, 8, 8, 8)}}).eval()
    ckpt = save_task(task, tmp_path / "stage1.ckpt")
    out = tmp_path / "student"
    assert export.main([str(ckpt), "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["pixel_decoder"] == "vae"
    assert (out / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    image = rand_image(1, 27, 30)
    with torch.no_grad():
        torch.testing.assert_close(load_student(out)(image), task(image), rtol=1e-6, atol=1e-6)


def test_teacher_directory_exports_a_marigold_pipeline(tmp_path: Path, tiny_marigold_dir: Path) -> None:
    out = tmp_path / "teacher"
    assert export.main([str(tiny_marigold_dir), "--out", str(out), "--default-processing-resolution", "32"]) == 0
    pipeline = MarigoldDepthPipeline.from_pretrained(out, local_files_only=True)
    assert pipeline.default_processing_resolution == 32 and pipeline.default_denoising_steps == 1
    assert pipeline.scheduler.config.timestep_spacing == "trailing"
    teacher = DiffusionDepthTeacher.from_pretrained(tiny_marigold_dir).freeze()
    image = rand_image(1, 24, 32)
    expected = teacher.predict_depth(image).depth
    got = pipeline((image + 1) / 2, num_inference_steps=1, processing_resolution=0, latents=torch.zeros(1, 4, 3, 4))
    torch.testing.assert_close(torch.from_numpy(got.prediction).permute(0, 3, 1, 2), expected, rtol=1e-4, atol=1e-4)


def test_teacher_task_checkpoint_exports(tmp_path: Path) -> None:
    task = tiny_task("teacher")
    with torch.no_grad():  # a "trained" teacher: its UNet differs from the one its config builds
        task.teacher.unet.conv_out.bias.add_(0.5)
    ckpt = save_task(task, tmp_path / "teacher.ckpt")
    out = tmp_path / "exported"
    assert export.main([str(ckpt), "--out", str(out)]) == 0
    pipeline = MarigoldDepthPipeline.from_pretrained(out, local_files_only=True)
    torch.testing.assert_close(pipeline.unet.conv_out.bias, task.teacher.unet.conv_out.bias)


# ------------------------------------------------------------------------------------------------------------ errors
def test_missing_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert export.main([str(tmp_path / "gone.ckpt"), "--out", str(tmp_path / "o")]) == 2
    assert re.search(r"source not found: .*gone\.ckpt", capsys.readouterr().err)


def test_directory_that_is_not_a_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "junk").mkdir()
    assert export.main([str(tmp_path / "junk"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "junk is neither an exported d3epth student" in err


def test_checkpoint_of_the_wrong_kind(tmp_path: Path, tiny_checkpoint, capsys: pytest.CaptureFixture[str]) -> None:
    _, ckpt = tiny_checkpoint("autoencoder", name="ae.ckpt")
    assert export.main([str(ckpt), "--out", str(tmp_path / "o")]) == 2
    assert re.search(r"ae\.ckpt was written by AutoencoderTask, expected", capsys.readouterr().err)


def test_refuses_a_non_empty_output_and_onnx_for_teachers(
    tmp_path: Path,
    stage2: tuple[PixelRefinementTask, Path],
    tiny_marigold_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert export.main([str(stage2[1]), "--out", str(out)]) == 2
    assert "is not empty (use --overwrite)" in capsys.readouterr().err
    assert export.main([str(stage2[1]), "--out", str(out), "--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "keep me" and (out / "model.safetensors").is_file()
    assert export.main([str(tiny_marigold_dir), "--out", str(tmp_path / "t"), "--onnx"]) == 2
    assert "--onnx exports students" in capsys.readouterr().err


def test_missing_onnx_extra_is_explained(
    tmp_path: Path,
    stage2: tuple[PixelRefinementTask, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    assert export.main([str(stage2[1]), "--out", str(tmp_path / "o"), "--onnx"]) == 2
    assert "pip install -e '.[onnx]'" in capsys.readouterr().err


def test_onnx_trace_size_of_stride_multiples_is_refused_and_leaves_no_graph(
    tmp_path: Path, stage2: tuple[PixelRefinementTask, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Traced at a size needing no padding, the graph would fail at every other size: one line, no model.onnx."""
    pytest.importorskip("onnxruntime")
    multiple = StudentDepthModel(stage2[0].student).size_multiple
    out = tmp_path / "o"
    args = [str(stage2[1]), "--out", str(out), "--onnx", "--onnx-size", str(2 * multiple), str(3 * multiple)]
    assert export.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ONNX trace size") and "multiples of the student's size multiple" in err
    assert "\n" not in err and not (out / "model.onnx").exists()
    # One side off the multiple keeps the padding in the graph: accepted and checked at other sizes.
    assert export.main([*args[:-2], str(2 * multiple), str(3 * multiple + 1), "--overwrite"]) == 0
    assert (out / "model.onnx").is_file()
