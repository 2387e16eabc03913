"""The one way tests run a tool through its ``tools/<name>.py`` file: import the file and call its ``main(argv)``;
and likewise a benchmark through its ``benchmarks/<name>.py`` file.

``tools/*.py`` are shims around ``d3epth.cli.<name>.main``; a test of a tool's internals imports ``d3epth.cli.<name>``
directly, and every tool keeps at least one test that goes through its file here (the README's command).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

TOOLS = Path(__file__).resolve().parents[1] / "tools"
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_tool(name: str) -> ModuleType:
    """Import ``tools/<name>.py`` under the module name ``tools_<name>``."""
    spec = importlib.util.spec_from_file_location(f"tools_{name}", TOOLS / f"{name}.py")
    assert spec is not None and spec.loader is not None, f"no tool {name!r} in {TOOLS}"
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_benchmark(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` under its own name, as the benchmarks import one another.

    The module is registered in ``sys.modules`` (dataclasses resolve annotations through it), so a benchmark that
    imports this one by name gets the same module object.
    """
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None, f"no benchmark {name!r} in {BENCHMARKS}"
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
