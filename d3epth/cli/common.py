"""What several tools share: the ``--config FILE [key=value ...]`` arguments and how a tool reports an error."""

from __future__ import annotations

import argparse
import sys


def add_config_arguments(parser: argparse.ArgumentParser, config_help: str, overrides_help: str) -> None:
    """Add ``--config FILE`` (required) and the positional ``key=value`` overrides, as ``load_config`` reads them."""
    parser.add_argument("--config", required=True, metavar="FILE", help=config_help)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help=overrides_help)


def fail(message: object, code: int = 2) -> int:
    """Print ``error: <message>`` to stderr and return ``code``, the exit status for ``main`` to return.

    2 (argparse's status for a command line it rejects) is for a run that cannot start as given: bad arguments,
    config, data or checkpoint; 1 is for a run that started and failed.
    """
    print(f"error: {message}", file=sys.stderr)
    return code


def parser_from_docstring(prog: str, docstring: str) -> argparse.ArgumentParser:
    """A parser whose ``--help`` shows ``docstring``: its first paragraph as the description, the rest as written."""
    summary, _, details = docstring.partition("\n\n")
    return argparse.ArgumentParser(
        prog=prog, description=summary, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=details
    )
