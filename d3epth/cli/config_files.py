"""Run config files for the LightningCLI parser: ``base:`` composition and what each source sets.

A d3epth config may start with ``base: [file, ...]`` (paths relative to it): files merged underneath, in order, each
with its own ``base:``. jsonargparse already merges several ``--config`` files in order (later values win, class
nodes keep their ``class_path`` when a later file gives only ``init_args``), so composition is one small hook:
:func:`expand_config_arguments` rewrites ``--config stage1.yaml`` into the ``--config`` of each base file first, then
the file itself, ``base:`` removed. The parser then sees exactly what a LightningCLI user would type by hand.

Each source is also kept as plain data (:class:`ConfigSource`), so an error can name the file (or the command line)
that set the offending key.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from d3epth.errors import ConfigError

__all__ = ["ConfigSource", "expand_config_arguments", "find_key"]


@dataclass(frozen=True)
class ConfigSource:
    """One place settings come from: a config file (``label`` = its path) or the command line.

    Attributes:
        label: the file path, or ``"command line"``.
        data: the settings as nested dicts (the command line's ``--a.b=v`` as ``{"a": {"b": "v"}}``).
    """

    label: str
    data: dict[str, Any]


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"cannot parse {path}: {' '.join(str(err).split())}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of options, got {type(data).__name__}")
    return data


def _expand(path: Path, chain: tuple[Path, ...]) -> Iterator[tuple[Path, dict[str, Any]]]:
    """``(file, settings without base)`` of ``path``'s bases (depth first), then of ``path`` itself."""
    resolved = path.resolve()
    if resolved in chain:
        raise ConfigError("cyclic base: " + " -> ".join(str(p) for p in (*chain, resolved)))
    data = _read(path)
    bases = data.pop("base", None)
    if isinstance(bases, str):
        bases = [bases]
    if bases is not None and not (isinstance(bases, list) and all(isinstance(b, str) for b in bases)):
        raise ConfigError(f"{path}: 'base' must be a path or a list of paths (relative to the file), got {bases!r}")
    for base in bases or []:
        yield from _expand(path.parent / base, (*chain, resolved))
    yield path, data


def _command_line_settings(argv: Sequence[str]) -> dict[str, Any]:
    """``--a.b=v`` / ``--a.b v`` options as nested dicts (values unparsed), for naming where a key came from."""
    settings: dict[str, Any] = {}
    for i, arg in enumerate(argv):
        match = re.fullmatch(r"--([\w.]+)(?:=(.*))?", arg, re.S)
        if not match or match.group(1) in ("config", "resume", "print_config"):
            continue
        value = match.group(2) if match.group(2) is not None else (argv[i + 1] if i + 1 < len(argv) else None)
        node = settings
        *parents, leaf = match.group(1).split(".")
        for key in parents:
            node = node.setdefault(key, {}) if isinstance(node.get(key, {}), dict) else {}
        node[leaf] = value
    return settings


def expand_config_arguments(argv: Sequence[str]) -> tuple[list[str], list[ConfigSource], str | None]:
    """Rewrite every ``--config FILE`` into its ``base:`` files' settings followed by its own.

    Args:
        argv: command-line arguments (``--config FILE`` or ``--config=FILE``, any number).

    Returns:
        The arguments for the parser (each file's settings passed as YAML text, ``base:`` removed), the sources in
        the order the parser applies them (files, then the command line), and the stem of the last file named on
        the command line (the default run name), or ``None``.

    Raises:
        ConfigError: a missing or unparsable file, a malformed ``base:`` or a cycle of bases.
    """
    out: list[str] = []
    sources: list[ConfigSource] = []
    stem = None
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--config" or arg.startswith("--config="):
            if arg == "--config":
                if i + 1 >= len(args):
                    raise ConfigError("--config needs a file, e.g. --config configs/stage1.yaml")
                i += 1
                name = args[i]
            else:
                name = arg.split("=", 1)[1]
            for path, data in _expand(Path(name), ()):
                out += ["--config", yaml.safe_dump(data, sort_keys=False) if data else "{}"]
                sources.append(ConfigSource(str(path), data))
            stem = Path(name).stem
        else:
            out.append(arg)
        i += 1
    sources.append(ConfigSource("command line", _command_line_settings(out)))
    return out, sources, stem


def find_key(
    sources: Sequence[ConfigSource], pattern: Sequence[str], value: str | None = None
) -> tuple[str, str] | None:
    """The first source setting a key path that matches ``pattern`` (``"*"`` matches any one key or list index).

    Args:
        sources: in the order the parser applied them.
        pattern: the key path, ``"*"`` for unknown mapping keys and list indices.
        value: only a source setting this value (compared as text) counts: several sources may set a key, and a
            type error is about one value.

    Returns:
        ``(source label, concrete dotted key path)``, or ``None`` when no source sets it.
    """
    for source in sources:
        found = _match(source.data, list(pattern), value)
        if found is not None:
            return source.label, ".".join(found)
    return None


def _match(node: Any, pattern: list[str], value: str | None) -> list[str] | None:
    if not pattern:
        return [] if value is None or str(node) == value else None
    head, rest = pattern[0], pattern[1:]
    if isinstance(node, list):
        items = [(str(i), item) for i, item in enumerate(node)]
    elif isinstance(node, dict):
        items = [(str(k), v) for k, v in node.items()]
    else:
        return None
    for key, child in items:
        if head in ("*", key):
            found = _match(child, rest, value)
            if found is not None:
                return [key, *found]
    return None
