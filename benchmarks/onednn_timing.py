"""oneDNN's own timing of every primitive it executes during a call, grouped: where a CPU forward pass spends its time.

``torch.backends.mkldnn.verbose`` makes oneDNN print one line per executed primitive (kind, implementation, problem
descriptor, milliseconds: the oneDNN developer guide's "Verbose Mode") on the process's standard output, from C.
:func:`primitive_times` captures those lines for a few calls of a function (file descriptor 1 sent to a temporary
file), and :func:`group_primitives` sums them per group: convolutions by shape class (1x1, depthwise,
other) with their FLOPs read from the problem descriptor, every other primitive kind (``eltwise``, ``reorder``,
``matmul``, ...) by kind. What the groups leave of the calls' wall time is ATen's own kernels and per-operator
overhead.
"""

from __future__ import annotations

import ctypes
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["Primitive", "convolution_flops", "group_primitives", "primitive_times"]

_DIMS = re.compile(r"([a-z]+)(\d+)")


@dataclass(frozen=True)
class Primitive:
    """One executed oneDNN primitive.

    ``kind`` (``convolution``, ``eltwise``, ...), ``implementation``, ``problem`` (for a convolution e.g.
    ``g48mb1_ic48oc48_ih120oh120kh7sh1dh0ph3_iw160ow160kw7sw1dw0pw3``) and its time, ``ms``.
    """

    kind: str
    implementation: str
    problem: str
    ms: float


def _parse(line: str) -> Primitive | None:
    fields = line.strip().split(",")
    if not fields[0].startswith("onednn_verbose") or "exec" not in fields:
        return None
    at = fields.index("exec")  # "...,exec,cpu,<kind>,<implementation>,...,<problem>,<ms>"
    try:
        return Primitive(fields[at + 2], fields[at + 3], fields[-2], float(fields[-1]))
    except (IndexError, ValueError):
        return None


def primitive_times(fn: Callable[[], object], calls: int = 3) -> tuple[list[Primitive], float]:
    """The primitives oneDNN executed during ``calls`` calls of ``fn`` (after one untimed call), and ms per call.

    The primitives come in execution order; the wall milliseconds per call are of the same calls, in verbose mode,
    which costs some time of its own: compare the primitives with them, not with a call timed without it.
    """
    with torch.inference_mode():
        fn()
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile(mode="w+") as capture:
        os.dup2(capture.fileno(), 1)
        try:
            with torch.inference_mode(), torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                start = time.perf_counter()
                for _ in range(calls):
                    fn()
                wall_ms = (time.perf_counter() - start) * 1e3 / calls
            ctypes.CDLL(None).fflush(None)  # oneDNN prints through C stdio: flush it before restoring the descriptor
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        capture.seek(0)
        return [p for p in map(_parse, capture) if p is not None], wall_ms


def _dims(problem: str) -> dict[str, int]:
    """``{"mb": 1, "ic": 48, "oc": 48, "kh": 7, ...}`` from a oneDNN convolution descriptor (``g`` when grouped)."""
    return {key: int(value) for key, value in _DIMS.findall(problem.replace("_", ""))}


def convolution_flops(problem: str) -> int:
    """FLOPs (2 per multiply-add) of a 2-D convolution from its oneDNN problem descriptor."""
    dims = _dims(problem)
    per_output = dims["ic"] // dims.get("g", 1) * dims.get("kh", 1) * dims.get("kw", 1)
    return 2 * dims["mb"] * dims["oc"] * dims.get("oh", 1) * dims.get("ow", 1) * per_output


def _group(primitive: Primitive) -> str:
    if primitive.kind != "convolution":
        return primitive.kind
    dims = _dims(primitive.problem)
    if dims["ic"] == dims.get("g", 1) > 1:
        return "depthwise convolution"
    if dims.get("kh", 1) == dims.get("kw", 1) == 1 and dims.get("g", 1) == 1:
        return "1x1 convolution"
    return "other convolution"


def group_primitives(primitives: list[Primitive], calls: int) -> dict[str, dict[str, float]]:
    """Per group, per call: ``{"count", "ms", "gflop"}`` (GFLOP for convolutions only), the most time first."""
    totals: dict[str, list[float]] = {}
    for primitive in primitives:
        total = totals.setdefault(_group(primitive), [0, 0.0, 0])
        total[0] += 1
        total[1] += primitive.ms
        total[2] += convolution_flops(primitive.problem) if primitive.kind == "convolution" else 0
    groups = {
        name: {"count": count / calls, "ms": ms / calls, "gflop": flops / 1e9 / calls}
        for name, (count, ms, flops) in totals.items()
    }
    return dict(sorted(groups.items(), key=lambda item: -item[1]["ms"]))
