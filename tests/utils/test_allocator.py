"""d3epth.utils.allocator: large tensors come from glibc's heap and stay there when freed.

Checked with glibc's own accounting (``mallinfo2``: bytes in separately mapped blocks, free bytes kept in the heap),
which is deterministic, rather than with page-fault counts or time, which depend on the kernel and the load. The
setting is process-wide, so each arm runs in its own interpreter.
"""

from __future__ import annotations

import ctypes
import subprocess
import sys

import pytest

CHILD = """
import ctypes, sys, torch
from d3epth.utils.allocator import reuse_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
applied = reuse_freed_memory() if sys.argv[1] == "on" else None
mapped_before = libc.mallinfo2().hblkhd
activation = torch.empty(10 * 2**20).fill_(1.0)  # 40 MB, like a forward pass's largest map in fp32
mapped = libc.mallinfo2().hblkhd - mapped_before
del activation
print(applied, mapped, libc.mallinfo2().fordblks)
"""
MB = 2**20


def heap_state(arm: str) -> tuple[str, int, int]:
    out = subprocess.run([sys.executable, "-c", CHILD, arm], capture_output=True, text=True, check=True).stdout
    applied, mapped, kept_free = out.split()
    return applied, int(mapped), int(kept_free)


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or not hasattr(ctypes.CDLL(None), "mallinfo2"), reason="glibc >= 2.33"
)
def test_large_tensors_come_from_the_heap_and_stay_there_when_freed() -> None:
    _, default_mapped, default_kept = heap_state("off")
    applied, mapped, kept = heap_state("on")
    # glibc's default serves 40 MB (above its adaptive ceiling of 32 MiB) by its own mapping, unmapped on free.
    assert default_mapped >= 40 * MB and default_kept < 40 * MB
    assert applied == "True"
    assert mapped < 40 * MB and kept >= 40 * MB
