"""``tools/fit.py``'s LightningCLI: run directories, ``--resume last|PATH``, the saved config, chaining by run.

:class:`D3epthCLI` is ``lightning.pytorch.cli.LightningCLI`` (jsonargparse, ``omegaconf`` parser mode, so values may
read ``${oc.env:VAR,default}``) with what a d3epth run adds:

* ``run_name``, ``logger`` (TensorBoardLogger arguments), ``checkpoint`` (the best-by-monitor ModelCheckpoint) and
  ``last_checkpoint_every_n_steps`` options beside LightningCLI's ``model`` / ``data`` / ``trainer`` /
  ``seed_everything``; ``base:`` files (:mod:`d3epth.cli.config_files`);
* every parse error as one line (:mod:`d3epth.cli.config_errors`);
* ``--resume last|PATH``.

:func:`fit` then trains and keeps the run directory honest. Layout (one per start, continued in place by
``--resume``)::

    lightning_logs/<run_name>/version_<n>/
        events.out.tfevents.*      TensorBoard scalars, images, hyper-parameters
        hparams.yaml               the LightningModule's hyper-parameters (Lightning)
        config.yaml                the complete resolved config, defaults included (a valid --config)
        checkpoints/last.ckpt      every ``last_checkpoint_every_n_steps`` optimiser steps, at the end, and on an
                                   exception or Ctrl-C, so an interrupted run loses at most that many steps
        checkpoints/best-*.ckpt    best by ``checkpoint.monitor`` (``val/abs_rel`` by default)
        completed.json             written when training finished: what later stages chained by run directory use

A start that fails before its first optimiser step leaves no ``version_<n>`` behind, so the next good start is not
``version_1``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, ModelSummary, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger

from d3epth.checkpoints import COMPLETED_MARKER, read_checkpoint
from d3epth.cli.config_errors import explain
from d3epth.cli.config_files import ConfigSource, expand_config_arguments
from d3epth.cli.console import ParameterSummary, StepProgressBar, quiet_lightning
from d3epth.errors import CheckpointError, ConfigError

__all__ = ["CONFIG_KEY", "D3epthCLI", "LastCheckpoint", "SaveRunConfig", "build_cli", "fit", "resolve_resume"]

#: Checkpoint key under which the resolved run config is stored, so a checkpoint documents how it was made.
CONFIG_KEY = "d3epth_config"

#: ``trainer`` arguments tools/fit.py sets itself (from ``logger``, ``checkpoint``, ``last_checkpoint_every_n_steps``).
RESERVED_TRAINER_KEYS = ("logger", "default_root_dir", "enable_checkpointing")

#: Options of the command line only, left out of the saved config.
COMMAND_LINE_ONLY = ("config", "resume", "print_config")


class SaveRunConfig(Callback):
    """Write the complete resolved config to ``<log_dir>/config.yaml`` and store it in every checkpoint."""

    def __init__(self, config_yaml: str) -> None:
        self.yaml = config_yaml

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Write ``config.yaml`` into the run directory (rank zero)."""
        log_dir = trainer.log_dir
        if trainer.is_global_zero and log_dir is not None:
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            (Path(log_dir) / "config.yaml").write_text(self.yaml)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        """Store the resolved config in the checkpoint."""
        checkpoint[CONFIG_KEY] = self.yaml


class LastCheckpoint(ModelCheckpoint):
    """``checkpoints/last.ckpt``: every N optimiser steps, on an exception or Ctrl-C, and at the end of training.

    Lightning's step-interval saving alone misses the final steps when ``max_steps`` is not a multiple of N, so the
    end of training saves too: a finished run's ``last.ckpt`` is always its final state. The folder is Lightning's
    default, ``<logger.log_dir>/checkpoints`` (resolved once and broadcast to every rank).
    """

    def __init__(self, every_n_train_steps: int = 0) -> None:
        super().__init__(
            filename="last",
            monitor=None,
            save_top_k=1,
            every_n_train_steps=every_n_train_steps or None,
            save_on_exception=True,
            enable_version_counter=False,
        )

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Save ``last.ckpt`` unless the final step was saved already."""
        if trainer.fast_dev_run or self._last_global_step_saved == trainer.global_step:
            return
        self._save_checkpoint(trainer, self.format_checkpoint_name({}))
        self._last_global_step_saved = trainer.global_step


def _check_readable(path: Path, purpose: str) -> None:
    """Refuse an unreadable or unsafe checkpoint now; Lightning reads it for real when ``fit`` starts."""
    read_checkpoint(path, purpose, mmap=True)


def _readable(path: Path) -> bool:
    try:
        _check_readable(path, "--resume")
    except CheckpointError:
        return False
    return True


def resolve_resume(run_dir: Path, resume: str | None) -> tuple[Path | None, int | None]:
    """Find the checkpoint to resume from and the logger version it belongs to.

    Args:
        run_dir: ``<logger.save_dir>/<run_name>``.
        resume: ``None`` (fresh run), ``"last"`` (the newest ``version_*/checkpoints/last.ckpt`` of this run), or a
            path to a checkpoint file.

    Returns:
        The checkpoint path (or ``None``) and the version number whose directory the resumed run keeps writing to
        (``None`` when the checkpoint is not inside a ``version_<n>/checkpoints`` folder, which then starts a new one).

    Raises:
        ConfigError: no checkpoint to resume from.
        CheckpointError: ``last.ckpt`` cannot be read (the message names the newest readable checkpoint instead).
    """
    if resume is None:
        return None, None
    if resume == "last":
        candidates = sorted(run_dir.glob("version_*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
        if not candidates:
            raise ConfigError(f"--resume last: no checkpoints/last.ckpt under {run_dir}/version_*; nothing to resume")
        ckpt = candidates[-1]
        try:
            _check_readable(ckpt, "--resume last")  # weights_only: a payload is refused, never run
        except CheckpointError as err:
            others = sorted(run_dir.glob("version_*/checkpoints/*.ckpt"), key=lambda p: p.stat().st_mtime)
            readable = next((p for p in reversed(others) if p != ckpt and _readable(p)), None)
            hint = f"the newest readable one is {readable}: --resume {readable}" if readable else "no other is readable"
            raise CheckpointError(f"{err}; {hint}") from None
    else:
        ckpt = Path(resume)
        if not ckpt.is_file():
            raise ConfigError(f"--resume: checkpoint file not found: {ckpt}")
        _check_readable(ckpt, "--resume")
    match = re.fullmatch(r"version_(\d+)", ckpt.parent.parent.name) if ckpt.parent.name == "checkpoints" else None
    return ckpt, int(match.group(1)) if match else None


class D3epthCLI(LightningCLI):
    """LightningCLI for d3epth runs: see the module docstring. Built with ``run=False``; :func:`fit` trains.

    Args:
        args: command-line arguments *after* :func:`~d3epth.cli.config_files.expand_config_arguments`.
        sources: where settings came from (for error messages).
        default_run_name: run name when the config sets none (the config file's stem).
        prog: program name shown in ``--help``.
        parse_only: parse and validate only (the model becomes optional); :meth:`build_datamodule` builds the data.
    """

    def __init__(
        self,
        args: list[str],
        sources: list[ConfigSource],
        default_run_name: str | None,
        prog: str = "tools/fit.py",
        parse_only: bool = False,
    ) -> None:
        self.parse_only = parse_only
        self.sources = sources
        self.default_run_name = default_run_name or "run"
        self.ckpt_path: Path | None = None
        self.version: int | None = None
        super().__init__(
            L.LightningModule,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=None,  # SaveRunConfig: the run directory is only known once the logger exists
            parser_kwargs={
                "parser_mode": "omegaconf",
                "exit_on_error": False,
                "prog": prog,
                "description": "Train a d3epth stage (autoencoder, teacher, stage 1, stage 2, baseline) from YAML.",
            },
            auto_configure_optimizers=False,  # each task's configure_optimizers is its recipe
            run=False,
            args=args,
        )

    def add_core_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """LightningCLI's trainer / model / data; the model is optional for the data-only tools (``parse_only``)."""
        super().add_core_arguments_to_parser(parser)
        if self.parse_only:  # a placeholder default, never built: build_datamodule drops the model
            parser.set_defaults(model={"class_path": "lightning.pytorch.LightningModule"})

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """d3epth's options beside model / data / trainer / seed_everything."""
        parser.add_argument("--run_name", type=str | None, default=None, help="run folder under logger.save_dir")
        parser.add_argument(
            "--last_checkpoint_every_n_steps", type=int, default=100, help="optimiser steps between last.ckpt saves"
        )
        # The best checkpoint lives in the run directory; last.ckpt is the one saved on an exception.
        skip = {"dirpath", "save_on_exception"}
        parser.add_class_arguments(ModelCheckpoint, "checkpoint", skip=skip, instantiate=False)
        parser.add_class_arguments(TensorBoardLogger, "logger", skip={"name", "version"}, instantiate=False)
        parser.set_defaults({"logger.save_dir": "lightning_logs"})
        parser.add_argument(
            "--resume",
            type=str | None,
            default=None,
            help="'last' (the newest checkpoints/last.ckpt of this run name) or a .ckpt path: continue training",
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse; any error becomes one :class:`ConfigError` line naming the source and the key path."""
        try:  # not super(): it warns when args are given in-process while sys.argv has arguments too (always here)
            self.config = parser.parse_args(args)
        except argparse.ArgumentError as err:
            keys = [action.dest for action in parser._actions if action.dest not in ("help", "config")]
            raise ConfigError(explain(str(err), self.sources, keys)) from None

    def before_instantiate_classes(self) -> None:
        """Check reserved trainer keys and find the checkpoint to resume before anything is built."""
        for key in RESERVED_TRAINER_KEYS:
            if self.config.trainer.get(key) is not None:
                raise ConfigError(f"trainer.{key} is set by tools/fit.py; configure logger.* / checkpoint.* instead")
        mode = self.config.checkpoint.get("mode")
        if mode not in ("min", "max"):  # ModelCheckpoint's own check comes only once the trainer is built
            raise ConfigError(f"checkpoint.mode: expected 'min' or 'max', got {mode!r}")
        if self.config.run_name is None:
            self.config.run_name = self.default_run_name
        self.ckpt_path, self.version = resolve_resume(self.run_dir, self.config.resume)

    def instantiate_classes(self) -> None:
        """Build model, data and trainer (not when ``parse_only``: tools that need only parts build those)."""
        if not self.parse_only:
            super().instantiate_classes()

    def build_datamodule(self, **init_args: Any) -> L.LightningDataModule:
        """Only the datamodule of a parsed config, with ``init_args`` overridden (for the data-only tools)."""
        config = self.config.clone()
        config.model = None
        for key, value in init_args.items():
            config.data.init_args[key] = value
        return self.parser.instantiate_classes(config).data

    @property
    def run_dir(self) -> Path:
        """``<logger.save_dir>/<run_name>``: the folder holding this run's ``version_<n>`` directories."""
        return Path(self.config.logger.save_dir) / str(self.config.run_name)

    def resolved_config_yaml(self) -> str:
        """The complete parsed config (defaults included, command-line-only options left out) as YAML."""
        config = self.config.clone()
        for key in COMMAND_LINE_ONLY:
            config.pop(key, None)
        return self.parser.dump(config, skip_none=False, skip_validation=True)

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        """The trainer with d3epth's logger, checkpoints, saved config, summary and progress bar."""
        cfg = self.config_init
        logger = TensorBoardLogger(name=str(cfg.run_name), version=self.version, **dict(cfg.logger))
        callbacks: list[Callback] = list(cfg.trainer.get("callbacks") or [])
        callbacks += [LastCheckpoint(cfg.last_checkpoint_every_n_steps), SaveRunConfig(self.resolved_config_yaml())]
        # A user's own summary or progress bar replaces d3epth's, as Lightning's defaults are replaced.
        if cfg.trainer.get("enable_model_summary") is not False and not _has(callbacks, ModelSummary):
            callbacks.append(ParameterSummary())
        if cfg.trainer.get("enable_progress_bar") is not False and not _has(callbacks, ProgressBar):
            callbacks.append(StepProgressBar())
        if cfg.checkpoint.get("monitor"):
            callbacks.append(ModelCheckpoint(**dict(cfg.checkpoint)))
        return super().instantiate_trainer(logger=logger, callbacks=callbacks, **kwargs)


def _has(callbacks: list[Callback], kind: type) -> bool:
    return any(isinstance(callback, kind) for callback in callbacks)


def build_cli(argv: list[str], prog: str = "tools/fit.py", parse_only: bool = False) -> D3epthCLI:
    """Expand ``base:`` files, parse and (unless ``parse_only``) build model, data and trainer.

    ``--print_config`` prints the complete config and exits (``SystemExit(0)``), as in any LightningCLI.

    Raises:
        ConfigError: any config error (one line); errors of the classes being built propagate as they are.
    """
    quiet_lightning()
    args, sources, stem = expand_config_arguments(argv)
    return D3epthCLI(args, sources, stem, prog=prog, parse_only=parse_only)


def fit(argv: list[str]) -> L.Trainer:
    """Train what the command line describes; see the module docstring for the run directory.

    Returns:
        The trainer after fitting (``trainer.log_dir`` is the run directory).

    Raises:
        ConfigError, CheckpointError, DataError, ...: one-line user errors (``d3epth.errors``).
        KeyboardInterrupt: training was interrupted (``last.ckpt`` holds the state; no completion marker).
    """
    cli = build_cli(argv)
    trainer = cli.trainer
    log_dir = Path(trainer.logger.log_dir)  # fixes the version now; computed locally on every rank (no collective)
    fresh = not log_dir.exists()
    if trainer.is_global_zero:
        (log_dir / COMPLETED_MARKER).unlink(missing_ok=True)  # a continued run is unfinished until it finishes
    try:
        try:
            trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=cli.ckpt_path, weights_only=True)
        except SystemExit:
            # After a Ctrl-C Lightning shuts down gracefully (last.ckpt is written) and then calls sys.exit(1):
            # report it as the interruption it was (one line, status 130), not as a silent failure.
            if trainer.interrupted:
                raise KeyboardInterrupt from None
            raise
        if trainer.interrupted:
            raise KeyboardInterrupt
    except BaseException:
        if fresh and trainer.global_step == 0 and trainer.is_global_zero:
            _remove_run(log_dir)
        raise
    if trainer.is_global_zero:
        marker = {"global_step": trainer.global_step, "checkpoint": "checkpoints/last.ckpt"}
        (log_dir / COMPLETED_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    return trainer


def _remove_run(log_dir: Path) -> None:
    """Delete a run directory that never trained (and its run folder, when that is left empty)."""
    shutil.rmtree(log_dir, ignore_errors=True)
    parent = log_dir.parent
    if parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()
