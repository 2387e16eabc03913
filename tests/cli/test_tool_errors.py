"""Every tool turns a user error into one line on stderr and exit status 2, one case of each kind it can meet:
arguments / config, data, checkpoint, file system. ``--debug`` or ``D3EPTH_DEBUG=1`` shows the traceback instead."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import CONF
from tests.helpers.data import write_hypersim, write_nyu, write_vkitti2
from tests.tool_loader import load_tool


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Read-only inputs shared by the cases: tiny datasets, a corrupt checkpoint, a file, an image, a bad config."""
    root = tmp_path_factory.mktemp("inputs")
    write_hypersim(root / "hypersim", counts={"train": 4, "val": 2}, size=(32, 32))
    write_nyu(root / "nyu", n=2, size=(24, 32))
    write_vkitti2(root / "vkitti2", size=(16, 32))
    (root / "corrupt.ckpt").write_bytes(b"PK\x03\x04\x00 truncated")  # binary, as a torn .ckpt is
    (root / "a_file").write_text("x")
    (root / "image.png").write_bytes(next((root / "hypersim").rglob("rgb_*.png")).read_bytes())
    (root / "bad.yaml").write_text("trainer: {max_stepz: 2}\n")
    return root


@pytest.fixture
def files(inputs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stage2: tuple) -> dict[str, str]:
    """Paths the cases use (outputs under this test's ``tmp_path``); the configs' data roots from the environment."""
    monkeypatch.setenv("D3EPTH_TEST_HYPERSIM", str(inputs / "hypersim"))
    monkeypatch.setenv("D3EPTH_TEST_VKITTI2", str(inputs / "vkitti2"))
    monkeypatch.setenv("D3EPTH_TEST_LOGS", str(tmp_path / "logs"))
    return {
        "tmp": str(tmp_path),
        "ckpt": str(stage2[1]),
        "corrupt": str(inputs / "corrupt.ckpt"),
        "file": str(inputs / "a_file"),
        "missing": str(tmp_path / "missing"),
        "image": str(inputs / "image.png"),
        "nyu": str(inputs / "nyu"),
        "bad": str(inputs / "bad.yaml"),
        "fit": str(CONF / "fit_tiny.yaml"),
        "cache": str(CONF / "cache_teacher_stage1.yaml"),
    }


# (tool, arguments, a piece of the one line). Placeholders are the keys of the `files` fixture.
CASES = {
    "fit: config": ("fit", ["--config", "{fit}", "--trainer.max_stepz=2"], "unknown option '--trainer.max_stepz'"),
    "fit: data": (
        "fit",
        ["--config", "{fit}", "--data.init_args.train.hypersim.init_args.root={missing}"],
        "HypersimDataset: root folder {missing} does not exist",
    ),
    "fit: value": (
        "fit",
        ["--config", "{fit}", "--model.init_args.lr=-1"],
        "model.init_args.lr: must be > 0, got -1.0",
    ),
    "fit: checkpoint option": ("fit", ["--config", "{fit}", "--checkpoint.mode=mn"], "checkpoint.mode: expected 'min'"),
    "fit: data value": (
        "fit",
        ["--config", "{fit}", "--data.init_args.batch_size=0"],
        "data.init_args.batch_size: must be >= 1, got 0",
    ),
    "fit: checkpoint": (
        "fit",
        ["--config", "{fit}", "--model.init_args.init_from={corrupt}"],
        "model.init_args.init_from: cannot read checkpoint {corrupt}",
    ),
    "fit: file system": ("fit", ["--config", "{fit}", "--logger.save_dir={file}"], "{file}"),
    "evaluate: config": ("evaluate", ["{ckpt}", "--config", "{bad}"], "unknown key 'trainer.max_stepz'"),
    "evaluate: data": ("evaluate", ["{ckpt}", "--benchmark", "nyu", "--nyu-root", "{missing}"], "{missing}"),
    "evaluate: checkpoint": (
        "evaluate",
        ["{corrupt}", "--benchmark", "nyu", "--nyu-root", "{nyu}"],
        "cannot read checkpoint {corrupt}",
    ),
    "evaluate: file system": (
        "evaluate",
        ["{ckpt}", "--benchmark", "nyu", "--nyu-root", "{nyu}", "--out", "{file}"],
        "{file}",
    ),
    "predict: arguments": (
        "predict",
        ["{image}", "-m", "{ckpt}", "-o", "{tmp}/out", "--batch-size", "0"],
        "--batch-size must be >= 1",
    ),
    "predict: data": ("predict", ["{missing}", "-m", "{ckpt}", "-o", "{tmp}/out"], "{missing}"),
    "predict: checkpoint": ("predict", ["{image}", "-m", "{corrupt}", "-o", "{tmp}/out"], "cannot read checkpoint"),
    "predict: file system": ("predict", ["{image}", "-m", "{ckpt}", "-o", "{file}"], "{file}"),
    "export: arguments": ("export", ["{ckpt}", "--out", "{tmp}/exp", "--opset", "10"], "--opset must be >= 17"),
    "export: checkpoint": ("export", ["{corrupt}", "--out", "{tmp}/exp"], "cannot read checkpoint {corrupt}"),
    "export: file system": ("export", ["{ckpt}", "--out", "{file}"], "output {file} exists and is not a directory"),
    "cache_teacher: config": (
        "cache_teacher",
        ["--config", "{cache}", "--out", "{tmp}/c", "--trainer.max_stepz=1"],
        "unknown option '--trainer.max_stepz'",
    ),
    "cache_teacher: data": (
        "cache_teacher",
        ["--config", "{cache}", "--out", "{tmp}/c", "--data.init_args.train.hypersim.init_args.root={missing}"],
        "HypersimDataset: root folder {missing} does not exist",
    ),
    "cache_teacher: checkpoint": (
        "cache_teacher",
        ["--config", "{cache}", "--out", "{tmp}/c", "--model.init_args.teacher={corrupt}"],
        "cannot read checkpoint {corrupt}",
    ),
    "cache_teacher: file system": ("cache_teacher", ["--config", "{cache}", "--out", "{file}"], "{file}"),
    "prepare_hypersim: arguments": (
        "prepare_hypersim",
        ["--dataset-dir", "{tmp}", "--output-dir", "{tmp}/o", "--workers", "0"],
        "--workers must be >= 1",
    ),
    "prepare_hypersim: data": (
        "prepare_hypersim",
        ["--dataset-dir", "{missing}", "--output-dir", "{tmp}/o"],
        "{missing}",
    ),
    "make_sample_data: arguments": (
        "make_sample_data",
        ["--out", "{tmp}/s", "--workers", "0"],
        "--workers must be >= 1",
    ),
    "make_sample_data: file system": ("make_sample_data", ["--out", "{file}", "--datasets", "nyuv2"], "{file}"),
    "quickstart: arguments": ("quickstart", ["--steps-scale", "0"], "--steps-scale must be > 0"),
}


def fill(text: str, files: dict[str, str]) -> str:
    for key, value in files.items():
        text = text.replace("{" + key + "}", value)
    return text


@pytest.mark.parametrize("case", list(CASES))
def test_a_user_error_is_one_line_and_status_2(case: str, files: dict[str, str], capsys) -> None:
    tool, args, expected = CASES[case]
    assert load_tool(tool).main([fill(arg, files) for arg in args]) == 2
    err = capsys.readouterr().err.splitlines()
    errors = [line for line in err if line.startswith("error: ")]
    assert len(errors) == 1 and fill(expected, files) in errors[0], err
    assert not any("Traceback" in line for line in err)


def test_debug_shows_the_traceback(files: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    export = load_tool("export")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        export.main([files["corrupt"], "--out", files["tmp"] + "/exp", "--debug"])
    monkeypatch.setenv("D3EPTH_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        load_tool("predict").main([files["missing"], "-m", files["ckpt"], "-o", files["tmp"] + "/out"])
