"""tools/fit.py with plain ``--trainer.strategy=ddp`` on 2 CPU processes (gloo), stage 1 and stage 2.

Both finish with one run directory and one checkpoint; the ranks train on disjoint batches that together cover the
epoch; the final validation metric equals a 1-process evaluation of the saved checkpoint. Slow (two interpreters per
run on a 2-core machine): ``pytest -m slow tests/cli/test_ddp_fit.py``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from d3epth.checkpoints import COMPLETED_MARKER
from d3epth.data import HypersimDataset
from d3epth.inference import evaluate, load_predictor
from tests.helpers import CONF, REPO
from tests.helpers.data import write_hypersim

pytestmark = pytest.mark.slow


class RecordBatches(L.Callback):
    """Appends the sample paths of every training batch to ``<out>/rank<r>.jsonl`` (a user callback, by class_path)."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: dict, *args: object
    ) -> None:
        with (self.out / f"rank{trainer.global_rank}.jsonl").open("a") as handle:
            handle.write(json.dumps(list(batch["path"])) + "\n")


@pytest.mark.parametrize(
    ("config", "extra"),
    [("fit_tiny.yaml", []), ("ddp_stage1.yaml", []), ("fit_tiny.yaml", ["--model.init_args.channels_last=true"])],
    ids=["stage2", "stage1", "stage2-channels-last"],
)
def test_two_process_ddp_trains_disjoint_batches_and_validates_like_one_process(
    config: str, extra: list[str], tmp_path: Path
) -> None:
    root = tmp_path / "hypersim"
    write_hypersim(root, counts={"train": 8, "val": 4}, size=(32, 32))
    recorded = tmp_path / "batches"
    recorded.mkdir()
    callbacks = f"[{{class_path: {__name__}.RecordBatches, init_args: {{out: {recorded}}}}}]"
    env = {**os.environ, "D3EPTH_TEST_HYPERSIM": str(root), "D3EPTH_TEST_LOGS": str(tmp_path / "logs")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    command = [sys.executable, str(REPO / "tools" / "fit.py"), "--config", str(CONF / config)]
    command += ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp"]
    command += ["--trainer.max_steps=2", "--trainer.val_check_interval=2", f"--trainer.callbacks={callbacks}", *extra]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]

    runs = list((tmp_path / "logs").glob("*/version_*"))
    assert len(runs) == 1, runs  # one run directory for both ranks
    run = runs[0]
    assert (run / COMPLETED_MARKER).is_file()
    assert sorted(p.name for p in (run / "checkpoints").glob("last*.ckpt")) == ["last.ckpt"]
    ckpt = run / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"] == 2

    # 8 frames, batch 2 per rank, 2 ranks, 2 steps: one epoch, each frame on exactly one rank.
    seen = {
        rank: [p for line in (recorded / f"rank{rank}.jsonl").read_text().splitlines() for p in json.loads(line)]
        for rank in (0, 1)
    }
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(s["path"] for s in HypersimDataset(root, split="train"))

    # The validation both ranks computed (torchmetrics-synchronised) equals one process scoring the checkpoint.
    logged = EventAccumulator(str(run)).Reload().Scalars("val/abs_rel")[-1].value
    predictor = load_predictor(str(ckpt), device="cpu")
    single = evaluate(predictor.predict, {"hypersim": HypersimDataset(root, split="val")}, progress=False)
    assert single["hypersim"]["abs_rel"] == pytest.approx(logged, rel=1e-4)


def test_two_process_autoencoder_validates_when_one_rank_has_no_valid_depth(tmp_path: Path) -> None:
    """Rank 1's only validation frame has no valid depth: its reconstruction-MAE meter has no update, yet it must join
    the metric sync (a rank skipping the collective left the other waiting in it)."""
    from tests.helpers.data import write_png16

    root = tmp_path / "hypersim"
    write_hypersim(root, counts={"train": 8, "val": 2}, size=(32, 32))
    second = HypersimDataset(root, split="val").entries[1]["depth"]  # ShardSampler: frame 1 goes to rank 1
    write_png16(second, np.zeros((32, 32), np.uint16))
    sets = (
        f"train: {{hypersim: {{class_path: d3epth.data.HypersimDataset, init_args: {{root: {root}, split: train}}}}}}, "
        f"val: {{hypersim: {{class_path: d3epth.data.HypersimDataset, init_args: {{root: {root}, split: val}}}}}}"
    )
    config = tmp_path / "ae.yaml"
    config.write_text(
        f"base: {REPO / 'configs' / 'base.yaml'}\nrun_name: ae_ddp\n"
        "model: {class_path: d3epth.tasks.AutoencoderTask, init_args: {block_out_channels: [8, 8, 8, 8], "
        "lr: 1.0e-3, warmup_steps: 1}}\n"
        f"data: {{class_path: d3epth.data.DepthDataModule, init_args: {{{sets}, batch_size: 2, val_batch_size: 1, "
        "num_workers: 0}}\n"
        "trainer: {max_steps: 2, val_check_interval: 2, enable_progress_bar: false, enable_model_summary: false}\n"
        f"logger: {{save_dir: {tmp_path / 'logs'}}}\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, str(REPO / "tools" / "fit.py"), "--config", str(config)]
    command += ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = list((tmp_path / "logs" / "ae_ddp").glob("version_*"))
    logged = EventAccumulator(str(run)).Reload().Scalars("val/hypersim/depth_recon_mae")
    assert len(logged) == 1 and math.isfinite(logged[0].value)  # rank 0's frame, synchronised with rank 1's none
