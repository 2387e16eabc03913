"""Peak memory of ``tools/predict.py`` against input size: it should follow the processing resolution, not the image.

For each input (a generated 6000×4000 photo-like JPEG and a 640×480 one by default) this runs predict in a fresh
subprocess at ``--processing-resolution`` (default 512) with a tiny student checkpoint it builds itself (stage 2, light
head, timm's ``test_efficientnet``; random weights, memory does not depend on them) and reads the child's peak
resident set size from ``os.wait4`` (``ru_maxrss`` of that one process). Decoding runs in the main process
(``--num-workers 0``) so the one peak covers everything. It prints the peaks, their ratio (target ≤ 1.5) and the
hardware.

``--tree DIR`` (repeatable) measures the predict of other checkouts of d3epth side by side with this one, e.g. the
base commit: ``git archive <commit> | tar -x -C /tmp/base`` then ``--tree /tmp/base``.

Usage::

    python benchmarks/predict_memory.py
    python benchmarks/predict_memory.py --tree /tmp/base --sizes 6000x4000 640x480 --resolution 512 --format png
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from student_speed import describe_hardware  # benchmarks/ is this script's directory, hence on sys.path

REPO = Path(__file__).resolve().parents[1]

#: Run in the child: predict's main on one image; the checkout is on its PYTHONPATH.
CHILD = "import sys; from d3epth.cli.predict import main; sys.exit(main(sys.argv[1:]))"


def write_image(path: Path, width: int, height: int, seed: int = 0) -> Path:
    """A photo-like RGB image (smooth gradients + noise, so JPEG neither explodes nor vanishes), built in strips.

    Strips of 256 rows keep this process's own memory small; the file is what predict reads.
    """
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (width, height))
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)
    for top in range(0, height, 256):
        rows = np.arange(top, min(top + 256, height), dtype=np.float32)[:, None] / height
        base = np.stack([x[None, :] + 0 * rows, rows + 0 * x[None, :], (x[None, :] + rows) / 2], axis=-1)
        noise = rng.normal(0.0, 0.05, base.shape).astype(np.float32)
        strip = (np.clip(base + noise, 0.0, 1.0) * 255).astype(np.uint8)
        image.paste(Image.fromarray(strip), (0, top))
    image.save(path, quality=90) if path.suffix == ".jpg" else image.save(path)
    return path


def tiny_student_checkpoint(path: Path) -> Path:
    """Write an untrained stage-2 (light head) checkpoint of the tiny test student, as Lightning saves it."""
    import lightning as L

    from d3epth.tasks import PixelRefinementTask

    task = PixelRefinementTask(student={"backbone": "test_efficientnet", "decoder_channels": 16, "heads": ["depth"]})
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    trainer.strategy.connect(task)
    trainer.save_checkpoint(path)
    return path


def peak_rss_mib(tree: Path, image: Path, checkpoint: Path, resolution: int, out: Path) -> float:
    """Run predict of the checkout ``tree`` on ``image`` in a subprocess; its peak RSS in MiB (fails if it fails)."""
    args = [str(image), "--model", str(checkpoint), "--out", str(out), "--processing-resolution", str(resolution)]
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1"}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, *args, "--num-workers", "0", "--quiet"],
        cwd=tree,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    output = child.stdout.read().decode() if child.stdout else ""
    _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage, not the maximum over all children
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise RuntimeError(f"predict ({tree}) failed on {image} with exit code {child.returncode}:\n{output}")
    return usage.ru_maxrss / 1024  # kilobytes on Linux


def main(argv: list[str] | None = None) -> int:
    """Build the inputs and the checkpoint, measure every (tree, input) pair, print a table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["6000x4000", "640x480"], help="WIDTHxHEIGHT, largest first")
    parser.add_argument("--resolution", type=int, default=512, help="--processing-resolution of predict")
    parser.add_argument("--format", choices=("jpg", "png"), default="jpg", help="file format of the inputs")
    parser.add_argument("--tree", action="append", default=[], type=Path, help="another d3epth checkout to measure")
    args = parser.parse_args(argv)
    trees = [REPO, *(tree.resolve() for tree in args.tree)]
    print(describe_hardware(["cpu"]))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        checkpoint = tiny_student_checkpoint(work / "student.ckpt")
        images = []
        for size in args.sizes:
            width, height = (int(v) for v in size.lower().split("x"))
            images.append(write_image(work / f"{width}x{height}.{args.format}", width, height))
        print(f"predict --processing-resolution {args.resolution} --num-workers 0, peak RSS (MiB) of each run:")
        print(f"{'tree':<40} " + " ".join(f"{image.stem:>12}" for image in images) + "   ratio first/last")
        for tree in trees:
            peaks = [peak_rss_mib(tree, image, checkpoint, args.resolution, work / "out") for image in images]
            cells = " ".join(f"{peak:12.0f}" for peak in peaks)
            print(f"{tree!s:<40} {cells}   {peaks[0] / peaks[-1]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
