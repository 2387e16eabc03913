"""tools/*.py are thin shims over d3epth.cli; the old module paths under d3epth.tasks still resolve."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from tests.tool_loader import TOOLS, load_tool

TOOL_NAMES = tuple(sorted(path.stem for path in TOOLS.glob("*.py")))


@pytest.mark.parametrize("name", TOOL_NAMES)
def test_tool_is_a_shim_around_its_cli_module(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    tree = ast.parse((TOOLS / f"{name}.py").read_text())
    docstring = ast.get_docstring(tree)
    assert docstring and "Usage::" in docstring and f"python tools/{name}.py" in docstring
    imports = [node for node in tree.body if isinstance(node, ast.ImportFrom)]
    assert [(node.module, [a.name for a in node.names]) for node in imports] == [(f"d3epth.cli.{name}", ["main"])]
    tool = load_tool(name)
    assert tool.main is importlib.import_module(f"d3epth.cli.{name}").main
    with pytest.raises(SystemExit) as exit_info:
        tool.main(["--help"])
    assert exit_info.value.code == 0
    assert f"usage: tools/{name}.py" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("old", "new", "names"),
    [
        ("d3epth.tasks.predictor", "d3epth.inference.predictor", ["load_predictor", "DepthPredictor", "load_task"]),
        ("d3epth.tasks.evaluation", "d3epth.inference.evaluation", ["evaluate", "time_per_image", "format_table"]),
        ("d3epth.tasks.trainer", "d3epth.cli.trainer", ["fit", "D3epthCLI", "LastCheckpoint", "CONFIG_KEY"]),
    ],
)
def test_old_module_paths_reexport_the_moved_ones(old: str, new: str, names: list[str]) -> None:
    old_module, new_module = importlib.import_module(old), importlib.import_module(new)
    assert "moved" in (old_module.__doc__ or "").lower()
    for name in names:
        assert getattr(old_module, name) is getattr(new_module, name)


def test_tests_reach_tools_only_through_the_loader() -> None:
    """No test imports tools/ as a package or edits sys.path: tests.tool_loader or d3epth.cli.<name> only."""
    tests = Path(__file__).resolve().parents[1]
    offenders = []
    for path in sorted(tests.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            where = f"{path.relative_to(tests)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Import):
                offenders += [f"{where} import {a.name}" for a in node.names if a.name.split(".")[0] == "tools"]
            elif isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "tools":
                offenders.append(f"{where} from {node.module} import ...")
            elif isinstance(node, ast.Attribute) and ast.unparse(node) in ("sys.path.insert", "sys.path.append"):
                offenders.append(f"{where} {ast.unparse(node)}")
    assert TOOL_NAMES and not offenders, offenders
