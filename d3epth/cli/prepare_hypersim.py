"""Convert raw Hypersim into Marigold's preprocessed layout.

Writes, per split, ``<output-dir>/<split>/<scene>/{rgb,depth_plane}_<cam>_frNNNN.png`` (8-bit tone-mapped RGB,
uint16 planar depth in mm), the unfiltered list and the meta CSV, and
``<output-dir>/filename_list_<split>_filtered.txt`` (Marigold's quality filter), from the rows of
``metadata_images_split_scene_v1.csv`` in the public release. The layout, the conversions and where they deliberately
differ from Marigold's script are described in :mod:`d3epth.data.prepare.hypersim`, which does the work; this tool
parses arguments and prints a summary.

Usage::

    python tools/prepare_hypersim.py --dataset-dir data/Hypersim/raw_data --output-dir data/Hypersim/processed \\
        [--split-csv .../metadata_images_split_scene_v1.csv] [--workers 8]

The run is resumable: a frame whose two PNGs already exist and decode is not converted again.
"""

from __future__ import annotations

import argparse
import sys

from d3epth.cli.common import fail, one_line_errors
from d3epth.data.prepare.hypersim import (
    CSV_NAME,
    MAX_INVALID_RATIO,
    MIN_DEPTH_RANGE,
    MIN_RGB_RANGE,
    SPLITS,
    prepare_hypersim,
)


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface (Marigold's underscore spellings are accepted as aliases)."""
    p = argparse.ArgumentParser(
        prog="tools/prepare_hypersim.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawTextHelpFormatter,
    )
    p.add_argument("--dataset-dir", "--dataset_dir", required=True, help="raw Hypersim root (ai_VVV_NNN folders)")
    p.add_argument("--output-dir", "--output_dir", required=True, help="destination of the preprocessed layout")
    p.add_argument("--split-csv", "--split_csv", default=None, help=f"split CSV (default <dataset-dir>/{CSV_NAME})")
    p.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS, help="splits to convert")
    p.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    p.add_argument("--min-depth-range", type=float, default=MIN_DEPTH_RANGE, help="filter: min depth range (m)")
    p.add_argument("--min-rgb-range", type=float, default=MIN_RGB_RANGE, help="filter: min 8-bit RGB range")
    p.add_argument("--max-invalid-ratio", type=float, default=MAX_INVALID_RATIO, help="filter: max invalid fraction")
    p.add_argument("--overwrite", action="store_true", help="convert frames again even if their PNGs exist")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


@one_line_errors
def main(argv: list[str]) -> int:
    """Entry point: parse ``argv``, convert, print a per-split summary; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.workers < 1:
        return fail(f"--workers must be >= 1, got {args.workers}")
    summaries = prepare_hypersim(
        args.dataset_dir,
        args.output_dir,
        split_csv=args.split_csv,
        splits=args.splits,
        workers=args.workers,
        min_depth_range=args.min_depth_range,
        min_rgb_range=args.min_rgb_range,
        max_invalid_ratio=args.max_invalid_ratio,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    for split, s in summaries.items():
        print(
            f"{split}: {s.converted} frames ({s.resumed} already done), {s.filtered} pass the filter, "
            f"{len(s.missing)} skipped for missing files"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
