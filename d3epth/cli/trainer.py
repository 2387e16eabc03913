"""Assemble a ``lightning.Trainer`` for a run config: TensorBoard logger, checkpoints, resume, the saved config.

This is the body of ``tools/fit.py`` (:mod:`d3epth.cli.fit`) and of the stages of ``tools/quickstart.py``.

Run directory layout (one per ``tools/fit.py`` invocation, continued in place by ``--resume``)::

    lightning_logs/<run_name>/version_<n>/
        events.out.tfevents.*      TensorBoard scalars, images, hyper-parameters
        hparams.yaml               the LightningModule's hyper-parameters (Lightning)
        config.yaml                the resolved run config (interpolations resolved, overrides applied)
        checkpoints/last.ckpt      every ``last_checkpoint_every_n_steps`` optimiser steps, at the end, and on an
                                   exception or Ctrl-C, so an interrupted run loses at most that many steps
        checkpoints/best-*.ckpt    best by ``checkpoint.monitor`` (``val/abs_rel`` by default)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from d3epth.config import ConfigError, instantiate, to_container

__all__ = ["CONFIG_KEY", "LastCheckpoint", "SaveResolvedConfig", "build_trainer", "fit", "resolve_resume", "run_dir"]

#: Checkpoint key under which the resolved run config is stored, so a checkpoint documents how it was made.
CONFIG_KEY = "d3epth_config"


class SaveResolvedConfig(Callback):
    """Write the resolved run config to ``<log_dir>/config.yaml`` and store it in every checkpoint."""

    def __init__(self, config: DictConfig) -> None:
        self.yaml = OmegaConf.to_yaml(config, resolve=True)

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
    end of training saves too: a finished run's ``last.ckpt`` is always its final state.
    """

    def __init__(self, dirpath: str | Path, every_n_train_steps: int = 0) -> None:
        super().__init__(
            dirpath=dirpath,
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


def run_dir(cfg: DictConfig) -> Path:
    """``<logger.save_dir>/<run_name>``: the folder holding this run's ``version_<n>`` directories."""
    save_dir = to_container(cfg.get("logger", {})).get("save_dir", "lightning_logs")
    return Path(save_dir) / str(cfg.run_name)


def resolve_resume(cfg: DictConfig, resume: str | None) -> tuple[Path | None, int | None]:
    """Find the checkpoint to resume from and the logger version it belongs to.

    Args:
        cfg: the run config (for the run directory).
        resume: ``None`` (fresh run), ``"last"`` (the newest ``version_*/checkpoints/last.ckpt`` of this run), or a
            path to a checkpoint file.

    Returns:
        The checkpoint path (or ``None``) and the version number whose directory the resumed run keeps writing to
        (``None`` when the checkpoint is not inside a ``version_<n>/checkpoints`` folder, which then starts a new one).

    Raises:
        ConfigError: no checkpoint to resume from.
    """
    if resume is None:
        return None, None
    if resume == "last":
        candidates = sorted(run_dir(cfg).glob("version_*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
        if not candidates:
            raise ConfigError(
                f"--resume last: no checkpoints/last.ckpt under {run_dir(cfg)}/version_*; nothing to resume"
            )
        ckpt = candidates[-1]
    else:
        ckpt = Path(resume)
        if not ckpt.is_file():
            raise ConfigError(f"--resume: checkpoint file not found: {ckpt}")
    match = re.fullmatch(r"version_(\d+)", ckpt.parent.parent.name) if ckpt.parent.name == "checkpoints" else None
    return ckpt, int(match.group(1)) if match else None


def build_trainer(cfg: DictConfig, version: int | None = None, **trainer_overrides: Any) -> L.Trainer:
    """Build the ``lightning.Trainer`` a run config describes.

    Args:
        cfg: a validated run config (``trainer``, ``logger``, ``checkpoint``, ``callbacks``,
            ``last_checkpoint_every_n_steps``).
        version: TensorBoard version to write into (set when resuming, so the run continues in its own folder).
        **trainer_overrides: extra ``lightning.Trainer`` arguments that win over the config (used by tests/tools).

    Returns:
        The trainer, with a TensorBoard logger under ``<save_dir>/<run_name>/version_<n>``, a ``last.ckpt``
        checkpoint, a best-by-monitor checkpoint when ``checkpoint.monitor`` is set, the configured callbacks, and a
        callback saving the resolved config.
    """
    logger_kwargs = dict(to_container(cfg.get("logger")) or {})
    logger_kwargs.setdefault("save_dir", "lightning_logs")
    logger = TensorBoardLogger(name=str(cfg.run_name), version=version, **logger_kwargs)
    ckpt_dir = Path(logger.log_dir) / "checkpoints"

    last = LastCheckpoint(ckpt_dir, every_n_train_steps=int(cfg.get("last_checkpoint_every_n_steps") or 0))
    callbacks: list[Callback] = [last, SaveResolvedConfig(cfg)]
    best_kwargs = dict(to_container(cfg.get("checkpoint")) or {})
    if best_kwargs.get("monitor"):
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, **best_kwargs))
    callbacks.extend(instantiate(node) for node in cfg.get("callbacks") or [])

    trainer_kwargs = dict(to_container(cfg.get("trainer")) or {})
    trainer_kwargs.update(trainer_overrides)
    return L.Trainer(logger=logger, callbacks=callbacks, **trainer_kwargs)


def fit(cfg: DictConfig, resume: str | None = None) -> L.Trainer:
    """Train what a validated run config describes: seed, build data, model and trainer, fit.

    Args:
        cfg: a run config from :func:`d3epth.config.load_config`.
        resume: ``None``, ``"last"`` or a checkpoint path (see :func:`resolve_resume`).

    Returns:
        The trainer after fitting (``trainer.log_dir`` is the run directory).

    Raises:
        ConfigError: nothing to resume from.
    """
    ckpt_path, version = resolve_resume(cfg, resume)
    if cfg.get("seed_everything") is not None:
        L.seed_everything(int(cfg.seed_everything), workers=True)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    trainer = build_trainer(cfg, version=version)
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    return trainer
