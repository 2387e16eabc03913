"""MixedBatchSampler (per-batch mixing, determinism, DDP sharding) and DepthDataModule (loaders, names, YAML)."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from data_fixtures import write_hypersim, write_nyu, write_vkitti2
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, DistributedSampler

from d3epth.data import (
    DepthDataModule,
    HypersimDataset,
    MixedBatchSampler,
    NYUv2Dataset,
    VirtualKITTI2Dataset,
)

# ----------------------------------------------------------------------------------------------- sampler


def dataset_of(index: int, sizes: list[int]) -> int:
    bounds = [sum(sizes[: k + 1]) for k in range(len(sizes))]
    return next(k for k, b in enumerate(bounds) if index < b)


def test_every_batch_from_one_dataset() -> None:
    sizes = [10, 7, 5]
    sampler = MixedBatchSampler(sizes, batch_size=2, probabilities=[0.5, 0.3, 0.2], seed=1, num_replicas=1, rank=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 5 + 3 + 2  # drop_last: all full batches of all datasets
    for batch in batches:
        assert len(batch) == 2
        assert len({dataset_of(i, sizes) for i in batch}) == 1


def test_mix_frequency_within_binomial_tolerance() -> None:
    n, p = 5000, 0.1
    sampler = MixedBatchSampler(
        [1000, 300], batch_size=2, probabilities=[0.9, 0.1], epoch_length=n, seed=5, num_replicas=1, rank=0
    )
    from_second = sum(dataset_of(b[0], [1000, 300]) == 1 for b in sampler)
    assert abs(from_second - n * p) < 4 * math.sqrt(n * p * (1 - p))


def test_probabilities_are_normalised_and_default_proportional() -> None:
    assert MixedBatchSampler([10, 10], 2, probabilities=[9, 1], num_replicas=1, rank=0).probabilities == [0.9, 0.1]
    assert MixedBatchSampler([30, 10], 2, num_replicas=1, rank=0).probabilities == [0.75, 0.25]


def test_exhausted_dataset_reshuffles() -> None:
    sizes = [100, 6]
    sampler = MixedBatchSampler(sizes, 2, probabilities=[0.5, 0.5], epoch_length=80, seed=0, num_replicas=1, rank=0)
    small = [b for b in sampler if dataset_of(b[0], sizes) == 1]
    assert len(small) >= 9
    passes = [sorted(i for b in small[j : j + 3] for i in b) for j in range(0, len(small) - 2, 3)]
    assert all(p == list(range(100, 106)) for p in passes)  # each pass of 3 batches covers the 6 samples once
    assert len({tuple(i for b in small[j : j + 3] for i in b) for j in range(0, 9, 3)}) > 1  # reshuffled


def test_deterministic_under_seed_and_epoch() -> None:
    def make(seed: int) -> MixedBatchSampler:
        return MixedBatchSampler([20, 12], 2, probabilities=[0.7, 0.3], seed=seed, num_replicas=1, rank=0)

    a, b = make(3), make(3)
    assert list(a) == list(b)  # epoch 0
    assert list(a) == list(b)  # epoch 1 (counts up per iteration)
    c = make(3)
    c.set_epoch(1)
    a.set_epoch(1)
    assert list(c) == list(a)
    c.set_epoch(0)
    assert list(c) != list(a)
    assert list(make(3)) != list(make(4))


def test_two_ranks_disjoint_and_covering() -> None:
    ranks = [MixedBatchSampler([40], 4, seed=2, num_replicas=2, rank=r) for r in (0, 1)]
    seen = [[i for b in s for i in b] for s in ranks]
    assert len(ranks[0]) == len(ranks[1]) == 5
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(40))


def test_ranks_split_the_single_process_sequence() -> None:
    kwargs = {"batch_size": 2, "probabilities": [0.8, 0.2], "epoch_length": 30, "seed": 9}
    single = list(MixedBatchSampler([50, 20], num_replicas=1, rank=0, **kwargs))
    per_rank = [list(MixedBatchSampler([50, 20], num_replicas=3, rank=r, **kwargs)) for r in range(3)]
    assert [len(r) for r in per_rank] == [10, 10, 10]
    interleaved = [per_rank[i % 3][i // 3] for i in range(30)]
    assert interleaved == single
    uneven = [len(MixedBatchSampler([50, 20], num_replicas=4, rank=r, **kwargs)) for r in range(4)]
    assert uneven == [7, 7, 7, 7]  # equal per rank, so no rank waits in a collective


def test_sampler_errors() -> None:
    with pytest.raises(TypeError, match=r"got a sampler \(DistributedSampler\).*use_distributed_sampler: false"):
        MixedBatchSampler(DistributedSampler(list(range(8)), num_replicas=2, rank=0), 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"dataset 1 has 1 samples, fewer than one batch of 2"):
        MixedBatchSampler([10, 1], 2, probabilities=[0.5, 0.5], num_replicas=1, rank=0)
    with pytest.raises(ValueError, match=r"invalid rank 2 for world size 2"):
        MixedBatchSampler([10], 2, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match=r"2 probabilities for 1 datasets"):
        MixedBatchSampler([10], 2, probabilities=[0.5, 0.5], num_replicas=1, rank=0)


def test_lightning_distributed_injection_is_refused() -> None:
    from lightning.pytorch.utilities.data import _update_dataloader

    loader = DataLoader(list(range(20)), batch_sampler=MixedBatchSampler([20], 2, num_replicas=1, rank=0))
    with pytest.raises(TypeError, match=r"use_distributed_sampler: false"):
        _update_dataloader(loader, DistributedSampler(loader.dataset, num_replicas=2, rank=0))


# ----------------------------------------------------------------------------------------------- datamodule


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


def test_distributed_trainer_with_lightning_sampler_refused(roots: dict[str, Path]) -> None:
    dm = make_dm(roots)
    dm.trainer = SimpleNamespace(  # type: ignore[assignment]
        global_rank=0, world_size=2, _accelerator_connector=SimpleNamespace(use_distributed_sampler=True)
    )
    with pytest.raises(RuntimeError, match=r"set trainer.use_distributed_sampler: false"):
        dm.train_dataloader()


def test_deterministic_with_workers(roots: dict[str, Path]) -> None:
    def run() -> list[torch.Tensor]:
        dm = make_dm(roots, num_workers=1, persistent_workers=False, seed=11, epoch_length=6)
        return [b["image"] for b in dm.train_dataloader()]

    first, second = run(), run()
    assert len(first) == 6 and all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_bad_datamodule_arguments(roots: dict[str, Path]) -> None:
    with pytest.raises(TypeError, match=r"'train' must map names to datasets"):
        DepthDataModule(train=[HypersimDataset(roots["hypersim"])])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"no test sets configured"):
        DepthDataModule(train={"h": HypersimDataset(roots["hypersim"])}).test_dataloader()


def test_built_from_yaml_class_nodes(roots: dict[str, Path]) -> None:
    from d3epth.config import instantiate, validate_config

    node = OmegaConf.create(
        f"""
        class_path: d3epth.data.DepthDataModule
        init_args:
          train:
            hypersim: {{class_path: d3epth.data.HypersimDataset,
                       init_args: {{root: {roots["hypersim"]}, split: train, resize: [12, 16]}}}}
            vkitti2: {{class_path: d3epth.data.VirtualKITTI2Dataset,
                      init_args: {{root: {roots["vkitti2"]}, split: train, kb_crop: false}}}}
          train_probabilities: {{hypersim: 0.9, vkitti2: 0.1}}
          train_transforms:
            - {{class_path: d3epth.data.RandomCrop, init_args: {{size: [8, 8]}}}}
          val:
            nyu: {{class_path: d3epth.data.NYUv2Dataset, init_args: {{root: {roots["nyuv2"]}}}}}
          batch_size: 2
          num_workers: 0
        """
    )
    validate_config(OmegaConf.create({"data": node}))  # the constructor signatures accept this YAML
    dm = instantiate(node)
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
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        use_distributed_sampler=False,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(task, datamodule=dm)
    assert isinstance(trainer.train_dataloader.batch_sampler, MixedBatchSampler)
    assert len(task.train_sets) == 8 and set(task.train_sets) <= {"hypersim", "vkitti2"}
    assert task.val_seen == {(0, "hypersim"): 6, (1, "nyu"): 6}  # 3 samples x 2 epochs each, by dataloader index
    assert epochs_set[:2] == [0, 1]  # Lightning found set_epoch through batch_sampler.sampler
