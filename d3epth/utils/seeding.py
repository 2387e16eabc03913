"""Seeds derived from a base seed and a position, for random streams that must replay exactly after a resume."""

from __future__ import annotations

import numpy as np

__all__ = ["derive_seed"]


def derive_seed(seed: int, *key: int) -> int:
    """A 63-bit seed for the stream at position ``key`` (e.g. ``(epoch, batch, slot)``) of base seed ``seed``.

    ``numpy.random.SeedSequence`` hashes the integers into a well-mixed seed, so nearby positions get unrelated
    streams (``seed + position`` would give the neighbouring positions of two base seeds the same stream). A stream
    seeded this way depends only on where it is used, never on how many draws came before, so a run resumed from a
    checkpoint replays it without any saved generator state.

    Args:
        seed: base seed, ``>= 0``.
        key: non-negative integers naming the position.

    Returns:
        An integer in ``[0, 2**63)``, valid for ``torch.manual_seed`` and ``torch.Generator.manual_seed``.
    """
    state = np.random.SeedSequence(seed, spawn_key=tuple(int(k) for k in key)).generate_state(1, dtype=np.uint64)
    return int(state[0]) >> 1
