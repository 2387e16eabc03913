"""Predict depth for image files with any d3epth model; write 16-bit PNGs, colourised PNGs and (optionally) .npy.

Usage::

    python tools/predict.py INPUT [INPUT ...] --model SOURCE --out DIR [--batch-size 4] [--processing-resolution N]
                            [--device auto|cpu|cuda[:i]] [--precision fp32|bf16|fp16] [--npy] [--skip-errors]

INPUT: image files, folders or (quoted) glob patterns; SOURCE: a task checkpoint, an exported student or a diffusers
Marigold / E2E-FT directory. The body is :mod:`d3epth.cli.predict`.
"""

import sys

from d3epth.cli.predict import main

if __name__ == "__main__":
    sys.exit(main())
