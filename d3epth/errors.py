"""The exceptions d3epth raises for a user's mistakes: one small tree, one line of text each.

Every message names the file, key or value at fault, says what was expected and, where there is one, the remedy, so
a tool can print ``str(error)`` alone (no traceback). Each class also derives from the built-in exception a caller
would have caught before this tree existed (``except ValueError`` / ``except FileNotFoundError`` keep working).
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "D3epthError",
    "DataError",
    "MissingFileError",
    "TeacherCacheError",
    "TrainingDivergedError",
]


class D3epthError(Exception):
    """Base of every error that is the user's to fix (a config, a file, a checkpoint), not a bug in d3epth."""


class ConfigError(D3epthError, ValueError):
    """A configuration file, override or class node is invalid."""


class DataError(D3epthError, ValueError):
    """A dataset root, list file or sample is unusable (wrong layout, corrupt file, size mismatch, ...)."""


class MissingFileError(D3epthError, FileNotFoundError):
    """A file or directory the user named does not exist."""


class CheckpointError(D3epthError, ValueError):
    """A checkpoint cannot be read, is not a d3epth checkpoint, or was written by a task that does not fit here."""


class TeacherCacheError(DataError):
    """A teacher cache does not match what is being trained (entry missing, other size, teacher or dataset)."""


class TrainingDivergedError(D3epthError, RuntimeError):
    """Training stopped: too many optimiser steps in a row were non-finite, or the weights are no longer finite."""
