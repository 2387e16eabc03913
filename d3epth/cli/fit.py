"""The body of ``tools/fit.py``: train any d3epth stage from a YAML config.

The trainer assembly (run directories, resume, checkpoints, callbacks) is :mod:`d3epth.cli.trainer`.

Usage::

    python tools/fit.py --config configs/sample/stage1.yaml [key=value ...] [--resume last|PATH] [--print-config]

Examples::

    python tools/fit.py --config configs/stage1.yaml trainer.max_steps=2000 data.init_args.batch_size=4
    python tools/fit.py --config configs/stage1.yaml --resume last      # continue the newest run of this config
    python tools/fit.py --config configs/stage2.yaml --print-config     # show the merged, resolved config
    tensorboard --logdir lightning_logs
"""

from __future__ import annotations

import argparse

from omegaconf import OmegaConf

from d3epth.cli.common import add_config_arguments, fail
from d3epth.config import ConfigError, load_config


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``tools/fit.py``."""
    parser = argparse.ArgumentParser(
        prog="tools/fit.py",
        description=(
            "Train a d3epth stage (autoencoder, teacher, stage 1, stage 2, baseline) from a YAML config. The config "
            "names the LightningModule (model), the LightningDataModule (data) and lightning.Trainer arguments "
            "(trainer); its 'base:' files are merged underneath. Logs go to <logger.save_dir>/<run_name>/version_<n> "
            "(TensorBoard events, config.yaml with the resolved config, checkpoints/last.ckpt and best-*.ckpt)."
        ),
        epilog=(
            "Values may read the environment with a default, e.g. root: ${oc.env:HYPERSIM_ROOT,data/hypersim}. "
            "Unknown or misspelt keys, missing required arguments and class paths outside d3epth., torch.optim., "
            "lightning.pytorch.callbacks. and lightning.pytorch.loggers. are errors reported before anything is built."
        ),
    )
    add_config_arguments(
        parser,
        config_help="run config YAML (e.g. configs/stage1.yaml)",
        overrides_help=(
            "dotted overrides applied on top of the config, e.g. trainer.max_steps=2 model.init_args.lr=1e-4"
        ),
    )
    parser.add_argument(
        "--resume",
        metavar="last|PATH",
        help="continue training from a checkpoint: 'last' = the newest checkpoints/last.ckpt of this run name, or a "
        "path to a .ckpt; optimiser, scheduler, step counters and the TensorBoard run directory are restored",
    )
    parser.add_argument("--print-config", action="store_true", help="print the merged, resolved config and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, build data, model and trainer from the config, and fit. Returns the exit code."""
    args = build_parser().parse_args(argv)

    from d3epth.cli.trainer import fit  # Lightning: imported after parsing (see d3epth.cli)

    try:
        cfg = load_config(args.config, args.overrides)
        if args.print_config:
            print(OmegaConf.to_yaml(cfg, resolve=True), end="")
            return 0
        trainer = fit(cfg, resume=args.resume)
    except ConfigError as err:
        return fail(err)
    if trainer.is_global_zero:
        print(f"run directory: {trainer.log_dir}")
    return 0
