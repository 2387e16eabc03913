"""Training-loader throughput (samples/s) at 480x640 by worker count, beside the rate training consumes samples.

Reads Hypersim in Marigold's preprocessed layout through the real ``HypersimDataset`` + ``DepthDataModule`` path
(decode PNGs, resize to 480x640 with ``configs/data.yaml``'s interpolation, flip, 2 %/98 % normalisation, collate).
By default it first writes a temporary set of native-size (768x1024) frames with ``tests/helpers/data.py``;
``--root sample_data/hypersim`` reads generated sample data instead. The worker counts always include
``configs/data.yaml``'s ``num_workers``.

    python benchmarks/data_throughput.py                      # temporary 768x1024 set, workers 0 1 2
    python benchmarks/data_throughput.py --train-step --decode-cost   # + consumption and the per-stage cost
    python benchmarks/data_throughput.py --root sample_data/hypersim --workers 0 2 4

Rounds alternate between the worker counts (0, 1, 2, 0, 1, 2, ...) so a busy neighbour on a shared CPU affects all
settings alike; the table shows the best round's steady-state rate (after ``--warmup`` batches, which include worker
start-up) and the start-up time separately.

``--train-step`` adds, to every round, ``--steps`` stage-2 optimiser steps of ``configs/stage2.yaml``'s task on the
paper student (``configs/stage1.yaml``'s; random weights) at the loader's resolution, on batches taken from the
loader beforehand (so the step time holds no loading), and prints each worker count's supply / consumption ratio.
``--decode-cost`` times each stage of loading one sample (PNG decodes, RGB to [-1, 1], resize, flip, ``depth_norm``,
collate) by wrapping the pipeline's own functions, over one 0-worker pass; the README's worker advice is
``workers ~= N x (ms/sample) / 1000`` for a GPU consuming ``N`` samples/s.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import torch

from d3epth.data import DepthDataModule, HypersimDataset, base, datamodule, transforms

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paper_shapes import (  # benchmarks/
    PRECISIONS,
    REPO,
    config_node,
    optimiser_step,
    optimizer_for,
    parse_student,
    stage2_arguments,
)

DATA_CONFIG = REPO / "configs" / "data.yaml"
#: The stages ``--decode-cost`` times: label -> (owner, attribute) of the pipeline function that does it.
STAGES: dict[str, tuple[Any, str]] = {
    "RGB PNG decode": (base, "read_rgb"),
    "depth PNG decode": (base, "read_uint16_png"),
    "RGB to [-1, 1] float": (base, "image_from_uint8"),
    "resize": (transforms.Resize, "__call__"),
    "flip (p = 0.5)": (transforms.HorizontalFlip, "__call__"),
    "depth_norm (2/98 % quantiles)": (base, "normalize_depth"),
    "collate": (datamodule, "collate_samples"),
}


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


def make_datamodule(root: Path, workers: int, batch_size: int, batches: int, args: argparse.Namespace) -> Any:
    """The training datamodule the benchmark reads through (one Hypersim set, flips on, no pinned memory)."""
    dataset = HypersimDataset(
        root, split=args.split, resize=args.resize, image_interpolation=args.image_interpolation, check="none"
    )
    return DepthDataModule(
        train={"hypersim": dataset},
        batch_size=batch_size,
        num_workers=workers,
        persistent_workers=False,
        pin_memory=False,
        epoch_length=batches,
        seed=0,
    )


def time_loader(root: Path, workers: int, args: argparse.Namespace) -> tuple[float, float, int]:
    """One pass: (start-up seconds incl. warm-up batches, steady-state samples/s, samples timed)."""
    dm = make_datamodule(root, workers, args.batch_size, args.warmup + args.batches, args)
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


class Stage2Consumer:
    """Stage-2 optimiser steps of the paper task (``configs/stage2.yaml``) at the loader's resolution, on the CPU.

    The batches are read once, up front, through the same loader path (0 workers), so a timed step holds only the
    training work: ``training_step`` (student forward + Hybrid Depth Loss) under the configured autocast, backward and
    the AdamW step, as a Lightning step does.
    """

    def __init__(self, root: Path, args: argparse.Namespace) -> None:
        from d3epth.tasks import PixelRefinementTask  # Lightning: imported only when consumption is measured

        self.arguments = stage2_arguments(student=parse_student(args.student))
        self.task = PixelRefinementTask(**self.arguments).train()
        self.optimizer = optimizer_for(self.task)
        self.precision, self.threads, self.batch_size = args.precision, args.step_threads, args.step_batch_size
        loader = make_datamodule(root, 0, self.batch_size, args.steps + args.step_warmup, args).train_dataloader()
        self.batches = list(loader)
        self.step = 0
        self.run(args.step_warmup)  # oneDNN picks its kernels on the first steps

    def run(self, steps: int) -> float:
        """``steps`` optimiser steps; returns the median samples/s (batch size / step seconds)."""
        seconds = []
        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            for _ in range(steps):
                batch = self.batches[self.step % len(self.batches)]
                start = time.perf_counter()
                optimiser_step(self.task, self.optimizer, batch, self.step, self.precision)
                seconds.append(time.perf_counter() - start)
                self.step += 1
        finally:
            torch.set_num_threads(previous)
        return self.batch_size / statistics.median(seconds) if seconds else float("nan")


def _timed(function: Callable[..., Any], bucket: list[float]) -> Callable[..., Any]:
    """``function``, adding each call's wall time (seconds) to ``bucket``; works as a method when set on a class."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            bucket.append(time.perf_counter() - start)

    return wrapper


def decode_cost(root: Path, args: argparse.Namespace) -> tuple[dict[str, float], float]:
    """Milliseconds per sample of each of :data:`STAGES` and of the whole 0-worker loader, over one pass.

    The pipeline's own functions are wrapped in place (``unittest.mock.patch.object``), so the stages are the ones the
    loader runs; whatever is not a listed stage (masks, the range test, intrinsics, sample dicts) is the remainder.
    """
    buckets: dict[str, list[float]] = {name: [] for name in STAGES}
    with contextlib.ExitStack() as stack:
        for name, (owner, attribute) in STAGES.items():
            stack.enter_context(mock.patch.object(owner, attribute, _timed(getattr(owner, attribute), buckets[name])))
        loader = make_datamodule(root, 0, args.batch_size, args.warmup + args.batches, args).train_dataloader()
        batches: Iterator[dict[str, Any]] = iter(loader)
        for _ in range(args.warmup):
            next(batches)
        for bucket in buckets.values():
            bucket.clear()  # the warm-up batches (first-call costs) are not counted
        samples = 0
        start = time.perf_counter()
        for batch in batches:
            samples += batch["image"].shape[0]
        total = (time.perf_counter() - start) * 1000 / samples
    return {name: sum(bucket) * 1000 / samples for name, bucket in buckets.items()}, total


def print_decode_cost(stages: dict[str, float], total: float, consumption: float | None) -> None:
    """The per-stage table and the workers a GPU needs (``workers ~= N x ms/sample / 1000``)."""
    print(f"\n{'stage (one sample, 1 thread)':<32} | {'ms/sample':>9} | {'share':>6}")
    print("-" * 54)
    for name, ms in stages.items():
        print(f"{name:<32} | {ms:>9.2f} | {ms / total:>6.1%}")
    rest = total - sum(stages.values())
    print(f"{'rest (masks, range test, dicts)':<32} | {rest:>9.2f} | {rest / total:>6.1%}")
    print(f"{'total (0-worker loader)':<32} | {total:>9.2f} | {1:>6.1%}")
    print(f"one worker supplies ~{1000 / total:.1f} samples/s; N samples/s need ~N x {total / 1000:.4f} workers")
    if consumption is not None:
        need = consumption * total / 1000
        print(f"  this CPU's stage-2 consumption ({consumption:.2f} samples/s) needs {need:.2f} workers")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a table; returns the exit status."""
    data_defaults = config_node(DATA_CONFIG, "data", "init_args")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=None, help="Hypersim root (default: a temporary set)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--frames", type=int, default=40, help="frames in the temporary set")
    parser.add_argument("--frame-size", type=int, nargs=2, default=[768, 1024], metavar=("H", "W"))
    parser.add_argument("--resize", type=int, nargs=2, default=[480, 640], metavar=("H", "W"))
    parser.add_argument(
        "--image-interpolation",
        default=data_defaults["train"]["hypersim"]["init_args"]["image_interpolation"],
        help="RGB resize mode (default: configs/data.yaml's Hypersim setting)",
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="+ configs/data.yaml's num_workers")
    parser.add_argument("--batch-size", type=int, default=data_defaults["batch_size"], help="loader batch")
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
    parser.add_argument("--train-step", action="store_true", help="also time stage-2 steps (consumption)")
    parser.add_argument("--student", default="paper", help="stage-2 student: paper (default), tiny or JSON")
    parser.add_argument("--step-batch-size", type=int, default=2, help="stage-2 batch (configs/stage2.yaml: 8)")
    parser.add_argument("--steps", type=int, default=3, help="timed stage-2 steps per round")
    parser.add_argument("--step-warmup", type=int, default=1, help="untimed stage-2 steps, once")
    parser.add_argument("--step-threads", type=int, default=torch.get_num_threads(), help="torch threads of a step")
    parser.add_argument("--precision", choices=PRECISIONS, default="32", help="autocast of the step, as Lightning's")
    parser.add_argument("--decode-cost", action="store_true", help="also time each loading stage (ms/sample)")
    args = parser.parse_args(argv)
    default_workers = int(data_defaults["num_workers"])
    args.workers = list(dict.fromkeys([*args.workers, default_workers]))
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
        consumer = Stage2Consumer(root, args) if args.train_step else None
        results: dict[int, list[tuple[float, float, int]]] = {w: [] for w in args.workers}
        consumption: list[float] = []
        for _ in range(args.rounds):
            for workers in args.workers:
                results[workers].append(time_loader(root, workers, args))
            if consumer is not None:
                consumption.append(consumer.run(args.steps))
        stages = decode_cost(root, args) if args.decode_cost else None

    reference = max(r[1] for r in results[args.workers[0]])
    print(
        f"\nCPU: {cpu_name()} ({os.cpu_count()} logical cores visible), torch {torch.__version__}, "
        f"{torch.get_num_threads()} intra-op threads in the main process"
    )
    if hasattr(os, "getloadavg"):  # other processes on a shared CPU skew the numbers; say how busy it was
        print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(
        f"data: {root} ({args.split}), resize {args.resize[0]}x{args.resize[1]} ({args.image_interpolation}), "
        f"batch {args.batch_size}, {args.batches} timed + {args.warmup} warm-up batches per round, best of "
        f"{args.rounds} rounds"
    )
    consumed = max(consumption) if consumption else None
    if consumer is not None:
        student = consumer.arguments["student"]
        print(
            f"consumption: stage-2 step of configs/stage2.yaml's task, student {student['backbone']} (decoder "
            f"{student.get('decoder_channels')}), batch {args.step_batch_size}, precision {args.precision}, "
            f"{args.step_threads} threads: best round {consumed:.2f} samples/s (median of {args.steps} steps; rounds "
            f"{', '.join(f'{c:.2f}' for c in consumption)})"
        )
    print()
    header = f"{'workers':>7} | {'samples/s':>9} | {'ms/sample':>9} | {'vs ' + str(args.workers[0]) + ' workers':>12}"
    header += f" | {'start-up s':>10}" + (f" | {'supply/consumption':>18}" if consumed else "")
    print(header)
    print("-" * len(header))
    for workers in args.workers:
        best = max(results[workers], key=lambda r: r[1])
        row = f"{workers:>7} | {best[1]:>9.2f} | {1000 / best[1]:>9.1f} | {best[1] / reference:>11.2f}x"
        row += f" | {best[0]:>10.2f}"
        row += f" | {best[1] / consumed:>17.1f}x" if consumed else ""
        print(row + ("   <- configs/data.yaml" if workers == default_workers else ""))
    if stages is not None:
        print_decode_cost(*stages, consumed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
