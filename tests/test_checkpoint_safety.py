"""No loader unpickles arbitrary objects: a checkpoint carrying a pickle payload is refused at every entry point.

Each test poisons a copy of a tiny checkpoint with :class:`tests.helpers.checkpoints.MarkerPayload` (whose unpickling
creates a marker directory), hands it to one entry point, and checks the one-line ``CheckpointError`` (or the tool's
one-line ``error:`` and exit code 2) and that the marker was never created.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from d3epth.checkpoints import STUDENT, load_task_checkpoint, plain_data, tasks_with
from d3epth.cli import evaluate, export, predict
from d3epth.errors import CheckpointError
from d3epth.inference import load_predictor, load_student_checkpoint, load_task
from d3epth.models.teacher import load_teacher
from tests.helpers.checkpoints import poisoned_copy, save_task, tiny_task
from tests.helpers.data import write_nyu

REFUSAL = "it holds objects other than tensors and plain data (refused: loading it could run code)"


@pytest.fixture
def poison(tmp_path: Path, tiny_checkpoint) -> Callable[[str], tuple[Path, Path]]:
    """``poison(kind) -> (poisoned checkpoint, marker)``: a payload-carrying copy of the tiny ``kind`` checkpoint."""

    def make(kind: str) -> tuple[Path, Path]:
        marker = tmp_path / "payload-ran"
        return poisoned_copy(tiny_checkpoint(kind)[1], tmp_path / f"poisoned-{kind}.ckpt", marker), marker

    return make


def test_the_payload_runs_when_unpickled_unrestricted(poison) -> None:
    """The check of the checks: the poisoned file really does run code under a plain unpickler."""
    path, marker = poison("stage2_light")
    torch.load(path, map_location="cpu", weights_only=False)
    assert marker.is_dir()


#: Entry point → (tiny checkpoint kind it takes, call with the poisoned path, what the message names it as).
ENTRY_POINTS: dict[str, tuple[str, Callable[[Path], Any], str]] = {
    "load_task_checkpoint": ("stage2_light", lambda p: load_task_checkpoint(p, tasks_with(STUDENT), "here"), "here"),
    "stage2_init_from": (
        "stage2_light",
        lambda p: tiny_task("stage2_light", init_from=str(p)),
        "model.init_args.init_from",
    ),
    "stage1_teacher_checkpoint": ("teacher", lambda p: tiny_task("stage1", teacher=str(p)), "teacher"),
    "teacher_vae_from": ("autoencoder", lambda p: load_teacher({"config": {}, "vae_from": str(p)}), "vae_from"),
    "load_student_checkpoint": ("stage2_light", load_student_checkpoint, "model"),
    "load_task": ("stage2_light", load_task, "model"),
    "load_predictor_student": ("stage2_light", load_predictor, "model"),
    "load_predictor_teacher": ("teacher", load_predictor, "model"),
}


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_library_entry_points_refuse_a_payload(entry: str, poison) -> None:
    kind, call, purpose = ENTRY_POINTS[entry]
    path, marker = poison(kind)
    with pytest.raises(CheckpointError) as caught:
        call(path)
    message = str(caught.value)
    assert "\n" not in message
    assert re.match(rf"\S*{re.escape(purpose)}\S*: cannot read checkpoint {re.escape(str(path))}: ", message)
    assert REFUSAL in message and "posix.mkdir" in message  # names the global it refused to import
    assert not marker.exists()


def _predict(path: Path, tmp: Path) -> int:
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp / "image.png")
    return predict.main([str(tmp / "image.png"), "--model", str(path), "--out", str(tmp / "out"), "--quiet"])


def _evaluate(path: Path, tmp: Path) -> int:
    write_nyu(tmp / "nyu", n=1)
    return evaluate.main([str(path), "--benchmark", "nyu", "--nyu-root", str(tmp / "nyu"), "--out", str(tmp / "o")])


def _export(path: Path, tmp: Path) -> int:
    return export.main([str(path), "--out", str(tmp / "exported")])


@pytest.mark.parametrize("tool", [_predict, _evaluate, _export], ids=["predict", "evaluate", "export"])
def test_tools_refuse_a_payload_in_one_line(
    tool: Callable[[Path, Path], int], poison, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, marker = poison("stage2_light")
    assert tool(path, tmp_path) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and f"cannot read checkpoint {path}: {REFUSAL}" in err[0]
    assert not marker.exists()


def test_unreadable_checkpoint_is_one_line_and_says_why(tmp_path: Path, tiny_checkpoint) -> None:
    """A damaged file is not called a code-execution risk: truncated, foreign and payload files get their own cause."""
    whole = tiny_checkpoint("stage2_light")[1].read_bytes()
    files = {
        "truncated.ckpt": (whole[: len(whole) // 2], "it is truncated or damaged (", "copy it again"),
        "broken-zip.ckpt": (b"PK\x03\x04 not really a zip", "it is truncated or damaged (", "copy it again"),
        "notes.ckpt": (b"not a checkpoint\n", "it is not a PyTorch checkpoint", "name the .ckpt file a run wrote"),
    }
    for name, (content, cause, remedy) in files.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(CheckpointError, match=rf"^here: cannot read checkpoint {re.escape(str(path))}: ") as e:
            load_task_checkpoint(path, tasks_with(STUDENT), "here")
        message = str(e.value)
        assert "\n" not in message and cause in message and remedy in message, message
        assert REFUSAL not in message and len(message) < 300, message


def test_hyper_parameters_are_saved_as_plain_data(tmp_path: Path, stage2: tuple) -> None:
    """Paths and numpy numbers passed from Python are written as str / float, so weights_only=True reads them."""
    task = tiny_task("stage2_light", init_from=Path(stage2[1]), lr=np.float64(1e-3), weight_decay=np.float32(0.5))
    saved = torch.load(save_task(task, tmp_path / "t.ckpt"), map_location="cpu", weights_only=True)
    hparams = saved["hyper_parameters"]
    assert hparams["init_from"] == str(stage2[1]) and type(hparams["init_from"]) is str
    assert hparams["lr"] == 1e-3 and type(hparams["lr"]) is float and hparams["weight_decay"] == 0.5


def test_plain_data_leaves_only_builtin_types() -> None:
    from omegaconf import OmegaConf

    value = {
        "a": (1, Path("/x"), np.float32(0.5)),
        "b": OmegaConf.create({"c": [2, "${x}"], "x": 1}),
        3: np.arange(2),
        "t": torch.ones(1),
    }
    plain = plain_data(value)
    assert plain == {"a": [1, "/x", 0.5], "b": {"c": [2, 1], "x": 1}, "3": [0, 1], "t": value["t"]}
    assert plain["t"] is value["t"] and type(plain["a"][2]) is float
    buffer = io.BytesIO()
    torch.save(plain, buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True)["b"] == {"c": [2, 1], "x": 1}
