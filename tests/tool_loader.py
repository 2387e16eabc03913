"""The one way tests run a tool through its ``tools/<name>.py`` file: import the file and call its ``main(argv)``.

``tools/*.py`` are shims around ``d3epth.cli.<name>.main``; a test of a tool's internals imports ``d3epth.cli.<name>``
directly, and every tool keeps at least one test that goes through its file here (the README's command).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def load_tool(name: str) -> ModuleType:
    """Import ``tools/<name>.py`` under the module name ``tools_<name>``."""
    spec = importlib.util.spec_from_file_location(f"tools_{name}", TOOLS / f"{name}.py")
    assert spec is not None and spec.loader is not None, f"no tool {name!r} in {TOOLS}"
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
