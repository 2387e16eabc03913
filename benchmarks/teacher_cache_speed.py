"""Stage-1 training step time with the teacher-target cache versus running the frozen teacher every step.

Stage 1 distils the teacher's one-step depth latent. Without a cache every training step runs the teacher (VAE
encoder + UNet) on the batch before the student's forward and backward; with ``tools/cache_teacher.py`` the targets are
computed once per sample (and its mirror) and ``DepthDataModule(teacher_cache=...)`` serves them as
``teacher_latent``. This script measures both in one process on the same generated Hypersim-layout data:

1. writes ``--samples`` training frames of ``--size`` (Marigold's preprocessed Hypersim layout) to a temporary folder,
2. runs ``tools/cache_teacher.py`` on them (timed: the one-off price of the cache),
3. trains one ``LatentDistillationTask`` with two loaders, one plain and one with the cache, alternating which goes
   first, so both see the same machine state; each step is ``training_step`` + backward + AdamW step, the work a
   Lightning step does, timed separately from fetching the batch,

and prints median ms/step (data, step, total) for each, the speed-up, the caching time, and the hardware. It also
checks, once, that a cached target equals the teacher's latent for that (possibly mirrored) image.

Usage::

    python benchmarks/teacher_cache_speed.py                               # tiny random teacher, 96x128, CPU
    python benchmarks/teacher_cache_speed.py --teacher sd2 --student paper --size 480 640 --batch-size 1 \
        --samples 2 --warmup 1 --steps 2                                   # paper shapes (~15-20 min on 2 CPU cores)
    python benchmarks/teacher_cache_speed.py --size 480 640 --device cuda --teacher checkpoints/marigold-depth-v1-1
    python benchmarks/teacher_cache_speed.py --teacher '{"config": {"block_out_channels": [64, 128, 128]}}'

``--teacher`` is ``tiny`` (a random test-sized teacher), ``sd2`` (random weights in Stable Diffusion 2's shape, the
compute of Marigold / E2E-FT: ``d3epth.models.teacher.build.sd2_config``), or any ``load_teacher`` source: a path
(diffusers directory, ``TeacherTask`` checkpoint) or a JSON object (``{"config": {...}}`` builds a random teacher of
that shape). ``--student`` is ``tiny``, ``paper`` (``configs/stage1.yaml``'s student) or ``DepthStudent`` arguments as
JSON. Weights do not change the timing. The caching cost is also given per sample without the teacher's build time
(measured separately, when the timed task builds the same teacher).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from d3epth.cli.common import parser_from_docstring

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paper_shapes import PRECISIONS, optimiser_step, optimizer_for, parse_student  # benchmarks/, put on sys.path above
from student_speed import count_flops

REPO = Path(__file__).resolve().parents[1]
TINY_TEACHER = {"config": {"seed": 0}}


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = parser_from_docstring("benchmarks/teacher_cache_speed.py", __doc__)
    parser.add_argument("--teacher", default="tiny", help="teacher: tiny, sd2, a path or a JSON object")
    parser.add_argument(
        "--student", default="tiny", help="student: tiny (a test backbone), paper (configs/stage1.yaml's) or JSON"
    )
    parser.add_argument("--precision", choices=PRECISIONS, default="32", help="autocast of the step, as Lightning's")
    parser.add_argument("--size", type=int, nargs=2, default=[96, 128], metavar=("H", "W"), help="image size")
    parser.add_argument("--batch-size", type=int, default=4, help="training batch size")
    parser.add_argument("--samples", type=int, default=24, help="training frames to generate and cache")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per variant first")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--workdir", default=None, help="where to write the data and the cache (default: a temp dir)")
    return parser


def parse_teacher(value: str) -> str | dict[str, Any]:
    """``--teacher``: ``tiny``, ``sd2``, an existing path (kept as a path) or a JSON object."""
    if value == "tiny":
        return TINY_TEACHER
    if value == "sd2":
        from d3epth.models.teacher.build import sd2_config  # diffusers: imported once HF_HUB_OFFLINE is set

        return json.loads(json.dumps({"config": sd2_config()}))  # tuples as lists, as a config file holds them
    if Path(value).expanduser().exists():
        return str(Path(value).expanduser())
    try:
        source = json.loads(value)
    except json.JSONDecodeError as err:
        raise SystemExit(f"--teacher: {value!r} is neither an existing path nor JSON ({err})") from err
    if not isinstance(source, dict):
        raise SystemExit(f"--teacher: expected a path or a JSON object, got {value!r}")
    return source


def describe_hardware(device: torch.device) -> str:
    """CPU model, core and thread counts, library versions, and the GPU when one is used."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    except OSError:
        pass
    lines = [
        f"cpu: {cpu} ({os.cpu_count()} logical cores, torch threads {torch.get_num_threads()})",
        f"torch {torch.__version__}, python {platform.python_version()}, {platform.platform()}",
    ]
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        lines.append(f"gpu: {props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}")
    return "\n".join(lines)


def write_config(path: Path, data_root: Path, teacher: str | dict[str, Any], student: dict[str, Any]) -> None:
    """A stage-1 config for ``tools/cache_teacher.py``: the training set and the teacher (JSON is valid YAML)."""
    config = {
        "model": {
            "class_path": "d3epth.tasks.LatentDistillationTask",
            "init_args": {"student": student, "teacher": teacher},
        },
        "data": {
            "class_path": "d3epth.data.DepthDataModule",
            "init_args": {
                "train": {
                    "hypersim": {
                        "class_path": "d3epth.data.HypersimDataset",
                        "init_args": {"root": str(data_root), "split": "train"},
                    }
                },
                "num_workers": 0,
            },
        },
    }
    path.write_text(json.dumps(config, indent=2))


def run_cache_tool(config: Path, out: Path, device: torch.device, batch_size: int) -> float:
    """Fill the cache with ``tools/cache_teacher.py``; returns its wall time in seconds."""
    spec = importlib.util.spec_from_file_location("tools_cache_teacher", REPO / "tools" / "cache_teacher.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    argv = ["--config", str(config), "--out", str(out), "--device", str(device), "--num-workers", "0"]
    argv += ["--batch-size", str(batch_size), "--no-progress"]
    start = time.perf_counter()
    if tool.main(argv) != 0:
        raise SystemExit("tools/cache_teacher.py failed (see above)")
    return time.perf_counter() - start


def batches(data_root: Path, batch_size: int, cache: Path | None) -> Iterator[dict[str, Any]]:
    """An endless training-batch iterator (random flips on), with or without the teacher cache."""
    from d3epth.data import DepthDataModule, HypersimDataset  # after main sets HF_HUB_OFFLINE

    datamodule = DepthDataModule(
        train={"hypersim": HypersimDataset(data_root, split="train")},
        batch_size=batch_size,
        num_workers=0,
        epoch_length=1_000_000,
        teacher_cache=str(cache) if cache is not None else None,
    )
    return iter(datamodule.train_dataloader())


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch with its tensors on ``device``."""
    return {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print it. Returns the exit code."""
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    teacher_source = parse_teacher(args.teacher)
    student = parse_student(args.student)
    device = torch.device(args.device)
    sync: Callable[[], None] = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    sys.path.insert(0, str(REPO))
    # After HF_HUB_OFFLINE is set: huggingface_hub reads it when diffusers is first imported.
    from d3epth.data.teacher_cache import TeacherCache, teacher_fingerprint
    from d3epth.tasks import LatentDistillationTask
    from tests.helpers.data import write_hypersim  # the tests' data writers; tests/ is a package under the repo

    with tempfile.TemporaryDirectory(prefix="teacher_cache_speed_") as tmp:
        work = Path(args.workdir) if args.workdir else Path(tmp)
        data_root = work / "hypersim"
        if not (data_root / "train" / "filename_list_train.txt").is_file():
            write_hypersim(data_root, counts={"train": args.samples}, size=tuple(args.size))
        config = work / "stage1.yaml"
        write_config(config, data_root, teacher_source, student)
        cache = work / "cache"
        cache_seconds = run_cache_tool(config, cache, device, args.batch_size)

        torch.manual_seed(0)
        start = time.perf_counter()
        task = LatentDistillationTask(student=student, teacher=teacher_source, lr=1e-4, optimizer="adamw")
        build_seconds = time.perf_counter() - start  # mostly the teacher, which the cache tool built as well
        TeacherCache(cache).check_teacher(teacher_fingerprint(task.teacher), teacher_source)  # same teacher
        task = task.to(device).train()
        task.teacher.eval()  # frozen, as LatentDistillationTask keeps it during fit
        optimizer = optimizer_for(task)
        loaders = {"teacher every step": batches(data_root, args.batch_size, None)}
        loaders["cached targets"] = batches(data_root, args.batch_size, cache)

        # The cached latent is the teacher's latent of the (possibly mirrored) image, up to float16 storage.
        probe = to_device(next(loaders["cached targets"]), device)
        with torch.no_grad():
            expected, _ = task.teacher_targets(probe["image"])
        cached = probe["teacher_latent"].float()
        error = ((cached - expected).abs().max() / expected.abs().max()).item()

        times: dict[str, dict[str, list[float]]] = {name: {"data": [], "step": []} for name in loaders}
        flops: dict[str, float] = {}
        for i in range(args.warmup + args.steps):
            order = list(loaders.items()) if i % 2 else list(loaders.items())[::-1]  # alternate who goes first
            for name, loader in order:
                start = time.perf_counter()
                batch = to_device(next(loader), device)
                sync()
                fetched = time.perf_counter()
                if i == 0 and args.warmup:  # the first warm-up step (untimed) also counts the step's FLOPs
                    step = functools.partial(optimiser_step, task, optimizer, batch, i, args.precision)
                    flops[name] = count_flops(step) / args.batch_size
                else:
                    optimiser_step(task, optimizer, batch, i, args.precision)
                sync()
                done = time.perf_counter()
                if i >= args.warmup:
                    times[name]["data"].append((fetched - start) * 1000)
                    times[name]["step"].append((done - fetched) * 1000)

    print(describe_hardware(device))
    print(
        f"stage 1, {args.size[0]}x{args.size[1]} images, batch {args.batch_size}, device {device}, "
        f"precision {args.precision}, teacher {args.teacher if args.teacher in ('tiny', 'sd2') else ''} "
        f"{json.dumps(teacher_source)}, student {json.dumps(student)}"
    )
    teacher_m = sum(p.numel() for p in task.teacher.parameters()) / 1e6
    print(f"teacher {teacher_m:.0f} M parameters (UNet + VAE); the live step runs its VAE encoder + UNet")
    print(f"median over {args.steps} interleaved steps each (after {args.warmup} warm-up steps):")
    totals = {}
    for name, parts in times.items():
        data, step = statistics.median(parts["data"]), statistics.median(parts["step"])
        totals[name] = statistics.median([d + s for d, s in zip(parts["data"], parts["step"], strict=True)])
        print(f"  {name:<20s} data {data:8.1f} ms   step {step:8.1f} ms   total {totals[name]:8.1f} ms/step")
    speedup = totals["teacher every step"] / totals["cached targets"]
    per_sample = cache_seconds / args.samples * 1000
    print(f"speed-up with the cache: {speedup:.2f}x")
    if flops:  # hardware-independent: what the speed-up would be if every FLOP ran at the same rate
        live, cached = flops["teacher every step"], flops["cached targets"]
        print(
            f"FLOPs per sample (torch.utils.flop_counter, 2 per multiply-add): teacher every step "
            f"{live / 1e9:.4g} G, cached {cached / 1e9:.4g} G, ratio {live / cached:.2f}x"
        )
    print(
        f"caching {args.samples} samples (each + its mirror) took {cache_seconds:.1f} s ({per_sample:.0f} ms/sample, "
        f"including building the teacher)"
    )
    net = max(cache_seconds - build_seconds, 0.0) / args.samples * 1000
    print(
        f"building the task (teacher + student) took {build_seconds:.1f} s, so caching costs about {net:.0f} "
        f"ms/sample (each + its mirror), {net / totals['cached targets']:.1f} cached steps' worth"
    )
    print(f"cached target vs teacher: max |difference| / max |latent| = {error:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
