"""Data faults: a training set without valid depth is refused at setup; bad files are named, or skipped and counted."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from d3epth.data import DepthDataModule, HypersimDataset
from d3epth.data.faults import PROBE_SAMPLES
from d3epth.errors import DataError
from d3epth.tasks.guard import StepGuard
from tests.helpers.data import write_hypersim


def no_depth(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    return np.zeros((height, width), dtype=np.uint16)


def datamodule(root: Path, **kwargs) -> DepthDataModule:
    dataset = kwargs.pop("dataset", None) or HypersimDataset(root, split="train")
    return DepthDataModule(train={"hypersim": dataset}, batch_size=2, num_workers=0, hflip_p=0.0, **kwargs)


def test_a_training_set_without_valid_depth_is_refused_at_setup(tmp_path: Path) -> None:
    write_hypersim(tmp_path / "small", counts={"train": 3}, size=(8, 8), depth_fn=no_depth)
    with pytest.raises(
        DataError,
        match=r"^training set 'hypersim': not one valid depth pixel in \(1e-05, 65\.0\) m in "
        r"the whole set; check its depth files",
    ) as caught:
        datamodule(tmp_path / "small").setup("fit")
    assert "\n" not in str(caught.value)
    datamodule(tmp_path / "small").setup("validate")  # only training is refused

    # A large set is probed, not read whole: PROBE_SAMPLES evenly spaced samples.
    write_hypersim(tmp_path / "large", counts={"train": 40}, size=(8, 8), depth_fn=no_depth)
    dataset = HypersimDataset(tmp_path / "large", split="train")
    read: list[int] = []
    original = dataset.get_sample
    dataset.get_sample = lambda index, augment=None: read.append(index) or original(index, augment)  # type: ignore
    with pytest.raises(DataError, match=rf"in the {PROBE_SAMPLES} samples probed \(of 40\)"):
        datamodule(tmp_path / "large", dataset=dataset).setup("fit")
    assert len(read) == PROBE_SAMPLES and read[0] == 0 and read[-1] >= 35


def test_one_sample_with_valid_depth_is_enough(tmp_path: Path) -> None:
    def valid_in_the_last(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
        valid_in_the_last.calls += 1  # type: ignore[attr-defined]
        return np.full((height, width), 3000 if valid_in_the_last.calls == 3 else 0, dtype=np.uint16)  # type: ignore

    valid_in_the_last.calls = 0  # type: ignore[attr-defined]
    write_hypersim(tmp_path, counts={"train": 3}, size=(8, 8), depth_fn=valid_in_the_last)
    datamodule(tmp_path).setup("fit")


@pytest.fixture
def corrupt_root(tmp_path: Path) -> tuple[Path, Path]:
    """A 4-sample training set whose third RGB file is corrupted after the dataset's construction-time check."""
    written = write_hypersim(tmp_path / "hypersim", counts={"train": 4}, size=(16, 16))
    bad = tmp_path / "hypersim" / "train" / written["train"][2].rgb_rel
    return tmp_path / "hypersim", bad


def test_a_corrupt_file_met_in_training_is_named(corrupt_root: tuple[Path, Path]) -> None:
    root, bad = corrupt_root
    data = datamodule(root)
    data.setup("fit")  # the probe reads all 4 samples of this small set: corrupt the file after it
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DataError) as caught:
        list(data.train_dataloader())
    message = str(caught.value)
    assert "\n" not in message and message.startswith("training set 'hypersim', sample 2: ")
    assert str(bad) in message and "unreadable or corrupt" in message and "skip_bad_samples: true" in message


def test_skip_bad_samples_replaces_and_counts_them(
    corrupt_root: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    root, bad = corrupt_root
    data = datamodule(root, skip_bad_samples=True, epoch_length=2)
    bad.unlink()  # unreadable: gone since the list was checked
    data.setup("fit")
    with caplog.at_level(logging.WARNING, logger="d3epth.data.faults"):
        batches = list(data.train_dataloader())
    paths = [p for batch in batches for p in batch["path"]]
    skipped = torch.cat([batch["skipped_samples"] for batch in batches])
    assert len(paths) == 4 and skipped.sum() == 1  # sample 2 was replaced by sample 3
    assert sorted(paths)[2] == sorted(paths)[3] and bad.name not in " ".join(paths)
    assert any(str(bad) in r.getMessage() for r in caplog.records)
    guard = StepGuard(max_consecutive=1)  # what the task logs as train/skipped_samples
    for batch in batches:
        guard.start_batch(batch, torch.nn.Identity())
    guard.conclude(torch.nn.Identity(), torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0))
    assert guard.skipped_samples == 1


class FloatDepthHypersim(HypersimDataset):
    """A reader of float depth (as an EXR/HDF5 reader would be) that lets one Inf through for sample 1."""

    def _read_pair(self, entry: dict) -> tuple[np.ndarray, np.ndarray]:
        rgb, raw = super()._read_pair(entry)
        self._inf = entry is self.entries[1]
        return rgb, raw

    def depth_from_raw(self, raw: np.ndarray) -> torch.Tensor:
        depth = super().depth_from_raw(raw)
        if self._inf:
            depth[0, 2, 3] = float("inf")
        return depth


class FloatImageHypersim(HypersimDataset):
    """A reader whose RGB comes out as floats (as an HDR reader's would), with a NaN in sample 1."""

    def _read_pair(self, entry: dict) -> tuple[np.ndarray, np.ndarray]:
        rgb, raw = super()._read_pair(entry)
        rgb = rgb.astype(np.float32)
        if entry is self.entries[1]:
            rgb[2, 3, 0] = np.nan
        return rgb, raw


def test_a_float_image_is_still_checked_for_nan(tmp_path: Path) -> None:
    # The loader skips the scan only for integer RGB (finite by construction); a float reader's image is scanned.
    written = write_hypersim(tmp_path, counts={"train": 2}, size=(16, 16))
    data = datamodule(tmp_path, dataset=FloatImageHypersim(tmp_path, split="train"))
    data.setup("fit")
    with pytest.raises(DataError, match=rf"{written['train'][1].rgb_rel}: holds NaN or Inf values \(listed at "):
        list(data.train_dataloader())


def test_nan_or_inf_in_an_input_is_named(tmp_path: Path) -> None:
    written = write_hypersim(tmp_path, counts={"train": 2}, size=(16, 16))
    data = datamodule(tmp_path, dataset=FloatDepthHypersim(tmp_path, split="train"))
    data.setup("fit")  # the probe stops at sample 0, which has valid depth
    with pytest.raises(DataError, match=rf"{written['train'][1].depth_rel}: holds NaN or Inf values \(listed at "):
        list(data.train_dataloader())

    def nan_image(sample: dict) -> dict:
        return {**sample, "image": sample["image"].clone().fill_(float("nan"))}

    data = datamodule(tmp_path, dataset=HypersimDataset(tmp_path, split="train", transforms=nan_image, check="none"))
    with pytest.raises(DataError, match=rf"'hypersim': {written['train'][0].rgb_rel}: \['image'\] hold NaN or Inf"):
        next(iter(data.train_dataloader()))
