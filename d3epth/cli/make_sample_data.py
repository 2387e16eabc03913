"""Generate procedural sample data in the on-disk layouts of Hypersim, VKITTI 2, NYUv2, KITTI, ETH3D, ScanNet, DIODE.

Writes (see ``d3epth/data/synthetic/``)::

    <out>/hypersim_raw/   raw Hypersim HDF5 + metadata_images_split_scene_v1.csv
    <out>/hypersim/       Marigold's preprocessed layout, produced from hypersim_raw by tools/prepare_hypersim.py
    <out>/vkitti2/        rgb/ depth/ textgt/ + vkitti_train.txt, vkitti_val.txt
    <out>/nyuv2/          test/<scene>/{rgb,depth,filled}_NNNN.png + filename_list_test.txt
    <out>/kitti/          Eigen-test-like RGB + sparse ground truth + eigen_test_files_with_gt.txt
    <out>/eth3d/          rgb/ + depth/ (raw float32, inf = unknown) + eth3d_filename_list.txt
    <out>/scannet/        sceneXXXX_YY/{color,depth}/ (uint16 mm) + scannet_val_sampled_list_800_1.txt
    <out>/diode/          {indoors,outdoor}/... .png + _depth.npy + _depth_mask.npy + diode_val_*_filename_list.txt
    <out>/<name>.tar      with --tar: each dataset also packed as a tar archive (read directly by the readers)
    <out>/contact_sheet.png   RGB next to colourised depth for a few frames of each dataset

With ``--own`` only ``<out>/own/{train,val}/{rgb,depth}/`` is written instead: a folder of your-own-data layout for
``d3epth.data.FolderDepthDataset`` (README "Train on your own data").

Usage::

    python tools/make_sample_data.py --out sample_data [--seed 0] [--workers 2] [--hypersim-size 128 96] ...
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from d3epth.cli.common import fail, one_line_errors
from d3epth.data import synthetic
from d3epth.data.prepare.hypersim import prepare_hypersim
from d3epth.data.storage import write_tar
from d3epth.data.synthetic.contact_sheet import DATASETS, make_contact_sheet
from d3epth.data.synthetic.folder import OWN_DEPTH_FORMATS, write_own_folder


# --------------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """Command-line interface; sizes are ``WIDTH HEIGHT``."""
    p = argparse.ArgumentParser(
        prog="tools/make_sample_data.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawTextHelpFormatter,
    )
    p.add_argument("--out", default="sample_data", help="output root (default sample_data)")
    p.add_argument("--seed", type=int, default=0, help="base seed; same seed gives identical files (default 0)")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="parallel processes")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS, help="datasets to write")
    p.add_argument(
        "--hypersim-scenes",
        type=int,
        nargs=3,
        default=[40, 20, 30],
        metavar=("TRAIN", "VAL", "TEST"),
        # Many scenes with few frames each: a model trained on a handful of rooms memorises them instead of learning
        # depth (the sample teacher's held-out AbsRel went from 15.9 % with 8 rooms to 11.8 % with 40). 20 val and 30
        # test scenes (56 and 106 frames pass the filter at seed 0): with 6 each (16 / 23 frames) the quick start's
        # table and validation curves ranked models by noise -- an 800-step teacher scored 0.134 on the 23 test frames
        # against 0.126 for a 400-step one, 0.126 vs 0.135 on 106.
        help="Hypersim scenes per split (default 40 20 30)",
    )
    p.add_argument("--hypersim-cameras", type=int, default=1, help="camera trajectories per scene (default 1)")
    p.add_argument("--hypersim-frames", type=int, default=4, help="frames per camera trajectory (default 4)")
    p.add_argument(
        "--hypersim-size",
        type=int,
        nargs=2,
        default=[128, 96],
        metavar=("W", "H"),
        help="Hypersim resolution (real: 1024 768; default 128 96)",
    )
    p.add_argument(
        "--hypersim-missing",
        type=int,
        default=0,
        help="train frames written without color.hdf5 (Hypersim's missing-file defect; default 0)",
    )
    p.add_argument("--vkitti-frames", type=int, default=2, help="frames per scene x variation x camera (default 2)")
    p.add_argument(
        "--vkitti-size",
        type=int,
        nargs=2,
        default=[416, 128],
        metavar=("W", "H"),
        help="VKITTI resolution (real: 1242 375; default 416 128)",
    )
    p.add_argument("--nyu-frames", type=int, default=8, help="NYUv2 test frames (default 8)")
    p.add_argument(
        "--nyu-size",
        type=int,
        nargs=2,
        default=[320, 240],
        metavar=("W", "H"),
        help="NYUv2 resolution (real: 640 480; default 320 240)",
    )
    p.add_argument("--kitti-frames", type=int, default=8, help="KITTI test rows incl. one without GT (default 8)")
    p.add_argument(
        "--kitti-size",
        type=int,
        nargs=2,
        default=[416, 128],
        metavar=("W", "H"),
        help="KITTI resolution (real: 1242 375; default 416 128)",
    )
    p.add_argument("--eval-frames", type=int, default=4, help="ETH3D, ScanNet and DIODE frames each (default 4)")
    p.add_argument(
        "--tar",
        action="store_true",
        help="also pack each written dataset as <out>/<name>.tar (Marigold-style ./ names)",
    )
    p.add_argument("--contact-frames", type=int, default=3, help="frames per dataset on the contact sheet")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument(
        "--own",
        action="store_true",
        help="write only <out>/own: train/ and val/ rgb/ + depth/ folders paired by stem (FolderDepthDataset)",
    )
    p.add_argument(
        "--own-depth-format", choices=OWN_DEPTH_FORMATS, default="png", help="--own: png (uint16 mm), npy or tiff (m)"
    )
    return p


@one_line_errors
def main(argv: list[str]) -> int:
    """Entry point: generate the selected datasets under ``--out`` and the contact sheet; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.workers < 1:
        return fail(f"--workers must be >= 1, got {args.workers}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    progress = not args.no_progress
    if args.own:
        stems = write_own_folder(out / "own", seed=args.seed, depth_format=args.own_depth_format)
        print(f"own-data folder {out / 'own'}: " + ", ".join(f"{k} {len(v)} frames" for k, v in stems.items()))
        return 0
    common = {"seed": args.seed, "workers": args.workers, "progress": progress}
    timings: dict[str, float] = {}
    selected: Sequence[str] = args.datasets
    if "hypersim" in selected:
        t0 = time.perf_counter()
        synthetic.write_hypersim_raw(
            out / "hypersim_raw",
            scenes=tuple(args.hypersim_scenes),
            cameras_per_scene=args.hypersim_cameras,
            frames_per_camera=args.hypersim_frames,
            width=args.hypersim_size[0],
            height=args.hypersim_size[1],
            missing_frames=args.hypersim_missing,
            **common,
        )
        # The raw data were just (re)written, so earlier PNGs may be stale: convert everything again.
        summaries = prepare_hypersim(
            out / "hypersim_raw", out / "hypersim", workers=args.workers, overwrite=True, progress=progress
        )
        timings["hypersim"] = time.perf_counter() - t0
        for split, s in summaries.items():
            print(
                f"hypersim {split}: {s.converted} frames, {s.filtered} pass Marigold's filter, "
                f"{len(s.missing)} skipped for missing files"
            )
    if "vkitti2" in selected:
        t0 = time.perf_counter()
        synthetic.write_vkitti2(
            out / "vkitti2",
            frames_per_sequence=args.vkitti_frames,
            width=args.vkitti_size[0],
            height=args.vkitti_size[1],
            **common,
        )
        timings["vkitti2"] = time.perf_counter() - t0
    if "nyuv2" in selected:
        t0 = time.perf_counter()
        synthetic.write_nyuv2(
            out / "nyuv2", num_frames=args.nyu_frames, width=args.nyu_size[0], height=args.nyu_size[1], **common
        )
        timings["nyuv2"] = time.perf_counter() - t0
    if "kitti" in selected:
        t0 = time.perf_counter()
        synthetic.write_kitti(
            out / "kitti", num_frames=args.kitti_frames, width=args.kitti_size[0], height=args.kitti_size[1], **common
        )
        timings["kitti"] = time.perf_counter() - t0
    eval_writers = {"eth3d": synthetic.write_eth3d, "scannet": synthetic.write_scannet}
    for name, writer in eval_writers.items():
        if name in selected:
            t0 = time.perf_counter()
            writer(out / name, num_frames=args.eval_frames, **common)
            timings[name] = time.perf_counter() - t0
    if "diode" in selected:
        t0 = time.perf_counter()
        indoor = (args.eval_frames + 1) // 2
        synthetic.write_diode(out / "diode", num_indoor=indoor, num_outdoor=args.eval_frames - indoor, **common)
        timings["diode"] = time.perf_counter() - t0
    if args.tar:
        for name in selected:
            if (out / name).is_dir():
                write_tar(out / name, out / f"{name}.tar")
    sheet = make_contact_sheet(out, frames=args.contact_frames)
    print(", ".join(f"{k} {v:.1f}s" for k, v in timings.items()) + f"; contact sheet: {sheet}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
