"""Load a script from ``tools/`` as a module, so tests call its ``main(argv)`` in-process."""

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
