"""jsonargparse's nested error reports, told in one line: which source, which key path, what was wrong, the fix.

jsonargparse validates every key and type at every depth, but reports a failure as an indented tree: one level per
option group, class node and union branch, each with its subtypes and the value it was given. Users need the leaf —
the key, the bad value, the expected type or the closest valid key — and where they wrote it. :func:`explain` reads
the tree: it takes the deepest failing branch (skipping the ``None`` alternative every optional group has), rebuilds
the key path from the ``Parser key`` / ``class_path`` levels it passes (mapping keys and list indices, which the tree
leaves out, are recovered from the sources), and names the first source that sets that path.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import re
from collections.abc import Sequence
from typing import Any

from d3epth.cli.config_files import ConfigSource, find_key

__all__ = ["explain"]

_PARSER_KEY = re.compile(r'^(?:- )?Parser key "([^"]+)"(?:\[\d+\])?:')
_CLASS_PATH = re.compile(r"^(?:- )?Problem with given class_path '([^']+)':")
_SUBTYPES_CONTAINER = re.compile(r"^Subtypes: \[(?:collections\.abc\.|typing\.)?(Mapping|dict|Sequence|list)\[", re.I)
_IGNORED_LEAVES = ("Expected a <class 'NoneType'>",)


def _leaves(lines: list[tuple[int, str]]) -> list[tuple[list[str], list[str], str, int]]:
    """Every leaf message with its key path (``*`` for a mapping key or list index), the classes above it, its line."""
    results = []
    for index, (indent, text) in enumerate(lines):
        if _PARSER_KEY.match(text) or _CLASS_PATH.match(text) or text.lstrip("- ") in _IGNORED_LEAVES:
            continue
        if text.startswith(("Does not validate", "Subtypes:", "Errors:", "Given value")):
            continue
        ancestors = []  # (line index, indent, text), nearest first
        level = indent
        for back in range(index - 1, -1, -1):
            if lines[back][0] < level:
                level = lines[back][0]
                ancestors.append((back, *lines[back]))
        path: list[str] = []
        classes: list[str] = []
        container = False
        for back, parent_indent, parent in reversed(ancestors):
            if key := _PARSER_KEY.match(parent):
                path += key.group(1).split(".")
                children = [t for i, t in lines[back + 1 : index] if i == parent_indent + 2]
                container = any(_SUBTYPES_CONTAINER.match(t) for t in children)
            elif klass := _CLASS_PATH.match(parent):
                # A dataclass group (student, loss, teacher spec) nests its keys directly; a class node in init_args.
                path += (["*"] if container else []) + ([] if _is_dataclass(klass.group(1)) else ["init_args"])
                classes.append(klass.group(1))
                container = False
        results.append((path + (["*"] if container else []), classes, text.lstrip("- "), index))
    return results


def _import(class_path: str) -> Any:
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def _is_dataclass(class_path: str) -> bool:
    return dataclasses.is_dataclass(_import(class_path))


def _class_parameters(class_path: str) -> list[str]:
    """Constructor parameters of ``class_path`` (following ``**kwargs`` handed to base classes), for suggestions."""
    cls = _import(class_path)
    if cls is None:
        return []
    names: list[str] = []
    for klass in cls.__mro__ if inspect.isclass(cls) else [cls]:
        init = klass.__dict__.get("__init__") if inspect.isclass(cls) else klass
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names += [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return names


def _closest(key: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _where(sources: Sequence[ConfigSource], path: list[str], value: str | None = None) -> tuple[str, str]:
    """The source that sets ``path`` (to ``value``) and the path made concrete; the command line when none does."""
    found = find_key(sources, path, value)
    return found if found is not None else ("command line", ".".join(path))


def explain(message: str, sources: Sequence[ConfigSource], top_level_keys: Sequence[str]) -> str:
    """One line for a jsonargparse error message.

    Args:
        message: the parser's error (``str(ArgumentError)``), possibly a multi-line tree.
        sources: where settings came from, in the order the parser applied them.
        top_level_keys: the parser's own dotted option names (e.g. ``trainer.max_steps``), for suggestions.

    Returns:
        ``"<source>: <key path>: <problem>[; did you mean ...]"``.
    """
    lines = [(len(raw) - len(raw.lstrip(" ")), raw.strip()) for raw in message.splitlines() if raw.strip()]
    if match := re.match(r"unrecognized arguments: (.*)", lines[0][1] if lines else ""):
        arg = match.group(1).split()[0]
        if not arg.startswith("--"):
            return f"command line: '{arg}' is not an option; overrides are LightningCLI options, e.g. --{arg}"
        key = arg[2:].split("=", 1)[0]
        return f"command line: unknown option '--{key}'{_closest(key, top_level_keys)}"
    leaves = _leaves(lines)
    if not leaves:
        return " ".join(text for _, text in lines)
    # The deepest branch is the one that got furthest (a TeacherSpec mapping, not the str alternative beside it).
    path, classes, leaf, index = max(leaves, key=lambda item: len(item[0]) + len(item[1]))
    klass = classes[-1] if classes else None
    choices: list[str] = []  # the literal values a union allows, for a suggestion
    if re.fullmatch(r"Expected a [^.]+", leaf):  # a union's alternatives all failed: name them and the value
        subtypes = next((t for _, t in reversed(lines[:index]) if t.startswith("Subtypes:")), "")
        given = next((t for _, t in lines[index:] if t.startswith("Given value:")), "Given value: ?")
        names = [n for n in re.findall(r"<class '(?:[\w.]+\.)?(\w+)'>", subtypes) if n != "NoneType"]
        literals = [v.strip() for group in re.findall(r"typing\.Literal\[(.*?)\]", subtypes) for v in group.split(",")]
        choices = [v.strip("'") for v in literals]
        names += [f"one of {', '.join(dict.fromkeys(literals))}"] if literals else []
        leaf = f"Expected a {' or '.join(names) or leaf[11:]}. Got value: {given.split(': ', 1)[1]}"

    if match := re.match(r"Option '([^']+)' is not accepted|Group '([^']+)' does not accept option '([^']+)'", leaf):
        if match.group(1):
            key_path = [*path, *match.group(1).split(".")]
        else:
            key_path = [*path, *match.group(2).split("."), match.group(3)]
        source, key = _where(sources, key_path)
        valid = _class_parameters(klass) if klass and path else top_level_keys
        name = key.rsplit(".", 1)[-1] if klass and path else key
        return f"{source}: unknown key '{key}'{f' ({klass})' if klass and path else ''}{_closest(name, valid)}"
    if match := re.match(r"Expected a (.+?)\. Got value: (.*)", leaf):
        expected = re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", match.group(1))
        expected = re.sub(r"typing\.Literal\[(.*)\]", r"one of \1", expected)
        source, key = _where(sources, path, match.group(2))
        return f"{source}: {key}: expected {expected}, got {match.group(2)!r}{_closest(match.group(2), choices)}"
    if match := re.match(r"Import path (\S+) does not correspond to a subclass of (\S+)", leaf):
        source, key = _where(sources, [*path, "class_path"], match.group(1))
        return (
            f"{source}: {key}: '{match.group(1)}' is not a subclass of {match.group(2)}; a config may only name "
            "classes of the expected kind (functions and other callables are never called from a config)"
        )
    if match := re.match(r"module '([^']+)' has no attribute '([^']+)'", leaf):
        module, name = match.groups()
        node = path[:-1] if path[-1:] == ["init_args"] else path
        source, key = _where(sources, [*node, "class_path"], f"{module}.{name}")
        public = [n for n in dir(importlib.import_module(module)) if not n.startswith("_")]
        return f"{source}: {key}: module '{module}' has no class '{name}'{_closest(name, public)}"
    if match := re.match(r"the following arguments are required: (.+)", leaf):
        source, key = _where(sources, path[:-1] if path[-1:] == ["init_args"] else path)
        names = ", ".join(f"'{name}'" for name in match.group(1).split(", "))
        where = f"{key} ({klass}): " if klass else f"{key}: " if key else ""
        return f"{source}: {where}missing required argument {names}"
    source, key = _where(sources, path)
    return f"{source}: {key}: {leaf}" if key else f"{source}: {leaf}"
