"""Student inference speed: ms/image at 480x640 for the default student and a few backbones, CPU and CUDA.

D³epth's point is a student much faster (the project targets >= 10x) than the one-step diffusion teacher (SD2 UNet
+ VAE encoder/decoder, E2E-FT style). This script times :class:`~d3epth.models.student.DepthStudent` with only the
depth head (the inference path) and, with ``--teacher``, an SD2-shaped one-step teacher built from config with random
weights (same compute as the real one: VAE encode -> 8-channel UNet at t=999 -> VAE decode), then prints the ratio.
It also counts FLOPs (``torch.utils.flop_counter``; 2 per multiply-add) of each student and of the teacher (the
teacher on the ``meta`` device, so no memory or compute is spent), a hardware-independent speed-up bound.

Usage::

    python benchmarks/student_speed.py                          # default backbones, CPU (+ CUDA if available)
    python benchmarks/student_speed.py --devices cuda --dtype float16 --channels-last --batch-size 8 --teacher
    python benchmarks/student_speed.py --backbones test_efficientnet --height 64 --width 64 --repeats 2

Weights are random (timing does not depend on them); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence

import timm
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from d3epth.models.student import DEFAULT_BACKBONE, DepthStudent

DEFAULT_BACKBONES = (DEFAULT_BACKBONE, "efficientnet_b3", "resnet50", "resnet18")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def describe_hardware(devices: Sequence[str]) -> str:
    """One line per fact: CPU, threads, torch/timm versions and the CUDA device if used."""
    lines = [
        f"platform: {platform.platform()}",
        f"cpu: {_cpu_name()} ({os.cpu_count()} logical cores, torch threads {torch.get_num_threads()})",
        f"torch {torch.__version__}, timm {timm.__version__}",
    ]
    if "cuda" in devices and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        lines.append(f"cuda: {props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}")
    return "\n".join(lines)


def time_callable(fn: Callable[[], object], device: str, warmup: int, repeats: int) -> list[float]:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times; return each run's wall time in milliseconds."""
    for _ in range(warmup):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def count_flops(fn: Callable[[], object]) -> float:
    """FLOPs of one call of ``fn`` (2 per multiply-add), counted by torch's dispatcher-level flop counter."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def build_sd2_one_step_teacher() -> tuple[nn.Module, nn.Module]:
    """SD2-shaped (Marigold / E2E-FT) UNet with 8 input channels and the SD VAE, random weights, from config."""
    from d3epth.models.teacher.build import from_sd2_config  # diffusers: imported only when the teacher is measured

    teacher = from_sd2_config()
    return teacher.unet, teacher.vae


def teacher_step(
    unet: nn.Module, vae: nn.Module, image: torch.Tensor, text: torch.Tensor, timestep: torch.Tensor
) -> torch.Tensor:
    """E2E-FT inference: encode RGB, UNet on ``[rgb_latent, 0]`` at t=999, x0 = -v (zero depth latent), decode."""
    rgb_latent = vae.encode(image).latent_dist.mode() * 0.18215
    unet_in = torch.cat([rgb_latent, torch.zeros_like(rgb_latent)], dim=1)
    v = unet(unet_in, timestep, encoder_hidden_states=text).sample
    return vae.decode(-v / 0.18215).sample.mean(dim=1, keepdim=True)


def _teacher_inputs(batch: int, height: int, width: int, device: str) -> tuple[torch.Tensor, ...]:
    image = torch.rand(batch, 3, height, width, device=device) * 2 - 1
    # Marigold's empty-prompt CLIP embedding is 2 tokens x 1024 (SD2 OpenCLIP-H); its values do not affect timing.
    text = torch.zeros(batch, 2, 1024, device=device)
    timestep = torch.full((batch,), 999, device=device, dtype=torch.long)
    return image, text, timestep


def teacher_gflops(height: int, width: int) -> float:
    """GFLOPs per image of one teacher step, counted on the meta device."""
    with torch.device("meta"):
        unet, vae = build_sd2_one_step_teacher()
        inputs = _teacher_inputs(1, height, width, "meta")
        return count_flops(lambda: teacher_step(unet, vae, *inputs)) / 1e9


def _autocast(device: str, dtype: torch.dtype) -> torch.autocast:
    return torch.autocast(device_type=device, dtype=dtype, enabled=dtype != torch.float32)


def bench_student(
    backbone: str, device: str, args: argparse.Namespace
) -> tuple[float, float, dict[str, float]]:  # median ms/image, mean ms/image, parameter counts (millions)
    """Time one student with only the depth head.

    Returns:
        Median and mean ms per image, and ``{"backbone", "decoder+head"}`` parameter counts (millions) plus
        ``"gflops"`` per image.
    """
    model = DepthStudent(backbone, heads=("depth",), decoder_channels=args.decoder_channels).eval().to(device)
    params = {
        "backbone": sum(p.numel() for p in model.backbone.parameters()) / 1e6,
        "decoder+head": sum(p.numel() for p in model.decoder_parameters()) / 1e6,
    }
    image = torch.rand(args.batch_size, 3, args.height, args.width, device=device) * 2 - 1
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        image = image.contiguous(memory_format=torch.channels_last)
    dtype = _DTYPES[args.dtype]

    @torch.inference_mode()
    def run() -> object:
        with _autocast(device, dtype):
            return model(image, heads=("depth",))

    params["gflops"] = count_flops(run) / 1e9 / args.batch_size
    times = time_callable(run, device, args.warmup, args.repeats)
    return statistics.median(times) / args.batch_size, statistics.mean(times) / args.batch_size, params


def bench_teacher(device: str, args: argparse.Namespace) -> float:
    """Median ms/image of one E2E-FT-style teacher step: VAE encode, UNet at t=999 on [rgb, 0], VAE decode."""
    unet, vae = build_sd2_one_step_teacher()
    unet, vae = unet.eval().to(device), vae.eval().to(device)
    dtype = _DTYPES[args.dtype]
    inputs = _teacher_inputs(args.batch_size, args.height, args.width, device)

    @torch.inference_mode()
    def run() -> object:
        with _autocast(device, dtype):
            return teacher_step(unet, vae, *inputs)

    times = time_callable(run, device, args.teacher_warmup, args.teacher_repeats)
    return statistics.median(times) / args.batch_size


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", nargs="+", default=list(DEFAULT_BACKBONES), help="timm backbone names")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--devices", nargs="+", choices=("cpu", "cuda"), default=None, help="default: cpu [+ cuda]")
    parser.add_argument("--dtype", choices=tuple(_DTYPES), default="float32", help="autocast dtype")
    parser.add_argument("--channels-last", action="store_true", help="channels_last model and input")
    parser.add_argument("--decoder-channels", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--teacher", action="store_true", help="also time an SD2-shaped one-step teacher")
    parser.add_argument("--teacher-warmup", type=int, default=1)
    parser.add_argument("--teacher-repeats", type=int, default=3)
    parser.add_argument("--no-teacher-flops", action="store_true", help="skip counting the teacher's FLOPs")
    args = parser.parse_args(argv)
    if args.devices is None:
        args.devices = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    if "cuda" in args.devices and not torch.cuda.is_available():
        parser.error("--devices cuda given but torch.cuda.is_available() is False")
    if min(args.height, args.width, args.batch_size, args.repeats) < 1 or args.warmup < 0:
        parser.error("height, width, batch size and repeats must be >= 1, warmup >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print a table; returns the process exit code."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = True
    print(describe_hardware(args.devices))
    print(
        f"input {args.batch_size}x3x{args.height}x{args.width}, dtype {args.dtype}, "
        f"channels_last {args.channels_last}, warmup {args.warmup}, repeats {args.repeats}, "
        f"heads=('depth',), decoder_channels {args.decoder_channels}"
    )
    header = (
        f"{'device':<6} {'model':<22} {'backbone M':>10} {'decoder M':>9} {'GFLOPs/img':>10} "
        f"{'median ms/img':>13} {'mean ms/img':>11}"
    )
    flops: dict[str, float] = {}
    for device in args.devices:
        print(header)
        results = {}
        for backbone in args.backbones:
            median, mean, params = bench_student(backbone, device, args)
            results[backbone] = median
            flops[backbone] = params["gflops"]
            print(
                f"{device:<6} {backbone:<22} {params['backbone']:>10.2f} {params['decoder+head']:>9.2f} "
                f"{params['gflops']:>10.1f} {median:>13.2f} {mean:>11.2f}"
            )
        if args.teacher:
            teacher = bench_teacher(device, args)
            print(f"{device:<6} {'SD2 one-step teacher':<22} {'':>10} {'':>9} {'':>10} {teacher:>13.2f}")
            for backbone, median in results.items():
                print(f"{device:<6} measured speed-up of {backbone} over the teacher: {teacher / median:.1f}x")
    if not args.no_teacher_flops:
        teacher = teacher_gflops(args.height, args.width)
        print(f"SD2 one-step teacher (VAE encode + UNet + VAE decode): {teacher:.1f} GFLOPs/img")
        for backbone, value in flops.items():
            print(f"FLOP ratio teacher / {backbone} student: {teacher / value:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
