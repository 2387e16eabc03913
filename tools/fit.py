"""Train any d3epth stage (autoencoder, teacher, stage 1, stage 2, baseline) from a YAML config.

Usage::

    python tools/fit.py --config configs/sample/stage1.yaml [--key.path=value ...] [--resume last|PATH] [--print_config]
    python tools/fit.py --config configs/stage1.yaml --resume last      # continue the newest run of this config
    tensorboard --logdir lightning_logs

The body is :mod:`d3epth.cli.fit`.
"""

import sys

from d3epth.cli.fit import main

if __name__ == "__main__":
    sys.exit(main())
