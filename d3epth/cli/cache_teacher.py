"""Compute the frozen teacher's stage-1 targets once, for every training sample and its mirror, and store them.

Usage::

    python tools/cache_teacher.py --config configs/stage1.yaml --out cache/stage1_teacher [--key.path=value ...]
    python tools/fit.py --config configs/stage1.yaml --data.init_args.teacher_cache=cache/stage1_teacher

The config is the stage-1 run config: its ``data`` node gives the training sets (each sample is taken as its dataset
returns it, after the dataset's own resize / crop, before augmentation) and ``model.init_args.teacher`` the teacher
(any :func:`~d3epth.models.teacher.load_teacher` source). For each sample the teacher's one-step depth latent is
computed for the image and for its horizontal mirror (the teacher is not flip-equivariant), in batches, on the GPU
when there is one. The run is resumable: samples already in the cache are skipped, and an interrupted run loses at
most one shard. The cache format is described in :mod:`d3epth.data.teacher_cache`; the loop is
:func:`~d3epth.data.teacher_cache.fill_cache`.

A config whose training images are not reproducible is refused: a ``RandomCrop`` (or any other transform) in
``data.init_args.train_transforms``, or a random transform in a dataset's own ``transforms``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import d3epth
from d3epth.cli.common import add_config_arguments, fail, one_line_errors
from d3epth.errors import ConfigError


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``tools/cache_teacher.py``."""
    parser = argparse.ArgumentParser(
        prog="tools/cache_teacher.py",
        allow_abbrev=False,  # --d... must not be taken for --dtype: the config overrides pass through
        epilog="Any other --key.path=value option overrides the config, as in tools/fit.py.",
        description=(
            "Cache the teacher's stage-1 targets (one-step depth latent of each training image and of its mirror) so "
            "that stage 1 reads them instead of running the teacher every step. Use the cache with "
            "--data.init_args.teacher_cache=<out>."
        ),
    )
    add_config_arguments(parser, config_help="stage-1 run config (e.g. configs/stage1.yaml)")
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="cache directory (created, or extended if it holds a cache of the same teacher); "
        "default: the config's data.init_args.teacher_cache",
    )
    parser.add_argument(
        "--batch-size", type=int, default=4, help="samples per teacher call; the teacher sees twice as many images"
    )
    parser.add_argument("--shard-size", type=int, default=256, help="samples per shard file (the unit of resuming)")
    parser.add_argument(
        "--dtype",
        choices=("float16", "float32"),
        default="float16",
        help="storage dtype; float16 rounds each value by at most 2**-11 of its magnitude",
    )
    parser.add_argument(
        "--with-depth",
        action="store_true",
        help="also store the decoded one-step depth (teacher_depth, stage 2's pseudo-label for unlabeled images)",
    )
    parser.add_argument("--device", default="auto", help="'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:1', ...")
    parser.add_argument("--num-workers", type=int, default=2, help="DataLoader workers decoding the images")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


@one_line_errors
def main(argv: list[str]) -> int:
    """Parse arguments, build the training sets and the teacher, and fill the cache. Returns the exit code."""
    args, overrides = build_parser().parse_known_args(argv)
    for name in ("batch_size", "shard_size"):
        if getattr(args, name) < 1:
            return fail(f"--{name.replace('_', '-')} must be >= 1")

    from d3epth.cli.trainer import build_cli  # heavy: imported after parsing (see d3epth.cli)
    from d3epth.data.teacher_cache import TeacherCacheWriter, check_cacheable, fill_cache, teacher_fingerprint
    from d3epth.models.teacher import load_teacher
    from d3epth.models.teacher.sources import resolve_teacher_source

    configs = [arg for path in args.config for arg in ("--config", path)]
    cli = build_cli([*configs, *overrides], prog="tools/cache_teacher.py", parse_only=True)
    model = cli.config.get("model") or {}
    source = model.get("init_args", {}).get("teacher") if model.get("init_args") else None
    if source is None:
        raise ConfigError(f"{args.config[-1]}: no model.init_args.teacher; this tool needs a stage-1 config")
    source = resolve_teacher_source(source.as_dict() if hasattr(source, "as_dict") else source, "teacher")
    if isinstance(source, dict):  # unset options left out of the cache's record
        source = {key: value for key, value in source.items() if value is not None}
    out = args.out or cli.config.data.init_args.get("teacher_cache")
    if not out:
        raise ConfigError("give --out DIR (the config sets no data.init_args.teacher_cache)")
    # The datamodule is built without its cache: this run is what writes it.
    datamodule = cli.build_datamodule(teacher_cache=None)
    train_sets = getattr(datamodule, "train_sets", None)
    if not train_sets:
        raise ConfigError(f"{args.config[-1]}: the datamodule has no training sets (data.init_args.train)")
    check_cacheable(train_sets, getattr(datamodule, "train_transforms", None))

    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    teacher = load_teacher(source, freeze=True, purpose="model.init_args.teacher")
    info = {
        "source": source,
        "fingerprint": teacher_fingerprint(teacher),  # before moving: the training run hashes it on the CPU too
        "vae_scale_factor": int(teacher.vae_scale_factor),
        "latent_channels": int(teacher.latent_channels),
    }
    teacher = teacher.to(device)
    writer = TeacherCacheWriter(out, info, args.dtype, d3epth.__version__, with_depth=args.with_depth)
    start = time.perf_counter()
    computed, skipped = fill_cache(
        writer,
        train_sets,
        teacher,
        device,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        num_workers=args.num_workers,
        progress=not args.no_progress,
    )
    elapsed = time.perf_counter() - start
    print(
        f"teacher cache {Path(out)}: computed {computed} samples (x2 flips) in {elapsed:.1f} s on {device}, "
        f"{skipped} already cached; train with --data.init_args.teacher_cache={out}"
    )
    return 0
