"""Convert raw Hypersim into Marigold's preprocessed layout.

Usage::

    python tools/prepare_hypersim.py --dataset-dir data/Hypersim/raw_data --output-dir data/Hypersim/processed \\
        [--split-csv .../metadata_images_split_scene_v1.csv] [--workers 8]

The run is resumable: a frame whose two PNGs already exist and decode is not converted again.

The body is :mod:`d3epth.cli.prepare_hypersim`.
"""

import sys

from d3epth.cli.prepare_hypersim import main

if __name__ == "__main__":
    sys.exit(main())
