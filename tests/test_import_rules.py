"""The package's dependency rules (docs/design.md, "Layout and dependency rules"), checked on the source itself.

Imports point downwards: tools → cli → tasks / inference → models, losses, metrics, data → errors, checkpoints.
Nothing below ``tasks/`` imports Lightning or the upper layers (the DataModule aside), at module level or inside a
function, and no file in the package is longer than 500 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "d3epth"

#: Layers that must stay free of Lightning and of everything above them.
LOWER_LAYERS = ("models", "losses", "metrics", "data", "utils")
#: The one module of a lower layer allowed to use Lightning: the DataModule is a Lightning class by definition.
LIGHTNING_ALLOWED = {"data/datamodule.py"}
FORBIDDEN_FOR_LOWER = ("lightning", "pytorch_lightning", "d3epth.tasks", "d3epth.cli", "d3epth.inference")
#: errors.py and checkpoints.py sit at the bottom: they import nothing of d3epth but errors.
BOTTOM = ("errors.py", "checkpoints.py")


def imported_modules(path: Path, package: str | None = None) -> set[str]:
    """Every module an ``import`` / ``from ... import`` anywhere in ``path`` names (relative imports resolved).

    ``package`` is the dotted package ``path`` belongs to (derived from its place under ``d3epth/`` by default).
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    if package is None:
        package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                names.add(f"{base}.{node.module}" if node.module else base)
            elif node.module:
                names.add(node.module)
    return names


def violates(module: str, forbidden: tuple[str, ...]) -> bool:
    return any(module == f or module.startswith(f + ".") for f in forbidden)


def package_files(*layers: str) -> list[Path]:
    return sorted(p for layer in layers for p in (PACKAGE / layer).rglob("*.py"))


def test_imported_modules_sees_function_level_and_relative_imports(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("import torch\ndef f():\n    import lightning.pytorch as pl\n    from . import student\n")
    probe.write_text(probe.read_text() + "    from ..tasks.base import DepthTask\n")
    found = imported_modules(probe, package="d3epth.models")
    assert found == {"torch", "lightning.pytorch", "d3epth.models", "d3epth.tasks.base"}
    assert violates("lightning.pytorch", FORBIDDEN_FOR_LOWER) and violates("d3epth.tasks.base", FORBIDDEN_FOR_LOWER)
    assert not violates("d3epth.taskset", FORBIDDEN_FOR_LOWER)


@pytest.mark.parametrize("path", package_files(*LOWER_LAYERS), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_lower_layers_import_no_lightning_and_nothing_above(path: Path) -> None:
    relative = path.relative_to(PACKAGE).as_posix()
    forbidden = FORBIDDEN_FOR_LOWER
    if relative in LIGHTNING_ALLOWED:
        forbidden = tuple(f for f in forbidden if "lightning" not in f)
    bad = sorted(m for m in imported_modules(path) if violates(m, forbidden))
    assert not bad, f"{relative} imports {bad}"


@pytest.mark.parametrize("name", BOTTOM)
def test_errors_and_checkpoints_are_the_bottom_layer(name: str) -> None:
    d3epth_imports = {m for m in imported_modules(PACKAGE / name) if m.startswith("d3epth")}
    assert d3epth_imports <= {"d3epth.errors"}
    assert not any(violates(m, ("lightning", "pytorch_lightning")) for m in imported_modules(PACKAGE / name))


def test_no_package_file_over_500_lines() -> None:
    long = {
        p.relative_to(PACKAGE).as_posix(): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 500
    }
    assert not long, f"files over 500 lines: {long}"
