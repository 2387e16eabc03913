"""Evaluate depth models (task checkpoints, exported students, Marigold / E2E-FT directories) on benchmarks.

Usage::

    python tools/evaluate.py lightning_logs/stage2/version_0/checkpoints/last.ckpt --benchmark nyu kitti
    python tools/evaluate.py checkpoints/marigold-depth-v1-1 --benchmark nyu --nyu-root /data/nyuv2
    python tools/evaluate.py a.ckpt b.ckpt --benchmark all --eth3d-root /data/eth3d.tar   # Marigold's Table 1
    python tools/evaluate.py a.ckpt b.ckpt --config configs/sample/data.yaml      # the config's test sets

Prints a table and Marigold's Table-1 summary (with the average rank when several models are compared), and writes
``results.json`` and ``results.csv`` to ``--out``. The body is :mod:`d3epth.cli.evaluate`.
"""

import sys

from d3epth.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
