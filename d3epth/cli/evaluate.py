"""Evaluate depth models on benchmarks with the Marigold protocol and the shared evaluator.

A model is a d3epth checkpoint of any stage, an exported student directory, or a diffusers Marigold / E2E-FT
directory. Benchmarks are named (data roots from flags or the environment) or taken from a data config's test sets::

    python tools/evaluate.py lightning_logs/stage2/version_0/checkpoints/last.ckpt --benchmark nyu kitti
    python tools/evaluate.py checkpoints/marigold-depth-v1-1 --benchmark nyu --nyu-root /data/nyuv2
    python tools/evaluate.py a.ckpt b.ckpt --benchmark all --eth3d-root /data/eth3d.tar   # Marigold's Table 1
    python tools/evaluate.py a.ckpt b.ckpt --config configs/sample/data.yaml      # the config's test sets

Prints a table (AbsRel, δ1, ... per model and benchmark), then Marigold's Table-1 summary (AbsRel % and δ1 % per
benchmark, and with several models their average rank), and writes ``results.json`` and ``results.csv`` to ``--out``
(one row per model and benchmark; ``avg_rank`` is added to every row when several models are compared).
``--benchmark all`` = nyu kitti eth3d scannet diode. A root is a folder or a ``.tar`` archive (read in place).
Per image: least-squares scale and shift (depth space for depth models, disparity space for disparity models, none
for metric models), clip to the benchmark range, metrics over valid pixels (and crop), averaged over images. Images
are processed at the resolutions of Marigold's evaluation scripts unless ``--processing-resolution`` is given: ETH3D
at 756 and DIODE at 640 px on the longer side, the other benchmarks natively (so are a ``--config``'s test sets
named like a benchmark).
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import os
from pathlib import Path

from d3epth.cli.common import one_line_errors, parser_from_docstring
from d3epth.cli.table1 import average_ranks, format_table1
from d3epth.errors import ConfigError

#: Benchmarks with a reader here: reader class, its arguments, the root's environment variable, evaluation preset.
BENCHMARK_READERS = {
    "nyu": ("NYUv2Dataset", {"split": "test"}, "NYUV2_ROOT", "nyu"),
    "kitti": ("KITTIDataset", {"split": "test", "kb_crop": True}, "KITTI_ROOT", "kitti_eigen"),
    "hypersim": ("HypersimDataset", {"split": "test"}, "HYPERSIM_ROOT", "hypersim"),
    "vkitti": ("VirtualKITTI2Dataset", {"split": "val", "kb_crop": True}, "VKITTI2_ROOT", "vkitti"),
    "eth3d": ("ETH3DDataset", {"split": "test"}, "ETH3D_ROOT", "eth3d"),
    "scannet": ("ScanNetDataset", {"split": "test"}, "SCANNET_ROOT", "scannet"),
    "diode": ("DIODEDataset", {"split": "val"}, "DIODE_ROOT", "diode"),
}
#: What ``--benchmark all`` means: the five zero-shot benchmarks of Marigold's Table 1, in its column order.
TABLE1_BENCHMARKS: tuple[str, ...] = ("nyu", "kitti", "eth3d", "scannet", "diode")


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``tools/evaluate.py``."""
    parser = parser_from_docstring("tools/evaluate.py", __doc__)
    parser.add_argument(
        "models", nargs="+", metavar="MODEL", help="checkpoint (.ckpt), exported student or diffusers dir"
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--benchmark",
        nargs="+",
        choices=[*sorted(BENCHMARK_READERS), "all"],
        help="named benchmarks; all = " + " ".join(TABLE1_BENCHMARKS),
    )
    source.add_argument("--config", help="a run or data config whose data.init_args.test sets are evaluated")
    for name, (_, _, env, _) in BENCHMARK_READERS.items():
        parser.add_argument(f"--{name}-root", help=f"{name} root, a folder or a .tar (default: ${env})")
    parser.add_argument("--kitti-crop", choices=("eigen", "garg"), default="eigen", help="KITTI evaluation crop")
    parser.add_argument(
        "--kitti-kb-crop",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="KITTI benchmark crop 352x1216 (default on; off for frames smaller than KITTI's, e.g. sample data)",
    )
    parser.add_argument(
        "--processing-resolution",
        type=int,
        default=None,
        help="longer side to process images at on every benchmark (0 = native; default: the benchmark's own, "
        "Marigold's: ETH3D 756, DIODE 640, the others native; a set named like no benchmark: the model's default)",
    )
    parser.add_argument(
        "--alignment",
        choices=("auto", "depth", "disparity", "none"),
        default="auto",
        help="per-image alignment; auto follows the model kind (depth models: depth space)",
    )
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "fp16"),
        default="fp32",
        help="autocast dtype of the model. Default fp32, so that a published number does not depend on the machine "
        "that computed it (auto means bf16 on one CPU and fp32 on another) and a 4-decimal table does not move: bf16 "
        "moved the sample test sets' AbsRel by up to 5e-4 and NYU delta1 by 0.4 points (README, Inference speed). "
        "auto = bf16 where the device computes bf16 natively, else fp32. "
        "Students always run fused and channels_last (same fp32 result to ~1e-6)",
    )
    parser.add_argument("--batch-size", type=int, default=1, help="images per forward pass (default 1)")
    parser.add_argument("--device", default=None, help="cuda, cpu, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--num-steps", type=int, default=1, help="denoising steps for diffusion models")
    parser.add_argument("--ensemble-size", type=int, default=1, help="ensemble size for diffusion models")
    parser.add_argument("--out", default="evaluation", help="folder for results.json and results.csv")
    return parser


def benchmark_datasets(args: argparse.Namespace) -> tuple[dict, dict[str, str]]:
    """Datasets to score and their evaluation presets, from ``--benchmark`` or ``--config``."""
    from d3epth import data  # heavy: imported after parsing (see d3epth.cli)

    if args.config:
        from d3epth.cli.trainer import build_cli  # Lightning: imported after parsing (see d3epth.cli)

        cli = build_cli(["--config", args.config], prog="tools/evaluate.py", parse_only=True)
        datamodule = cli.build_datamodule()
        if not datamodule.test_sets:
            raise ConfigError(f"{args.config}: data.init_args.test is empty")
        return dict(datamodule.test_sets), {}
    datasets, presets = {}, {}
    names = [n for name in args.benchmark for n in (TABLE1_BENCHMARKS if name == "all" else (name,))]
    for name in dict.fromkeys(names):
        class_name, kwargs, env, preset = BENCHMARK_READERS[name]
        root = getattr(args, f"{name}_root") or os.environ.get(env)
        if not root:
            raise ConfigError(f"--benchmark {name}: give --{name}-root or set ${env} to the dataset folder")
        if name == "kitti":
            preset = f"kitti_{args.kitti_crop}"
            kwargs = {**kwargs, "kb_crop": args.kitti_kb_crop}
        datasets[name] = getattr(data, class_name)(root=root, **kwargs)
        presets[name] = preset
    return datasets, presets


@one_line_errors
def main(argv: list[str]) -> int:
    """Evaluate every model on every benchmark, print the table and write JSON + CSV. Returns the exit code."""
    args = build_parser().parse_args(argv)
    import torch  # heavy: imported after parsing (see d3epth.cli)

    from d3epth.inference import evaluate, format_table, load_predictor
    from d3epth.inference.acceleration import accelerate_predictor
    from d3epth.metrics import find_benchmark

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    datasets, presets = benchmark_datasets(args)
    rows = []
    for source in args.models:
        predictor = load_predictor(source, device=device, num_steps=args.num_steps, ensemble_size=args.ensemble_size)
        accelerate_predictor(predictor, args.precision)
        alignment = predictor.kind if args.alignment == "auto" else args.alignment
        for name, dataset in datasets.items():
            resolution = args.processing_resolution
            if resolution is None:  # the preset's (a set named like no benchmark: the model's own)
                preset = find_benchmark(presets.get(name, name))
                resolution = preset.processing_resolution if preset else None
            results = evaluate(
                functools.partial(predictor.predict, processing_resolution=resolution),
                {name: dataset},
                alignment=alignment,
                benchmarks=presets,
                batch_size=args.batch_size,
                device=device,
            )
            row = {"model": source, "benchmark": name, "alignment": alignment, "precision": args.precision}
            rows.append({**row, **results[name]})

    columns = [("model", "model", ""), ("benchmark", "benchmark", ""), ("num_images", "images", "d")]
    columns += [(key, key, ".4f") for key in ("abs_rel", "sq_rel", "rmse", "rmse_log", "delta1", "delta2", "delta3")]
    print(format_table(rows, columns))
    benchmarks = list(datasets)
    if len(args.models) > 1:
        ranks = average_ranks(rows, benchmarks)
        for row in rows:
            row["avg_rank"] = ranks[row["model"]]
    print("\nTable 1 (Marigold's form): AbsRel % (lower is better), δ1 % (higher is better)")
    print(format_table1(rows, benchmarks))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    with open(out / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {out / 'results.json'} and {out / 'results.csv'}")
    return 0
