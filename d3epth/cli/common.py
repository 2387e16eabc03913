"""What the tools share: ``--config`` arguments, how an error reaches the user, ``--debug``.

Every tool's ``main`` is wrapped in :func:`one_line_errors`: a user error — config, data, checkpoint, file system,
i.e. :class:`~d3epth.errors.D3epthError`, ``ValueError`` or ``OSError`` — is printed as one line on stderr and the
tool exits non-zero; ``--debug`` (anywhere on the command line) or ``D3EPTH_DEBUG=1`` shows the traceback instead.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable

from d3epth.errors import D3epthError

__all__ = [
    "USER_ERRORS",
    "add_config_arguments",
    "debug_requested",
    "fail",
    "one_line_errors",
    "parser_from_docstring",
    "root_error",
]

#: Exceptions that are the user's to fix; their message is what the user sees.
USER_ERRORS: tuple[type[BaseException], ...] = (D3epthError, ValueError, OSError)

DEBUG_HELP = "--debug or D3EPTH_DEBUG=1 shows the traceback of an error instead of its one-line message."


def add_config_arguments(parser: argparse.ArgumentParser, config_help: str) -> None:
    """Add ``--config FILE`` (repeatable, later files win) and LightningCLI-style ``--key.path=value`` overrides."""
    parser.add_argument("--config", action="append", required=True, metavar="FILE", help=config_help)


def fail(message: object, code: int = 2) -> int:
    """Print ``error: <message>`` (one line) to stderr and return ``code``, the exit status for ``main`` to return.

    2 (argparse's status for a command line it rejects) is for a user error; 1 for a check that failed (e.g. an
    exported model that does not match) or an image that could not be read; 130 for an interrupted run.
    """
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    return code


def debug_requested(argv: list[str]) -> bool:
    """Whether ``--debug`` is in ``argv`` or ``D3EPTH_DEBUG`` is set (to anything but ``""`` or ``"0"``)."""
    return "--debug" in argv or os.environ.get("D3EPTH_DEBUG", "") not in ("", "0")


#: How jsonargparse's wrappers around an error raised while building a class begin; the error inside is the news.
_PARSER_WRAPPERS = (
    "Does not validate against any of the Union subtypes",
    "Problem with given class_path",
    "Parser key",
)


def root_error(err: BaseException) -> BaseException:
    """The error a constructor raised, without the jsonargparse wrappers that instantiation adds around it."""
    while err.__cause__ is not None and str(err).startswith(_PARSER_WRAPPERS):
        err = err.__cause__
    return err


def one_line_errors(main: Callable[[list[str]], int]) -> Callable[[list[str] | None], int]:
    """Wrap a tool's ``main(argv)``: user errors become one line and exit status 2 (see the module docstring)."""

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        args = list(sys.argv[1:] if argv is None else argv)
        debug = debug_requested(args)
        try:
            return main([a for a in args if a != "--debug"])
        except KeyboardInterrupt:
            if debug:
                raise
            return fail("interrupted; a training run continues with --resume last", code=130)
        except USER_ERRORS as err:
            root = root_error(err)
            if debug or not isinstance(root, USER_ERRORS):
                raise
            return fail(root)

    return wrapper


def parser_from_docstring(prog: str, docstring: str) -> argparse.ArgumentParser:
    """A parser whose ``--help`` shows ``docstring``: its first paragraph as the description, the rest as written."""
    summary, _, details = docstring.partition("\n\n")
    return argparse.ArgumentParser(
        prog=prog,
        description=summary,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"{details}\n\n{DEBUG_HELP}",
    )
