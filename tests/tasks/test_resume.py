"""Exact resume: a run SIGKILLed mid-epoch and resumed from ``last.ckpt`` ends with bitwise the same weights.

Each test trains a tiny task (:mod:`tests.helpers.resume_driver`) three times: in a subprocess killed with SIGKILL
after step ``k`` (the driver signals when step ``k``'s checkpoint is written, no timing involved); meanwhile
uninterrupted, in the test process; and resumed from the killed run's ``last.ckpt``, in the test process with a new
trainer, task and datamodule (only the checkpoint file links it to the killed run). Every tensor of the final state
dict, and of the optimiser state, must be equal bit for bit. The loader position expected in the checkpoint is worked
out independently: 6 frames in batches of 2 are 3 batches per epoch, so after step 4 epoch 1 has consumed 1 batch.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import warnings
from pathlib import Path

import pytest
import torch

from tests.helpers.data import write_hypersim
from tests.helpers.resume_driver import FRAME_SIZE, HUNG, TRAIN_FRAMES, arguments, build_cache, command, main

REPO = Path(__file__).resolve().parents[2]
MAX_STEPS = 7  # epochs 0 and 1 whole, 1 step of epoch 2
KILL_AFTER = 4  # mid-epoch 1
BATCHES_PER_EPOCH = TRAIN_FRAMES // 2
START_DEADLINE_S = 600.0  # generous for a loaded 2-core machine; the marker file, not this, decides when to kill


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data") / "hypersim"
    write_hypersim(root, counts={"train": TRAIN_FRAMES, "val": 1}, size=FRAME_SIZE)
    return root


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}


def start(out: Path, **options: object) -> subprocess.Popen:
    out.mkdir(parents=True, exist_ok=True)
    log = (out / "log.txt").open("a")
    return subprocess.Popen(command(out, **options), cwd=REPO, env=environment(), stdout=log, stderr=log)


def run_here(out: Path, **options: object) -> None:
    assert main(arguments(out, **options)) == 0


def kill_after_checkpoint(proc: subprocess.Popen, out: Path) -> None:
    """SIGKILL ``proc`` once it has signalled (``<out>/hung``) that its checkpoint is written."""
    deadline = time.monotonic() + START_DEADLINE_S
    while not (out / HUNG).exists():
        assert proc.poll() is None, (out / "log.txt").read_text()[-4000:]
        assert time.monotonic() < deadline, "the driver never reached the kill point"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL


def flat_state(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {f"{part}.{key}": value for part, tensors in state.items() for key, value in tensors.items()}


def equal_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[int, int]:
    """``(equal, total)``: tensors of ``a`` with the same key, dtype, shape and bits in ``b``."""
    assert a.keys() == b.keys()
    equal = sum(a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)
    return equal, len(a)


def check_resume(tmp_path: Path, data: Path, kill_after: int = KILL_AFTER, **options: object) -> None:
    options = {"data": data, "max_steps": MAX_STEPS, **options}
    full, part = tmp_path / "full", tmp_path / "part"
    killed = start(part, hang_after_step=kill_after, **options)
    run_here(full, **options)  # while the subprocess starts
    kill_after_checkpoint(killed, part)
    checkpoint = torch.load(part / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == kill_after
    loader_state = checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    # Written after the step's batch: batch (k - 1) of the run, so an epoch's last batch leaves the epoch still open.
    epoch, batches = divmod(kill_after - 1, BATCHES_PER_EPOCH)
    assert loader_state == [{"epoch": epoch, "batches": batches + 1}]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_here(part, ckpt_path=part / "last.ckpt", **options)
    assert not [w for w in caught if "not resumable" in str(w.message)]  # Lightning sees a stateful loader

    resumed, reference = flat_state(part / "final.pt"), flat_state(full / "final.pt")
    equal, total = equal_tensors(resumed, reference)
    print(f"{options.get('task')}: {equal}/{total} tensors equal")
    assert equal == total
    trained = {f"model.{k}": v for k, v in checkpoint["state_dict"].items()}
    assert equal_tensors(trained, {k: resumed[k] for k in trained})[0] < len(trained)  # the resumed steps trained


def test_stage2_resumes_bitwise_mid_epoch_with_flips_crops_and_drop_path(tmp_path: Path, data: Path) -> None:
    """Drop-path (a ConvNeXt student) draws from the global RNG, which the task re-seeds per batch."""
    check_resume(tmp_path, data, task="stage2", hflip=0.5, crop=[32, 40], drop_path=0.5)


def test_stage2_resumes_bitwise_from_an_epochs_last_batch_with_per_epoch_dwa(tmp_path: Path, data: Path) -> None:
    """Killed after the last batch of epoch 0: Lightning does not replay that epoch's end; DWA's window still closes."""
    check_resume(tmp_path, data, kill_after=BATCHES_PER_EPOCH, task="stage2", dwa_epochs=True)


def test_autoencoder_resumes_bitwise_with_posterior_samples(tmp_path: Path, data: Path) -> None:
    """The autoencoder decodes posterior samples in training (``sample_posterior``), from the global RNG."""
    check_resume(tmp_path, data, task="autoencoder", hflip=0.5)


def test_stage2_resumes_bitwise_in_channels_last(tmp_path: Path, data: Path) -> None:
    """The checkpoint is restored into weights already converted to channels_last (``configure_model``)."""
    check_resume(tmp_path, data, task="stage2", crop=[32, 40], channels_last=True)
    state = flat_state(tmp_path / "full" / "final.pt")
    convs = [v for v in state.values() if v.ndim == 4 and v.shape[1] > 1 and v.shape[-1] > 1]  # unambiguous layouts
    assert convs and all(v.is_contiguous(memory_format=torch.channels_last) and not v.is_contiguous() for v in convs)


@pytest.mark.slow
def test_stage1_resumes_bitwise_with_worker_processes(tmp_path: Path, data: Path) -> None:
    check_resume(tmp_path, data, task="stage1", hflip=0.5, crop=[24, 40], num_workers=2)


@pytest.mark.slow
def test_stage1_resumes_bitwise_with_teacher_cache(tmp_path: Path, data: Path) -> None:
    cache = build_cache(data, tmp_path / "cache")
    check_resume(tmp_path, data, task="stage1", hflip=0.5, cache=cache)


@pytest.mark.slow
def test_teacher_resumes_bitwise_with_diffusion_noise(tmp_path: Path, data: Path) -> None:
    check_resume(tmp_path, data, task="teacher", hflip=0.5)
