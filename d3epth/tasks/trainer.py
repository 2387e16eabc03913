"""Moved to :mod:`d3epth.cli.trainer`; re-exported here so configs and checkpoints naming the old path still resolve."""

from d3epth.cli.trainer import (
    CONFIG_KEY,
    LastCheckpoint,
    SaveResolvedConfig,
    build_trainer,
    fit,
    resolve_resume,
    run_dir,
)

__all__ = ["CONFIG_KEY", "LastCheckpoint", "SaveResolvedConfig", "build_trainer", "fit", "resolve_resume", "run_dir"]
