"""Generate procedural sample data in the real on-disk layouts of Hypersim, Virtual KITTI 2, NYUv2 and KITTI.

Usage::

    python tools/make_sample_data.py --out sample_data [--seed 0] [--workers 2] [--hypersim-size 128 96] ...

The body is :mod:`d3epth.cli.make_sample_data`.
"""

import sys

from d3epth.cli.make_sample_data import main

if __name__ == "__main__":
    sys.exit(main())
