"""Compute the frozen teacher's stage-1 targets once, for every training sample and its mirror, and store them.

Usage::

    python tools/cache_teacher.py --config configs/stage1.yaml --out cache/stage1_teacher [key=value ...]

The body is :mod:`d3epth.cli.cache_teacher`.
"""

import sys

from d3epth.cli.cache_teacher import main

if __name__ == "__main__":
    sys.exit(main())
