"""Test-suite settings (nothing downloads, everything runs on the CPU in a few threads) and the shared fixtures.

Shared fixtures: ``tiny_marigold_dir`` / ``tiny_sd2_dir`` (tiny diffusers directories) and ``tiny_checkpoint`` (tiny
task checkpoints of every kind). Plain helpers live in ``tests/helpers/`` (data writers, tiny diffusers components,
tiny tasks and trainers); tiny YAML configs in ``tests/conf/``; a folder's own fixtures in its ``conftest.py``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Set before any test module imports huggingface_hub / diffusers / transformers / timm, which read these at import.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

if TYPE_CHECKING:
    import lightning as L

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point torch.hub and the Hugging Face cache at a temporary folder so no test reads or writes ~/.cache."""
    cache = tmp_path_factory.getbasetemp() / "cache"
    monkeypatch.setenv("TORCH_HOME", str(cache / "torch"))
    monkeypatch.setenv("HF_HOME", str(cache / "hf"))
    torch.hub.set_dir(str(cache / "torch" / "hub"))


# ------------------------------------------------------------------------------------------- tiny diffusers teachers
@pytest.fixture(scope="session")
def tiny_marigold_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Marigold v1-1-layout checkpoint (8-channel UNet, trailing DDIM, CLIP text encoder + tokenizer)."""
    from tests.helpers.diffusers import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("teacher") / "marigold")


@pytest.fixture(scope="session")
def tiny_sd2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Stable Diffusion 2-layout directory (4-channel UNet, leading DDIM as in SD2's own config)."""
    from tests.helpers.diffusers import SCHEDULER_CONFIG, make_tiny_checkpoint

    config = {**SCHEDULER_CONFIG, "timestep_spacing": "leading", "rescale_betas_zero_snr": False}
    return make_tiny_checkpoint(tmp_path_factory.mktemp("teacher") / "sd2", in_channels=4, scheduler_config=config)


# ------------------------------------------------------------------------------------------- tiny task checkpoints
TinyCheckpoint = Callable[..., tuple["L.LightningModule", Path]]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> TinyCheckpoint:
    """Factory ``tiny_checkpoint(kind, name="last.ckpt", seed=0, **task_kwargs) -> (task, path)``.

    Builds ``tests.helpers.checkpoints.tiny_task(kind, seed, **task_kwargs)`` in eval mode and writes its Lightning
    checkpoint as ``<tmp>/<kind>N/<name>``. Calls with the same arguments share one task and one file for the whole
    session: treat both as read-only (copy the file before changing it).
    """
    from tests.helpers.checkpoints import save_task, tiny_task

    made: dict[str, tuple[L.LightningModule, Path]] = {}

    def make(kind: str, name: str = "last.ckpt", seed: int | None = 0, **task_kwargs: Any) -> tuple:
        key = repr((kind, name, seed, sorted(task_kwargs.items())))
        if key not in made:
            task = tiny_task(kind, seed=seed, **task_kwargs).eval()
            made[key] = (task, save_task(task, tmp_path_factory.mktemp(kind) / name))
        return made[key]

    return make


@pytest.fixture(scope="session")
def stage2(tiny_checkpoint: TinyCheckpoint) -> tuple[L.LightningModule, Path]:
    """A tiny untrained stage-2 task (light pixel decoder, seed 0) in eval mode and its checkpoint (read-only)."""
    return tiny_checkpoint("stage2_light", seed=0)


@pytest.fixture(scope="session")
def stage1(tiny_checkpoint: TinyCheckpoint) -> tuple[L.LightningModule, Path]:
    """A tiny untrained stage-1 task (latent head, tiny random teacher, seed 1) in eval mode and its checkpoint."""
    return tiny_checkpoint("stage1", seed=1)
