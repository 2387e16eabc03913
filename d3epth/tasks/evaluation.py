"""Moved to :mod:`d3epth.inference.evaluation`; this module re-exports it for code written against the old path."""

from d3epth.inference.evaluation import evaluate, format_table, time_per_image

__all__ = ["evaluate", "format_table", "time_per_image"]
