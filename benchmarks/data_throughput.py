"""Training-loader throughput (samples/s) at 480x640 for several worker counts, measured side by side in one run.

Reads Hypersim in Marigold's preprocessed layout through the real ``HypersimDataset`` + ``DepthDataModule`` path
(decode PNGs, resize to 480x640, flip, 2 %/98 % normalisation, collate). By default it first writes a temporary set
of native-size (768x1024) frames with ``tests/helpers/data.py``; ``--root sample_data/hypersim`` reads generated
sample data instead.

    python benchmarks/data_throughput.py                      # temporary 768x1024 set, workers 0 1 2
    python benchmarks/data_throughput.py --root sample_data/hypersim --workers 0 2 4

Rounds alternate between the worker counts (0, 1, 2, 0, 1, 2, ...) so a busy neighbour on a shared CPU affects all
settings alike; the table shows the best round's steady-state rate (after ``--warmup`` batches, which include worker
start-up) and the start-up time separately.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from d3epth.data import DepthDataModule, HypersimDataset

REPO = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def write_temporary_set(root: Path, n: int, size: tuple[int, int]) -> Path:
    """Write ``n`` Hypersim-layout training frames of ``size`` under ``root`` with the test fixture writer."""
    sys.path.insert(0, str(REPO))
    from tests.helpers.data import write_hypersim  # the tests' data writers; tests/ is a package under the repo

    write_hypersim(root / "hypersim", {"train": n}, size=size, seed=0)
    return root / "hypersim"


def time_loader(root: Path, workers: int, args: argparse.Namespace) -> tuple[float, float, int]:
    """One pass: (start-up seconds incl. warm-up batches, steady-state samples/s, samples timed)."""
    dataset = HypersimDataset(root, split=args.split, resize=args.resize, check="none")
    dm = DepthDataModule(
        train={"hypersim": dataset},
        batch_size=args.batch_size,
        num_workers=workers,
        persistent_workers=False,
        pin_memory=False,
        epoch_length=args.warmup + args.batches,
        seed=0,
    )
    start = time.perf_counter()
    it = iter(dm.train_dataloader())
    for _ in range(args.warmup):
        next(it)
    startup = time.perf_counter() - start
    samples = 0
    t0 = time.perf_counter()
    for batch in it:
        samples += batch["image"].shape[0]
    elapsed = time.perf_counter() - t0
    assert tuple(batch["image"].shape[-2:]) == tuple(args.resize)
    return startup, samples / elapsed, samples


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a table; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=None, help="Hypersim root (default: a temporary set)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--frames", type=int, default=40, help="frames in the temporary set")
    parser.add_argument("--frame-size", type=int, nargs=2, default=[768, 1024], metavar=("H", "W"))
    parser.add_argument("--resize", type=int, nargs=2, default=[480, 640], metavar=("H", "W"))
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--batches", type=int, default=15, help="timed batches per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches per round (include start-up)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads in the main process (DataLoader workers always use 1); with 0 workers the "
        "main process does the decoding, and several OpenMP threads on a busy CPU can make it much slower",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        root = args.root
        if root is None:
            t = time.perf_counter()
            root = write_temporary_set(Path(tmp), args.frames, tuple(args.frame_size))
            print(
                f"wrote {args.frames} frames of {args.frame_size[0]}x{args.frame_size[1]} in "
                f"{time.perf_counter() - t:.1f} s to {root}"
            )
        results: dict[int, list[tuple[float, float, int]]] = {w: [] for w in args.workers}
        for _ in range(args.rounds):
            for workers in args.workers:
                results[workers].append(time_loader(root, workers, args))

    base = max(r[1] for r in results[args.workers[0]])
    print(
        f"\nCPU: {cpu_name()} ({os.cpu_count()} logical cores visible), torch {torch.__version__}, "
        f"{torch.get_num_threads()} intra-op threads in the main process"
    )
    if hasattr(os, "getloadavg"):  # other processes on a shared CPU skew the numbers; say how busy it was
        print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(
        f"data: {root} ({args.split}), resize {args.resize[0]}x{args.resize[1]}, batch {args.batch_size}, "
        f"{args.batches} timed + {args.warmup} warm-up batches per round, best of {args.rounds} rounds\n"
    )
    print(
        f"{'workers':>7} | {'samples/s':>9} | {'ms/sample':>9} | {'vs ' + str(args.workers[0]) + ' workers':>12} | "
        f"{'start-up s':>10}"
    )
    print("-" * 62)
    for workers in args.workers:
        best = max(results[workers], key=lambda r: r[1])
        print(f"{workers:>7} | {best[1]:>9.2f} | {1000 / best[1]:>9.1f} | {best[1] / base:>11.2f}x | {best[0]:>10.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
