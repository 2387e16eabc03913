"""Moved to :mod:`d3epth.inference.evaluation`; this old path forwards to it, for code written against it.

A module-level ``__getattr__`` (PEP 562) looks every name up in the new module, so no name is listed twice.
"""

from typing import Any

import d3epth.inference.evaluation as _moved


def __getattr__(name: str) -> Any:
    return getattr(_moved, name)


def __dir__() -> list[str]:
    return dir(_moved)
