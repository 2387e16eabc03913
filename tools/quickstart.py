"""The whole D³epth chain on freshly generated sample data, on a CPU, ending with a comparison table.

Usage::

    python tools/quickstart.py                 # everything (~8 min on 2 CPU cores)
    python tools/quickstart.py --steps-scale 0.1 --fresh   # a quick smoke run of the same chain
    tensorboard --logdir lightning_logs

The body is :mod:`d3epth.cli.quickstart`.
"""

import sys

from d3epth.cli.quickstart import main

if __name__ == "__main__":
    sys.exit(main())
