"""DepthDataModule: mixed training batches, named val/test loaders, ranks, workers, and building it from YAML."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch

from d3epth.data import (
    DepthDataModule,
    HypersimDataset,
    MixedBatchSampler,
    NYUv2Dataset,
    VirtualKITTI2Dataset,
)
from d3epth.errors import ConfigError
from tests.helpers import CONF
from tests.helpers.checkpoints import quiet_trainer
from tests.helpers.data import write_hypersim, write_nyu, write_vkitti2


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("data")
    write_hypersim(base / "hypersim", {"train": 8, "val": 3}, size=(24, 32))
    write_vkitti2(base / "vkitti2", "train", size=(20, 36))  # 8 frames
    write_nyu(base / "nyuv2", n=3)
    return {name: base / name for name in ("hypersim", "vkitti2", "nyuv2")}


def make_dm(roots: dict[str, Path], **kwargs: object) -> DepthDataModule:
    train = {
        "hypersim": HypersimDataset(roots["hypersim"], "train", resize=[12, 16]),
        "vkitti2": VirtualKITTI2Dataset(roots["vkitti2"], "train", kb_crop=False),
    }
    val = {
        "hypersim_val": HypersimDataset(roots["hypersim"], "val"),
        "nyu": NYUv2Dataset(roots["nyuv2"]),
    }
    defaults: dict = {"batch_size": 2, "num_workers": 0}
    return DepthDataModule(train=train, val=val, test={"nyu": val["nyu"]}, **{**defaults, **kwargs})


def test_train_batches_single_dataset_with_own_resolution(roots: dict[str, Path]) -> None:
    dm = make_dm(roots, train_probabilities={"hypersim": 0.5, "vkitti2": 0.5}, epoch_length=24)
    shapes = {"hypersim": (2, 3, 12, 16), "vkitti2": (2, 3, 20, 36)}
    seen = Counter()
    for batch in dm.train_dataloader():
        assert len(set(batch["dataset"])) == 1
        name = batch["dataset"][0]
        seen[name] += 1
        assert tuple(batch["image"].shape) == shapes[name]
        assert batch["valid_mask"].dtype == torch.bool and batch["depth_norm"].abs().max() <= 1
        assert batch["intrinsics"].shape == (2, 3, 3)
    assert sum(seen.values()) == 24 and seen["hypersim"] > 0 and seen["vkitti2"] > 0


def test_default_probabilities(roots: dict[str, Path]) -> None:
    assert make_dm(roots).train_probabilities == pytest.approx({"hypersim": 0.9, "vkitti2": 0.1})
    single = DepthDataModule(train={"h": HypersimDataset(roots["hypersim"])}, num_workers=0)
    assert single.train_probabilities == {"h": 1.0}
    with pytest.raises(
        ValueError, match=r"must be the train set names \['hypersim', 'vkitti2'\]; unknown: \['vkiti'\]"
    ):
        make_dm(roots, train_probabilities={"hypersim": 0.9, "vkiti": 0.1})


def test_val_and_test_loaders_named_in_order(roots: dict[str, Path]) -> None:
    dm = make_dm(roots, hflip_p=1.0)
    assert dm.val_set_names == ["hypersim_val", "nyu"] and dm.test_set_names == ["nyu"]
    loaders = dm.val_dataloader()
    assert [len(dl) for dl in loaders] == [3, 3]
    first = next(iter(loaders[0]))
    reference = dm.val_sets["hypersim_val"][0]
    assert torch.equal(first["depth"][0], reference["depth"])  # validation is not augmented
    assert first["dataset"] == ["hypersim"]
    assert len(dm.test_dataloader()) == 1


def test_flip_applied_to_training_sets_only(roots: dict[str, Path]) -> None:
    dm = make_dm(roots, hflip_p=1.0)
    train = dm.train_dataset()
    plain = dm.train_sets["hypersim"][1]
    flipped = train[1]
    for key in ("image", "depth", "valid_mask", "depth_norm"):
        assert torch.equal(flipped[key], plain[key].flip(-1)), key
    assert flipped["intrinsics"][0, 2].item() == pytest.approx(16 - 1 - plain["intrinsics"][0, 2].item())


def test_loader_options(roots: dict[str, Path]) -> None:
    dl = make_dm(roots, num_workers=0, persistent_workers=True).train_dataloader()
    assert dl.num_workers == 0 and not dl.persistent_workers
    dl = make_dm(roots, num_workers=2, pin_memory=False, prefetch_factor=3).train_dataloader()
    assert dl.num_workers == 2 and dl.persistent_workers and dl.prefetch_factor == 3 and not dl.pin_memory
    assert isinstance(dl.batch_sampler, MixedBatchSampler)


def test_rank_from_attached_trainer(roots: dict[str, Path]) -> None:
    batches = []
    for rank in (0, 1):
        dm = make_dm(roots, train_probabilities={"hypersim": 1.0, "vkitti2": 0.0}, hflip_p=0.0)
        dm.trainer = SimpleNamespace(  # type: ignore[assignment]
            global_rank=rank, world_size=2, _accelerator_connector=SimpleNamespace(use_distributed_sampler=False)
        )
        sampler = dm.train_dataloader().batch_sampler
        assert (sampler.rank, sampler.num_replicas) == (rank, 2)
        batches.append([i for b in sampler for i in b])
        assert [len(dl.sampler) for dl in dm.val_dataloader()] == [2 - rank, 2 - rank]  # 3 samples over 2 ranks
    assert not set(batches[0]) & set(batches[1]) and sorted(batches[0] + batches[1]) == list(range(8))
    # 4 processes for 3 validation samples: one would have no batch, skip the loop and leave the others waiting.
    dm.trainer = SimpleNamespace(  # type: ignore[assignment]
        global_rank=0, world_size=4, _accelerator_connector=SimpleNamespace(use_distributed_sampler=False)
    )
    with pytest.raises(ConfigError, match=r"evaluation set hypersim_val has 3 sample\(s\) for 4 processes"):
        dm.val_dataloader()


def test_distributed_trainer_with_lightning_sampler_refused(roots: dict[str, Path]) -> None:
    dm = make_dm(roots)
    dm.trainer = SimpleNamespace(  # type: ignore[assignment]
        global_rank=0, world_size=2, _accelerator_connector=SimpleNamespace(use_distributed_sampler=True)
    )
    with pytest.raises(ConfigError, match=r"set trainer.use_distributed_sampler: false"):
        dm.train_dataloader()


def test_deterministic_with_workers(roots: dict[str, Path]) -> None:
    def run() -> list[torch.Tensor]:
        dm = make_dm(roots, num_workers=1, persistent_workers=False, seed=11, epoch_length=6)
        return [b["image"] for b in dm.train_dataloader()]

    first, second = run(), run()
    assert len(first) == 6 and all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_bad_datamodule_arguments(roots: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match=r"'train' must map names to datasets"):
        DepthDataModule(train=[HypersimDataset(roots["hypersim"])])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"no test sets configured"):
        DepthDataModule(train={"h": HypersimDataset(roots["hypersim"])}).test_dataloader()


def test_built_from_yaml_class_nodes(roots: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from d3epth.cli.trainer import build_cli

    monkeypatch.setenv("D3EPTH_TEST_HYPERSIM", str(roots["hypersim"]))
    monkeypatch.setenv("D3EPTH_TEST_VKITTI2", str(roots["vkitti2"]))
    monkeypatch.setenv("D3EPTH_TEST_NYU", str(roots["nyuv2"]))
    # Validated against the constructor signatures, key by key, then built.
    dm = build_cli(["--config", str(CONF / "datamodule_tiny.yaml")], parse_only=True).build_datamodule()
    assert isinstance(dm, DepthDataModule) and dm.val_set_names == ["nyu"]
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape[-2:] == (8, 8)


class _TinyTask(L.LightningModule):
    """Records what the trainer feeds it."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.train_sets: list[str] = []
        self.val_seen: Counter = Counter()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self.train_sets.append(batch["dataset"][0])
        return (self.w - batch["depth_norm"].mean()) ** 2

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.val_seen[(dataloader_idx, batch["dataset"][0])] += 1

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_fit_uses_the_mixed_sampler(
    roots: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    epochs_set: list[int] = []
    original = MixedBatchSampler.set_epoch

    def spy(self: MixedBatchSampler, epoch: int) -> None:
        epochs_set.append(epoch)
        original(self, epoch)

    monkeypatch.setattr(MixedBatchSampler, "set_epoch", spy)
    dm = make_dm(roots, train_probabilities={"hypersim": 0.5, "vkitti2": 0.5}, epoch_length=4)
    task = _TinyTask()
    trainer = quiet_trainer(tmp_path, max_epochs=2)
    trainer.fit(task, datamodule=dm)
    assert isinstance(trainer.train_dataloader.batch_sampler, MixedBatchSampler)
    assert len(task.train_sets) == 8 and set(task.train_sets) <= {"hypersim", "vkitti2"}
    assert task.val_seen == {(0, "hypersim"): 6, (1, "nyu"): 6}  # 3 samples x 2 epochs each, by dataloader index
    assert epochs_set[:2] == [0, 1]  # Lightning found set_epoch through batch_sampler.sampler
