"""Reading a dataset from a ``.tar`` archive vs from its folder: samples/s side by side in one run, per reader.

Reads the same generated sample data (``tools/make_sample_data.py`` layouts: NYUv2, KITTI, ETH3D, ScanNet, DIODE)
once from the folder and once from an uncompressed tar of it (Marigold-style ``./`` member names), through the real
readers and a ``DataLoader`` (decode, masks, 2 %/98 % normalisation, collate). By default it writes a temporary set
with the sample-data writers; ``--root sample_data`` reads an existing one (tars are written next to it in a
temporary folder).

    python benchmarks/tar_vs_folder.py                         # temporary set, 16 frames per dataset, workers 0 2
    python benchmarks/tar_vs_folder.py --root sample_data --workers 0 2 4

Rounds alternate folder / tar per dataset and worker count so a busy neighbour on a shared CPU affects both alike;
the table shows each setting's best round, and the one-time cost of indexing the archive (tar headers) separately.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from d3epth import data
from d3epth.data import synthetic
from d3epth.data.storage import TarArchive, write_tar

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_throughput import cpu_name  # the CPU label shared by the benchmarks

#: sample-data folder -> (reader class, keyword arguments).
READERS: dict[str, tuple[str, dict]] = {
    "nyuv2": ("NYUv2Dataset", {}),
    "kitti": ("KITTIDataset", {"kb_crop": False}),
    "eth3d": ("ETH3DDataset", {}),
    "scannet": ("ScanNetDataset", {}),
    "diode": ("DIODEDataset", {}),
}


def write_temporary_set(root: Path, frames: int) -> Path:
    """Write ``frames`` frames of each evaluation layout at the generator's default sizes under ``root``."""
    common = {"seed": 0, "workers": min(2, os.cpu_count() or 1), "progress": False}
    synthetic.write_nyuv2(root / "nyuv2", num_frames=frames, **common)
    synthetic.write_kitti(root / "kitti", num_frames=frames + 1, **common)
    synthetic.write_eth3d(root / "eth3d", num_frames=frames, **common)
    synthetic.write_scannet(root / "scannet", num_frames=frames, **common)
    synthetic.write_diode(root / "diode", num_indoor=frames // 2, num_outdoor=frames - frames // 2, **common)
    return root


def samples_per_second(dataset: torch.utils.data.Dataset, workers: int, passes: int) -> float:
    """Samples/s of ``passes`` full passes through ``dataset`` with ``workers`` loader processes (start-up included)."""
    loader = DataLoader(
        dataset, batch_size=1, num_workers=workers, collate_fn=data.collate_samples, persistent_workers=workers > 0
    )
    start = time.perf_counter()
    count = 0
    for _ in range(passes):
        for batch in loader:
            count += batch["image"].shape[0]
    return count / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print the table; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="benchmarks/tar_vs_folder.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, help="existing sample-data folder (default: write a temporary set)")
    parser.add_argument("--frames", type=int, default=16, help="frames per dataset in the temporary set (default 16)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader workers (default 0 2)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per setting (default 3)")
    parser.add_argument("--passes", type=int, default=2, help="passes over the set per round (default 2)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or write_temporary_set(Path(tmp) / "sample", args.frames)
        rows = []
        for name, (class_name, kwargs) in READERS.items():
            if not (root / name).is_dir():
                continue
            archive = write_tar(root / name, Path(tmp) / f"{name}.tar")
            start = time.perf_counter()
            TarArchive(archive)  # the one-time index (the readers cache it per process)
            index_s = time.perf_counter() - start
            reader = getattr(data, class_name)
            sources = {"folder": reader(root / name, **kwargs), "tar": reader(archive, **kwargs)}
            for workers in args.workers:
                best = {"folder": 0.0, "tar": 0.0}
                for _ in range(args.rounds):
                    for kind, dataset in sources.items():
                        best[kind] = max(best[kind], samples_per_second(dataset, workers, args.passes))
                size = "x".join(str(s) for s in sources["folder"][0]["image"].shape[1:])
                rows.append((name, len(sources["folder"]), size, workers, best["folder"], best["tar"], index_s))
    heads = ("n", "HxW", "workers", "folder/s", "tar/s", "tar/folder", "index ms")
    widths = (3, 8, 7, 9, 9, 10, 8)
    print(f"{'dataset':<8} " + " ".join(f"{h:>{w}}" for h, w in zip(heads, widths, strict=True)))
    for name, n, size, workers, folder, tar, index_s in rows:
        print(
            f"{name:<8} {n:>3} {size:>8} {workers:>7} {folder:>9.1f} {tar:>9.1f} {tar / folder:>10.2f} "
            f"{1000 * index_s:>8.1f}"
        )
    print(
        f"\nCPU: {cpu_name()} ({os.cpu_count()} logical cores visible), torch {torch.__version__}, "
        f"torch threads 1, best of {args.rounds} alternating rounds x {args.passes} passes"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
