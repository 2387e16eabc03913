"""Marigold's Table-1 summary of an evaluation: AbsRel % and δ1 % per benchmark per model, and the average rank.

Marigold (CVPR'24, Table 1) and E2E-FT report zero-shot results as one row per method with AbsRel (lower is better)
and δ1 (higher is better) in percent on NYUv2, KITTI, ETH3D, ScanNet and DIODE, plus the method's rank averaged over
all those numbers. Here a rank is taken per metric per benchmark among the models of one call (1 = best; tied
values share the mean of the ranks they span), and a model's average rank is the mean over every (benchmark, metric)
cell. The rank column appears only when more than one model is compared.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["TABLE1_METRICS", "average_ranks", "format_table1"]

#: (result key, column header, True when larger is better).
TABLE1_METRICS: tuple[tuple[str, str, bool], ...] = (("abs_rel", "AbsRel", False), ("delta1", "δ1", True))

#: Column titles of the benchmarks in Marigold's tables.
_TITLES: dict[str, str] = {"nyu": "NYUv2", "kitti": "KITTI", "eth3d": "ETH3D", "scannet": "ScanNet", "diode": "DIODE"}


def _ranks(values: Sequence[float], larger_is_better: bool) -> list[float]:
    """Rank of each value (1 = best), ties sharing the mean of their ranks."""
    order = sorted(range(len(values)), key=lambda i: -values[i] if larger_is_better else values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def average_ranks(rows: Sequence[dict[str, Any]], benchmarks: Sequence[str]) -> dict[str, float]:
    """Average rank of each model over every (benchmark, AbsRel / δ1) cell.

    Args:
        rows: result rows with ``model``, ``benchmark``, ``abs_rel`` and ``delta1`` (one per model and benchmark).
        benchmarks: the benchmarks to rank on.

    Returns:
        ``{model: mean rank}``; a model missing a benchmark is ranked on the cells it has.
    """
    table = {(row["model"], row["benchmark"]): row for row in rows}
    models = list(dict.fromkeys(row["model"] for row in rows))
    collected: dict[str, list[float]] = {model: [] for model in models}
    for benchmark in benchmarks:
        present = [model for model in models if (model, benchmark) in table]
        for key, _, larger in TABLE1_METRICS:
            values = [float(table[(model, benchmark)][key]) for model in present]
            for model, rank in zip(present, _ranks(values, larger), strict=True):
                collected[model].append(rank)
    return {model: sum(r) / len(r) for model, r in collected.items() if r}


def format_table1(rows: Sequence[dict[str, Any]], benchmarks: Sequence[str]) -> str:
    """Table 1 as plain text: a title row of benchmarks, a row of metric names, one row per model (values in %).

    Returns the table with an ``avg rank`` column when ``rows`` hold more than one model.
    """
    table = {(row["model"], row["benchmark"]): row for row in rows}
    models = list(dict.fromkeys(row["model"] for row in rows))
    ranks = average_ranks(rows, benchmarks) if len(models) > 1 else {}
    top, header = (
        [
            "",
        ],
        ["model"],
    )
    body = [[model] for model in models]
    for benchmark in benchmarks:
        for index, (key, title, _) in enumerate(TABLE1_METRICS):
            top.append(_TITLES.get(benchmark, benchmark) if index == 0 else "")
            header.append(title)
            for model, cells in zip(models, body, strict=True):
                row = table.get((model, benchmark))
                cells.append(f"{100 * float(row[key]):.1f}" if row is not None else "-")
    if ranks:
        top.append("")
        header.append("avg rank")
        for model, cells in zip(models, body, strict=True):
            cells.append(f"{ranks[model]:.2f}")
    lines = [top, header, *body]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    rule = ["-" * w for w in widths]
    text = [lines[0], lines[1], rule, *body]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in text)
