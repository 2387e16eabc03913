"""Training driver of the resume tests: a real ``lightning.Trainer`` run, in its own process when it is to be killed.

    python -m tests.helpers.resume_driver --task stage2 --data <hypersim root> --out <run dir> --max-steps 7
        [--hflip 0.5] [--crop H W] [--cache <teacher cache>] [--num-workers N] [--channels-last]
        [--drop-path RATE] [--dwa-epochs] [--ckpt-path <run dir>/last.ckpt] [--hang-after-step K]

It trains a tiny task (:func:`tests.helpers.checkpoints.tiny_task`) on the tiny Hypersim set with
``d3epth.data.DepthDataModule``; a ``ModelCheckpoint(every_n_train_steps=1, save_last=True, save_top_k=0)`` rewrites
``<out>/last.ckpt`` after every step. With ``--hang-after-step K`` the process writes ``<out>/hung`` once step K's
checkpoint is complete (at the start of step K + 1, after the loader has fetched that batch and its workers have
prefetched more) and then waits, to be killed: the test never depends on timing. At the end it writes
``<out>/final.pt``: the task's state dict and the optimiser's per-parameter state.

``main(arguments(...))`` runs the same training inside the calling process (the tests do so for the runs they do not
kill: a fresh interpreter costs ~15 s of CPU, mostly importing Lightning). Kept apart from ``tools/fit.py``, whose
command line is being rewritten; the tests build the command with :func:`command` / :func:`arguments`, the one place to
change when they move to the CLI.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

#: Task kind of this driver -> ``tiny_task`` kind.
TASKS = {"autoencoder": "autoencoder", "stage1": "stage1", "stage2": "stage2_light", "teacher": "teacher"}
#: The tiny Hypersim set the resume tests train on: 6 training frames of 32x48 (multiples of the VAE factor 8).
TRAIN_FRAMES, FRAME_SIZE = 6, (32, 48)
#: Name of the marker file of ``--hang-after-step``.
HUNG = "hung"


def arguments(out: Path, **options: Any) -> list[str]:
    """The driver's arguments: ``options`` become ``--name value ...`` (lists give several values; ``None`` none;
    ``True`` the bare flag)."""
    argv = ["--out", str(out)]
    for name, value in options.items():
        if value is True:
            argv.append("--" + name.replace("_", "-"))
        elif value is not None:
            values = value if isinstance(value, list | tuple) else [value]
            argv += ["--" + name.replace("_", "-"), *(str(v) for v in values)]
    return argv


def command(out: Path, **options: Any) -> list[str]:
    """The command line that runs the driver in a fresh interpreter (:func:`arguments` of ``out`` and ``options``)."""
    return [sys.executable, "-m", "tests.helpers.resume_driver", *arguments(out, **options)]


def train_sets(data: Path) -> dict[str, Any]:
    """The training sets: the tiny Hypersim train split."""
    from d3epth.data import HypersimDataset

    return {"hypersim": HypersimDataset(data, split="train")}


def build_cache(data: Path, out: Path) -> Path:
    """Write a float32 teacher cache of :func:`train_sets` for the tiny stage-1 teacher (as ``tools/cache_teacher``)."""
    import torch

    import d3epth
    from d3epth.data.teacher_cache import TeacherCacheWriter, fill_cache, teacher_fingerprint
    from tests.helpers.checkpoints import tiny_task

    task = tiny_task("stage1")  # the driver's stage-1 task: its teacher is the one whose targets are cached
    source, teacher = task.hparams["teacher"], task.teacher
    info = {
        "source": source,
        "fingerprint": teacher_fingerprint(teacher),
        "vae_scale_factor": int(teacher.vae_scale_factor),
        "latent_channels": int(teacher.latent_channels),
    }
    writer = TeacherCacheWriter(out, info, "float32", d3epth.__version__)
    fill_cache(writer, train_sets(data), teacher, torch.device("cpu"), batch_size=3, num_workers=0, progress=False)
    return out


def main(argv: list[str] | None = None) -> int:
    """Train (or resume) one run; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(TASKS), required=True)
    parser.add_argument("--data", type=Path, required=True, help="tiny Hypersim root")
    parser.add_argument("--out", type=Path, required=True, help="run directory (last.ckpt, final.pt)")
    parser.add_argument("--max-steps", type=int, default=7)
    parser.add_argument("--hflip", type=float, default=0.5)
    parser.add_argument("--crop", type=int, nargs=2, default=None, help="RandomCrop height width")
    parser.add_argument("--cache", type=Path, default=None, help="teacher cache directory (stage 1)")
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--channels-last", action="store_true", help="the task's channels_last option")
    parser.add_argument("--drop-path", type=float, default=None, help="the student backbone's drop_path_rate")
    parser.add_argument("--dwa-epochs", action="store_true", help="stage 2: DWA weighting with per-epoch windows")
    parser.add_argument("--ckpt-path", default=None, help="checkpoint to resume from")
    parser.add_argument("--hang-after-step", type=int, default=None)
    args = parser.parse_args(argv)

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same thread count in every run: CPU kernels are then bitwise reproducible
    try:
        return _fit(args)
    finally:
        torch.set_num_threads(threads)  # main() may run inside the test process


def _fit(args: argparse.Namespace) -> int:
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint

    from d3epth.data import DepthDataModule, RandomCrop
    from tests.helpers.checkpoints import STUDENT, quiet_trainer, tiny_task

    class HangAfterStep(Callback):
        """At the start of step ``step + 1`` (step ``step``'s checkpoint is written by then), mark and wait."""

        def __init__(self, step: int) -> None:
            self.step = step

        def on_train_batch_start(self, trainer: L.Trainer, *_: Any) -> None:
            if trainer.global_step == self.step:
                (args.out / HUNG).write_text(str(trainer.global_step))
                while True:  # until SIGKILL
                    time.sleep(1.0)

    L.seed_everything(0, verbose=False)
    options: dict[str, Any] = {}
    if args.drop_path is not None:  # stochastic depth draws from the global RNG at every training forward
        # test_convnext: residual blocks whose drop-path changes the output from the first step (LayerScale 1e-6;
        # test_efficientnet's blocks have no skip, so its drop_path_rate is inert).
        backbone = {"backbone": "test_convnext", "backbone_kwargs": {"drop_path_rate": args.drop_path}}
        options["student"] = {**STUDENT, **backbone}
    if args.dwa_epochs:
        options["loss"] = {"weighting": "dwa", "weighting_kwargs": {"window": None}}
    task = tiny_task(TASKS[args.task], seed=0, lr=1e-3, warmup_steps=1, channels_last=args.channels_last, **options)
    datamodule = DepthDataModule(
        train=train_sets(args.data),
        batch_size=2,
        num_workers=args.num_workers,
        hflip_p=args.hflip,
        train_transforms=[RandomCrop(args.crop)] if args.crop else None,
        teacher_cache=str(args.cache) if args.cache else None,
        seed=7,
    )
    callbacks: list[Callback] = [ModelCheckpoint(dirpath=args.out, every_n_train_steps=1, save_top_k=0, save_last=True)]
    if args.hang_after_step is not None:
        callbacks.append(HangAfterStep(args.hang_after_step))
    trainer = quiet_trainer(args.out, max_steps=args.max_steps, callbacks=callbacks, enable_checkpointing=True)
    trainer.fit(task, datamodule=datamodule, ckpt_path=args.ckpt_path)

    optimizer = trainer.optimizers[0].state_dict()["state"]
    moments = {f"{i}.{name}": value for i, state in optimizer.items() for name, value in state.items()}
    torch.save({"model": task.state_dict(), "optimizer": moments}, args.out / "final.pt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
