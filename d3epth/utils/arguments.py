"""Typed option groups made from a constructor's signature, and their conversion back to plain data.

A task takes some options as one nested group — the student's architecture, the loss, the teacher's source — that are
keyword arguments of another callable (``DepthStudent``, ``HybridDepthLoss``, ``from_config``). Typing such a group
as a bare ``dict`` would leave its keys unchecked by the config parser; restating the arguments in a hand-written
dataclass would give them two homes. :func:`arguments_dataclass` derives the dataclass from the signature instead,
so the config parser (jsonargparse, behind ``tools/fit.py``) validates every key and its type at every depth, and
the callable stays the single definition of names, types, defaults and (through its docstring) help texts.

Hyper-parameters are stored in checkpoints as plain data (:func:`d3epth.checkpoints.plain_data`), never as these
classes, so a checkpoint loads with ``torch.load(weights_only=True)`` and outlives any change to them.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable
from typing import Any

__all__ = ["arguments_dataclass"]


def arguments_dataclass(target: Callable[..., Any], name: str, module: str, skip: tuple[str, ...] = ()) -> type:
    """A frozen, keyword-only dataclass whose fields are ``target``'s keyword arguments.

    Args:
        target: a class (its ``__init__`` is read) or a function.
        name: the dataclass's name (e.g. ``"StudentConfig"``).
        module: the module it is bound in (``__name__`` of the caller), so it pickles, prints and imports by name.
        skip: arguments left out (set by the code that calls ``target``, not by users).

    Returns:
        The dataclass: field types and defaults are ``target``'s annotations and defaults, its docstring is
        ``target``'s (whose ``Args:`` section becomes the config help).
    """
    function = target.__init__ if inspect.isclass(target) else target  # type: ignore[misc]
    hints = typing.get_type_hints(function)
    fields = []
    for param in inspect.signature(function).parameters.values():
        if param.name in ("self", *skip) or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        spec = dataclasses.field() if param.default is param.empty else dataclasses.field(default=param.default)
        fields.append((param.name, hints.get(param.name, Any), spec))
    cls = dataclasses.make_dataclass(name, fields, frozen=True, kw_only=True)
    cls.__module__ = module
    cls.__doc__ = f"The keyword arguments of ``{target.__qualname__}``.\n\n{inspect.getdoc(target) or ''}"
    return cls
