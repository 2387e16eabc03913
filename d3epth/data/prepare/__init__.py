"""Conversion of raw downloads into the layouts the readers expect (raw Hypersim -> Marigold's PNG layout)."""

from d3epth.data.prepare.hypersim import convert_frame, prepare_hypersim, read_split_csv

__all__ = ["convert_frame", "prepare_hypersim", "read_split_csv"]
