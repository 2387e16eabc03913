"""The body of ``tools/fit.py``: train any d3epth stage from YAML, on LightningCLI.

The parser, run directories, resume and chaining are :mod:`d3epth.cli.trainer`.

Usage::

    python tools/fit.py --config configs/sample/stage1.yaml [--key.path=value ...] [--resume last|PATH]

Examples::

    python tools/fit.py --config configs/stage1.yaml --trainer.max_steps=2000 --data.init_args.batch_size=4
    python tools/fit.py --config configs/stage1.yaml --resume last      # continue the newest run of this config
    python tools/fit.py --config configs/stage2.yaml --print_config     # the complete resolved config, defaults too
    tensorboard --logdir lightning_logs

Options are LightningCLI's (``--help`` lists them; ``--model.help CLASS`` a class's): several ``--config`` files merge
in order, ``--a.b=value`` overrides any key, a ``class_path`` may name a user's own class on ``PYTHONPATH`` when it
subclasses what the option expects. A config's ``base: [file, ...]`` names files merged underneath it. Any error is
one line on stderr (exit status 2); ``--debug`` or ``D3EPTH_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

from d3epth.cli.common import one_line_errors


@one_line_errors
def main(argv: list[str]) -> int:
    """Parse, build data, model and trainer from the config, and fit. Returns the exit code."""
    from d3epth.cli.trainer import fit  # Lightning: imported here (see d3epth.cli)

    trainer = fit(argv)
    log_dir = trainer.log_dir  # a collective under DDP: every rank asks, rank zero prints
    if trainer.is_global_zero:
        print(f"run directory: {log_dir}")
    return 0
