"""Run configs on LightningCLI: ``base:`` composition, and one exact line for every kind of config error."""

from __future__ import annotations

from pathlib import Path

import pytest

from d3epth.cli.config_files import expand_config_arguments
from d3epth.cli.trainer import build_cli
from d3epth.data import HypersimDataset
from d3epth.errors import ConfigError
from tests.helpers import CONF
from tests.tool_loader import load_tool

TINY = str(CONF / "fit_tiny.yaml")
BASE = str(CONF / "../../configs/base.yaml")
SUBCLASS_ONLY = "a config may only name classes of the expected kind (functions and other callables are never called"


class UserDataset(HypersimDataset):
    """A user's own dataset class on PYTHONPATH."""


@pytest.fixture(autouse=True)
def _env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("D3EPTH_TEST_HYPERSIM", str(tmp_path / "hypersim"))  # parsing builds nothing: no data needed
    monkeypatch.setenv("D3EPTH_TEST_LOGS", str(tmp_path / "logs"))


def write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def test_base_files_merge_underneath_in_order(tmp_path: Path) -> None:
    write(tmp_path / "base.yaml", "seed_everything: 1\ntrainer: {max_steps: 5, log_every_n_steps: 5}\n")
    write(tmp_path / "sub" / "mid.yaml", "base: ../base.yaml\ntrainer: {max_steps: 10, precision: bf16-mixed}\n")
    run = write(tmp_path / "sub" / "run.yaml", f"base: [mid.yaml, {TINY}]\ntrainer: {{max_steps: 20}}\n")
    config = build_cli(["--config", run], parse_only=True).config
    assert config.trainer.max_steps == 20  # the file itself wins over its bases
    assert config.trainer.precision == "32-true"  # fit_tiny.yaml's base (configs/base.yaml) comes after mid.yaml
    assert config.trainer.log_every_n_steps == 1  # fit_tiny.yaml, the last base
    assert config.seed_everything == 2024 and config.run_name == "tiny"
    _, sources, stem = expand_config_arguments(["--config", run])
    labels = [Path(s.label).name for s in sources]
    assert labels == ["base.yaml", "mid.yaml", "base.yaml", "fit_tiny.yaml", "run.yaml", "command line"]
    assert stem == "run"


def test_run_name_defaults_to_the_file_stem(tmp_path: Path) -> None:
    run = write(tmp_path / "my_run.yaml", f"base: {TINY}\nrun_name: null\n")
    cli = build_cli(["--config", run], parse_only=True)
    cli.before_instantiate_classes()
    assert cli.config.run_name == "my_run"


def test_environment_interpolation_with_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = write(tmp_path / "env.yaml", f"base: {TINY}\nmodel:\n  init_args:\n    lr: ${{oc.env:D3EPTH_TEST_LR,0.25}}\n")
    assert build_cli(["--config", run], parse_only=True).config.model.init_args.lr == 0.25
    monkeypatch.setenv("D3EPTH_TEST_LR", "0.5")
    assert build_cli(["--config", run], parse_only=True).config.model.init_args.lr == 0.5


def test_a_users_own_subclass_is_accepted(tmp_path: Path) -> None:
    run = write(
        tmp_path / "u.yaml",
        f"data:\n  init_args:\n    train:\n      hypersim:\n        class_path: {__name__}.UserDataset\n",
    )
    config = build_cli(["--config", TINY, "--config", run], parse_only=True).config
    assert config.data.init_args.train["hypersim"].class_path == f"{__name__}.UserDataset"


# One row per kind of error: (arguments after --config fit_tiny.yaml, or "--alone" and all arguments; files to write
# {name: text}; the exact line). "{tmp}" is tmp_path.
ERRORS = {
    "top-level key": (
        ["--config", "{tmp}/a.yaml"],
        {"a.yaml": "trainr: {max_steps: 2}\n"},
        "{tmp}/a.yaml: unknown key 'trainr.max_steps'; did you mean 'trainer.max_steps'?",
    ),
    "trainer key, command line": (
        ["--trainer.max_stepz=2"],
        {},
        "command line: unknown option '--trainer.max_stepz'; did you mean 'trainer.max_steps'?",
    ),
    "trainer key, file": (
        ["--config", "{tmp}/b.yaml"],
        {"b.yaml": "trainer: {max_stepz: 2}\n"},
        "{tmp}/b.yaml: unknown key 'trainer.max_stepz'; did you mean 'trainer.max_steps'?",
    ),
    "init_args key": (
        ["--config", "{tmp}/c.yaml"],
        {"c.yaml": "model: {init_args: {lrr: 1}}\n"},
        "{tmp}/c.yaml: unknown key 'model.init_args.lrr' (d3epth.tasks.PixelRefinementTask); did you mean 'lr'?",
    ),
    "nested student key": (
        ["--config", "{tmp}/d.yaml"],
        {"d.yaml": "model: {init_args: {student: {backbon: x}}}\n"},
        "{tmp}/d.yaml: unknown key 'model.init_args.student.backbon' (d3epth.models.student.StudentConfig); "
        "did you mean 'backbone'?",
    ),
    "nested loss key": (
        ["--model.init_args.loss.weightin=dwa"],
        {},
        "command line: unknown key 'model.init_args.loss.weightin' (d3epth.losses.hybrid.LossConfig); "
        "did you mean 'weighting'?",
    ),
    "nested teacher spec key": (
        ["--config", "{tmp}/m.yaml"],
        {"m.yaml": "model: {init_args: {teacher: {pth: x}}}\n"},
        "{tmp}/m.yaml: unknown key 'model.init_args.teacher.pth' (d3epth.models.teacher.sources.TeacherSpec); "
        "did you mean 'path'?",
    ),
    "dataset key": (
        ["--config", "{tmp}/e.yaml"],
        {"e.yaml": "data: {init_args: {val: {hypersim: {init_args: {rot: x}}}}}\n"},
        "{tmp}/e.yaml: unknown key 'data.init_args.val.hypersim.init_args.rot' (d3epth.data.HypersimDataset); "
        "did you mean 'root'?",
    ),
    "type, top level": (
        ["--seed_everything=abc"],
        {},
        "command line: seed_everything: expected bool or int, got 'abc'",
    ),
    "type, trainer": (["--trainer.max_steps=abc"], {}, "command line: trainer.max_steps: expected int, got 'abc'"),
    "type, init_args": (
        ["--config", "{tmp}/f.yaml"],
        {"f.yaml": "model: {init_args: {lr: fast}}\n"},
        "{tmp}/f.yaml: model.init_args.lr: expected float, got 'fast'",
    ),
    "type, student": (
        ["--model.init_args.student.decoder_channels=wide"],
        {},
        "command line: model.init_args.student.decoder_channels: expected int, got 'wide'",
    ),
    "type, loss choice": (
        ["--model.init_args.loss.data_term=l3"],
        {},
        "command line: model.init_args.loss.data_term: expected one of 'l1', 'l2', got 'l3'",
    ),
    "type, dataset list item": (
        ["--config", "{tmp}/g.yaml"],
        {"g.yaml": "data: {init_args: {train: {hypersim: {init_args: {resize: [1, a]}}}}}\n"},
        "{tmp}/g.yaml: data.init_args.train.hypersim.init_args.resize.1: expected int, got 'a'",
    ),
    "missing required argument": (
        ["--alone", "--config", "{tmp}/h.yaml"],
        {"h.yaml": "model: {class_path: d3epth.tasks.LatentDistillationTask, init_args: {student: {backbone: x}}}\n"},
        "{tmp}/h.yaml: model (d3epth.tasks.LatentDistillationTask): missing required argument 'teacher'",
    ),
    "missing base file": (
        ["--alone", "--config", "{tmp}/i.yaml"],
        {"i.yaml": "base: nope.yaml\n"},
        "config file not found: {tmp}/nope.yaml",
    ),
    "missing config file": (["--alone", "--config", "{tmp}/none.yaml"], {}, "config file not found: {tmp}/none.yaml"),
    "YAML syntax": (
        ["--alone", "--config", "{tmp}/j.yaml"],
        {"j.yaml": "model: {init_args: [\n"},
        "cannot parse {tmp}/j.yaml: while parsing a flow node expected the node content, but found '<stream end>' "
        'in "<unicode string>", line 2, column 1: ^',
    ),
    "cyclic base": (
        ["--alone", "--config", "{tmp}/x.yaml"],
        {"x.yaml": "base: y.yaml\n", "y.yaml": "base: x.yaml\n"},
        "cyclic base: {tmp}/x.yaml -> {tmp}/y.yaml -> {tmp}/x.yaml",
    ),
    "old override syntax": (
        ["trainer.max_steps=2"],
        {},
        "command line: 'trainer.max_steps=2' is not an option; overrides are LightningCLI options, "
        "e.g. --trainer.max_steps=2",
    ),
    "unknown class": (
        ["--model.class_path=d3epth.tasks.PixelRefinementTsk"],
        {},
        "command line: model.class_path: module 'd3epth.tasks' has no class 'PixelRefinementTsk'; "
        "did you mean 'PixelRefinementTask'?",
    ),
    "refused: a function as the model": (
        ["--model.class_path=d3epth.models.export.save_file"],
        {},
        "command line: model.class_path: 'd3epth.models.export.save_file' is not a subclass of LightningModule; "
        f"{SUBCLASS_ONLY} from a config)",
    ),
    "refused: os.system as a dataset": (
        ["--config", "{tmp}/k.yaml"],
        {"k.yaml": "data: {init_args: {train: {hypersim: {class_path: os.system}}}}\n"},
        "{tmp}/k.yaml: data.init_args.train.hypersim.class_path: 'os.system' is not a subclass of Dataset; "
        f"{SUBCLASS_ONLY} from a config)",
    ),
    "refused: a function as a transform": (
        ["--config", "{tmp}/l.yaml"],
        {
            "l.yaml": "data:\n  init_args:\n    train_transforms:\n"
            "      - class_path: d3epth.models.export.remove_export_artefacts\n"
        },
        "{tmp}/l.yaml: data.init_args.train_transforms.0.class_path: 'd3epth.models.export.remove_export_artefacts' "
        f"is not a subclass of Transform; {SUBCLASS_ONLY} from a config)",
    ),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_every_config_error_is_one_exact_line(case: str, tmp_path: Path) -> None:
    extra, files, expected = ERRORS[case]
    for name, text in files.items():
        write(tmp_path / name, text)
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in extra]
    argv = args[1:] if args[:1] == ["--alone"] else ["--config", TINY, *args]  # most rows: on top of a valid run
    with pytest.raises(ConfigError) as info:
        build_cli(argv, parse_only=True)
    assert str(info.value) == expected.replace("{tmp}", str(tmp_path))


def test_a_literal_choice_lists_the_values_and_suggests_the_closest() -> None:
    """trainer.precision is a union of Literals: the message names them (was 'expected int'), and the nearest."""
    with pytest.raises(ConfigError) as info:
        build_cli(["--config", TINY, "--trainer.precision=bf17"], parse_only=True)
    message = str(info.value)
    assert message.startswith("command line: trainer.precision: expected one of ")
    assert "'bf16-mixed'" in message and "'32-true'" in message and "expected int" not in message
    assert message.endswith("got 'bf17'; did you mean 'bf16'?") and "\n" not in message


def test_tools_print_one_line_and_touch_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Through tools/fit.py: exit status 2, one line on stderr, no run directory; --debug shows the traceback."""
    target = tmp_path / "victim.safetensors"
    target.write_bytes(b"keep")
    fit = load_tool("fit")
    assert fit.main(["--config", TINY, "--model.class_path=d3epth.models.export.save_file"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "is not a subclass of LightningModule" in err
    assert target.read_bytes() == b"keep" and not (tmp_path / "logs").exists()
    with pytest.raises(ConfigError):
        fit.main(["--config", TINY, "--trainer.max_steps=abc", "--debug"])


# base.yaml alone has no data: it is only ever merged under a run config.
SHIPPED = sorted(p.relative_to(CONF.parents[1]) for p in (CONF.parents[1] / "configs").rglob("*.yaml"))
SHIPPED = [p for p in SHIPPED if p.name != "base.yaml"]


@pytest.mark.parametrize("config", [str(p) for p in SHIPPED])
def test_every_shipped_config_validates(config: str) -> None:
    """Every config in configs/ parses and type-checks as shipped (data configs without a model)."""
    cli = build_cli(["--config", str(CONF.parents[1] / config)], parse_only=True)
    assert cli.config.data.class_path == "d3epth.data.DepthDataModule"
    if Path(config).name != "data.yaml":
        assert cli.config.model.class_path.startswith("d3epth.tasks.")
