"""Test-suite settings: nothing downloads, everything runs on the CPU in a few threads."""

import os

# Set before any test module imports huggingface_hub / diffusers / transformers / timm, which read these at import.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point torch.hub and the Hugging Face cache at a temporary folder so no test reads or writes ~/.cache."""
    cache = tmp_path_factory.getbasetemp() / "cache"
    monkeypatch.setenv("TORCH_HOME", str(cache / "torch"))
    monkeypatch.setenv("HF_HOME", str(cache / "hf"))
    torch.hub.set_dir(str(cache / "torch" / "hub"))
