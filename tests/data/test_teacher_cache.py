"""Teacher target cache: tools/cache_teacher.py, d3epth.data.teacher_cache and its use by DepthDataModule / stage 1."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch

from d3epth.data import DepthDataModule, HorizontalFlip, HypersimDataset, RandomCrop, VirtualKITTI2Dataset
from d3epth.data.teacher_cache import TeacherCache, TeacherCacheError, teacher_fingerprint
from d3epth.tasks import LatentDistillationTask
from tests.helpers import CONF
from tests.helpers.checkpoints import STUDENT, TEACHER, quiet_trainer
from tests.helpers.data import write_hypersim, write_vkitti2
from tests.tool_loader import load_tool

HYPERSIM_SIZE = (20, 28)  # not multiples of 8: the targets of padded images, latent 3x4


tool = load_tool("cache_teacher")


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("data")
    write_hypersim(base / "hypersim", {"train": 5, "val": 2}, size=HYPERSIM_SIZE)
    write_vkitti2(base / "vkitti2", "train", size=(16, 40))  # 8 frames
    return {"hypersim": base / "hypersim", "vkitti2": base / "vkitti2"}


@pytest.fixture(scope="module")
def config(roots: dict[str, Path]) -> Iterator[Path]:
    """tests/conf/cache_teacher_stage1.yaml, its data roots ($D3EPTH_TEST_HYPERSIM, $D3EPTH_TEST_VKITTI2) set for
    this module."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("D3EPTH_TEST_HYPERSIM", str(roots["hypersim"]))
        patch.setenv("D3EPTH_TEST_VKITTI2", str(roots["vkitti2"]))
        yield CONF / "cache_teacher_stage1.yaml"


def run_tool(config: Path, out: Path, *extra: str) -> int:
    return tool.main(["--config", str(config), "--out", str(out), "--num-workers", "0", "--no-progress", *extra])


@pytest.fixture(scope="module")
def cache32(config: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cache") / "fp32"
    assert run_tool(config, out, "--dtype", "float32", "--batch-size", "3", "--shard-size", "4") == 0
    return out


@pytest.fixture(scope="module")
def task() -> LatentDistillationTask:
    return LatentDistillationTask(student=STUDENT, teacher=TEACHER).eval()


def train_sets(roots: dict[str, Path], **hypersim: object) -> dict:
    return {
        "hypersim": HypersimDataset(roots["hypersim"], "train", **hypersim),
        "vkitti2": VirtualKITTI2Dataset(roots["vkitti2"], "train", kb_crop=False),
    }


def make_dm(roots: dict[str, Path], cache: Path | None, **kwargs: object) -> DepthDataModule:
    defaults: dict = {"batch_size": 2, "num_workers": 0, "seed": 3}
    return DepthDataModule(train=train_sets(roots), teacher_cache=cache, **{**defaults, **kwargs})


# ----------------------------------------------------------------------------------------------------- the targets


def test_cached_targets_equal_the_tasks_on_the_fly_targets(roots: dict[str, Path], cache32: Path, task) -> None:
    cache = TeacherCache(cache32)
    index = json.loads((cache32 / "index.json").read_text())
    # The source as the tool resolved it: the config's spec with every default spelled out, unset options left out.
    assert index["teacher"]["source"]["config"]["seed"] == TEACHER["config"]["seed"] and index["dtype"] == "float32"
    assert set(index["teacher"]["source"]) == {"config"}
    assert index["teacher"]["fingerprint"] == teacher_fingerprint(task.teacher)
    assert index["d3epth_version"] and index["sets"]["hypersim"]["dataset"]["class"] == "HypersimDataset"
    for name, dataset in train_sets(roots).items():
        assert len(cache.entries(name)) == len(dataset)
        for i in range(len(dataset)):
            sample = dataset[i]
            image = sample["image"][None]
            height, width = image.shape[-2:]
            targets = cache.load(name, sample["path"], (height, width))
            assert sorted(targets) == ["teacher_latent", "teacher_latent_flipped"]  # built without --with-depth
            plain, flipped = targets["teacher_latent"], targets["teacher_latent_flipped"]
            assert plain.shape == (4, -(-height // 8), -(-width // 8))
            expected_plain = task.teacher_targets(image)[0][0]
            expected_flipped = task.teacher_targets(image.flip(-1))[0][0]
            # Equal up to float32 summation order (the cache ran other batch compositions); latents are O(0.1-1).
            torch.testing.assert_close(plain, expected_plain, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(flipped, expected_flipped, rtol=1e-4, atol=1e-4)
            # The teacher is not flip-equivariant: the mirror image's target is not the mirrored target.
            assert (flipped - plain.flip(-1)).abs().max() > 100 * (flipped - expected_flipped).abs().max() + 1e-3


def test_float16_storage_error_within_unit_roundoff(config: Path, cache32: Path, tmp_path: Path, capsys) -> None:
    base = ["--config", str(config), "--num-workers", "0", "--no-progress"]
    assert tool.main(base) == 2  # no --out and no data.init_args.teacher_cache
    assert "give --out DIR" in capsys.readouterr().err
    # --out defaults to the config's data.init_args.teacher_cache; float16 is the default storage.
    # Same batch composition as the float32 cache, so the two differ only by the storage rounding (not by float32
    # summation order, which other batch sizes change by ~1e-4).
    assert tool.main([*base, "--batch-size", "3", f"--data.init_args.teacher_cache={tmp_path / 'fp16'}"]) == 0
    exact, half = TeacherCache(cache32), TeacherCache(tmp_path / "fp16")
    shards = list((tmp_path / "fp16" / "hypersim").glob("*.safetensors"))
    assert len(shards) == 1  # default shard size holds all 5 samples
    for path, (_, height, width) in exact.entries("hypersim").items():
        pairs = zip(
            exact.load("hypersim", path, (height, width)).values(),
            half.load("hypersim", path, (height, width)).values(),
            strict=True,
        )
        for a, b in pairs:
            assert b.dtype == torch.float32  # served as float32 whatever the storage
            # Round to nearest fp16: |error| <= 2**-11 |x| (normal range), <= 2**-25 in the subnormal range.
            assert bool(((b - a).abs() <= a.abs() * 2**-11 + 2**-24).all())


# ----------------------------------------------------------------------------------------------------- datamodule


def test_datamodule_serves_the_target_of_the_flip_state(roots: dict[str, Path], cache32: Path) -> None:
    cache = TeacherCache(cache32)
    plain_sets = train_sets(roots)
    for hflip_p in (0.0, 1.0, 0.5):
        torch.manual_seed(0)
        dataset = make_dm(roots, cache32, hflip_p=hflip_p).train_dataset()
        flips = []
        offset = 0
        for name, plain_set in plain_sets.items():
            for i in range(len(plain_set)):
                sample, plain = dataset[offset + i], plain_set[i]
                assert "teacher_latent_flipped" not in sample
                flipped = not torch.equal(sample["image"], plain["image"])
                if flipped:
                    assert torch.equal(sample["image"], plain["image"].flip(-1))
                flips.append(flipped)
                targets = cache.load(name, plain["path"], plain["image"].shape[-2:])
                expected = targets["teacher_latent_flipped" if flipped else "teacher_latent"]
                assert torch.equal(sample["teacher_latent"], expected)
            offset += len(plain_set)
        assert all(flips) if hflip_p == 1.0 else (not any(flips) if hflip_p == 0.0 else 0 < sum(flips) < len(flips))

    batch = next(iter(make_dm(roots, cache32).train_dataloader()))
    h, w = batch["image"].shape[-2:]
    assert batch["teacher_latent"].shape == (2, 4, -(-h // 8), -(-w // 8))


def test_horizontal_flip_swaps_cached_pairs_and_mirrors_the_rest() -> None:
    sample = {
        "image": torch.randn(3, 4, 6),
        "teacher_latent": torch.randn(4, 1, 1),
        "teacher_latent_flipped": torch.randn(4, 1, 1),
        "other": torch.randn(2, 3, 5),
    }
    out = HorizontalFlip(1.0)(sample)
    assert torch.equal(out["teacher_latent"], sample["teacher_latent_flipped"])
    assert torch.equal(out["teacher_latent_flipped"], sample["teacher_latent"])
    assert torch.equal(out["other"], sample["other"].flip(-1)) and torch.equal(out["image"], sample["image"].flip(-1))
    assert HorizontalFlip(0.0)(sample)["teacher_latent"] is sample["teacher_latent"]


def test_stage1_step_with_cache_equals_step_without(
    roots: dict[str, Path], cache32: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = []
    for cache in (None, cache32):
        L.seed_everything(7)
        task = LatentDistillationTask(student=STUDENT, teacher=TEACHER, lr=1e-2, warmup_steps=0)
        if cache is not None:

            def fail(*args: object) -> None:
                raise AssertionError("the teacher ran although the batch carries cached targets")

            monkeypatch.setattr(task, "teacher_targets", fail)
        fit = quiet_trainer(tmp_path, max_steps=1, limit_val_batches=0)
        fit.fit(task, datamodule=make_dm(roots, cache, hflip_p=0.5, batch_size=3))
        results.append(fit.callback_metrics["train/loss"].item())
    # Same batch (same seed: same samples and flips), same student: the loss differs only by the float32 summation
    # order of the teacher (the cache ran other batch compositions).
    assert results[0] > 0 and results[1] == pytest.approx(results[0], rel=1e-5)


def test_cache_for_another_teacher_refused_at_fit(roots: dict[str, Path], cache32: Path, task) -> None:
    dm = make_dm(roots, cache32)
    assert isinstance(dm.teacher_cache, TeacherCache)
    dm.setup("fit")  # the datamodule checks nothing about the task: that is the task's setup
    task.trainer = SimpleNamespace(datamodule=dm)
    task.setup("fit")  # the cache's teacher: accepted
    other = LatentDistillationTask(student=STUDENT, teacher={"config": {"seed": 1}})
    other.trainer = SimpleNamespace(datamodule=dm)
    other.setup("validate")  # only fit consumes the cached targets
    with pytest.raises(TeacherCacheError, match=r"index\.json was computed with teacher .*'seed': 0.*fingerprint"):
        other.setup("fit")
    task.trainer = None


def test_feature_distillation_warns_that_the_cache_is_ignored(roots: dict[str, Path], cache32: Path) -> None:
    features = LatentDistillationTask(student=STUDENT, teacher=TEACHER, feature_blocks=["mid_block"])
    features.trainer = SimpleNamespace(datamodule=make_dm(roots, cache32))
    with pytest.warns(UserWarning, match=r"distils UNet features \(\['mid_block'\]\).*ignores the cached latents"):
        features.setup("fit")


def test_stage1_without_cache_checks_nothing(roots: dict[str, Path], task) -> None:
    dm = make_dm(roots, None)
    assert dm.teacher_cache is None
    task.trainer = SimpleNamespace(datamodule=dm)
    task.setup("fit")
    task.trainer = None


# ----------------------------------------------------------------------------------------------------- resuming


def test_interrupted_run_resumes_where_it_stopped(
    config: Path, cache32: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from d3epth.data.teacher_cache import TeacherCacheWriter

    write_shard = TeacherCacheWriter.write_shard
    calls = {"shards": 0, "samples": 0}

    def crash_on_third(self, *args: object, **kwargs: object) -> Path:
        if calls["shards"] == 2:
            raise KeyboardInterrupt
        calls["shards"] += 1
        return write_shard(self, *args, **kwargs)

    from d3epth.data.teacher_cache import build

    compute = build.teacher_latents

    def counting(teacher, images: torch.Tensor) -> torch.Tensor:
        calls["samples"] += images.shape[0] // 2  # each sample runs as image + mirror
        return compute(teacher, images)

    monkeypatch.setattr(build, "teacher_latents", counting)
    out = tmp_path / "cache"
    args = ("--dtype", "float32", "--batch-size", "2", "--shard-size", "2")
    with monkeypatch.context() as patch:
        patch.setattr(TeacherCacheWriter, "write_shard", crash_on_third)
        assert run_tool(config, out, *args) == 130  # interrupted: one line, the exit status of SIGINT
    assert len(TeacherCache(out).entries("hypersim")) == 4  # two shards of two samples made it
    calls["samples"] = 0
    assert run_tool(config, out, *args) == 0
    assert calls["samples"] == 13 - 4  # 5 Hypersim + 8 VKITTI samples, 4 of them cached before the crash
    calls["samples"] = 0
    assert run_tool(config, out, *args) == 0
    assert calls["samples"] == 0  # all cached: nothing recomputed

    resumed, reference = TeacherCache(out), TeacherCache(cache32)
    for name in ("hypersim", "vkitti2"):
        assert resumed.entries(name).keys() == reference.entries(name).keys()
        for path, (_, height, width) in reference.entries(name).items():
            size = (height, width)
            a_targets, b_targets = resumed.load(name, path, size), reference.load(name, path, size)
            assert a_targets.keys() == b_targets.keys()
            for a, b in zip(a_targets.values(), b_targets.values(), strict=True):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------------------------- errors


def test_missing_cache_directory_and_index(roots: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"teacher cache directory .*nope does not exist.*cache_teacher\.py"):
        make_dm(roots, tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty has no index\.json"):
        make_dm(roots, tmp_path / "empty")


def test_missing_entries_named(roots: dict[str, Path], cache32: Path, tmp_path: Path) -> None:
    copy = tmp_path / "cache"
    shutil.copytree(cache32, copy)
    index = json.loads((copy / "index.json").read_text())
    dropped = sorted(index["sets"]["hypersim"]["entries"])[1]
    del index["sets"]["hypersim"]["entries"][dropped]
    (copy / "index.json").write_text(json.dumps(index))
    with pytest.raises(
        TeacherCacheError, match=r"index\.json: 1 of 5 samples of training set 'hypersim' are not cached"
    ):
        make_dm(roots, copy)
    cache = TeacherCache(copy)
    with pytest.raises(TeacherCacheError, match=rf"index\.json has no entry for sample '{dropped}' of training set"):
        cache.load("hypersim", dropped, HYPERSIM_SIZE)
    with pytest.raises(TeacherCacheError, match=r"has no training set 'nyu' \(it has \['hypersim', 'vkitti2'\]\)"):
        cache.entries("nyu")
    # A shard that disappeared is named.
    shard = copy / index["sets"]["vkitti2"]["entries"][next(iter(index["sets"]["vkitti2"]["entries"]))][0]
    shard.unlink()
    path = next(p for p, e in index["sets"]["vkitti2"]["entries"].items() if copy / e[0] == shard)
    with pytest.raises(FileNotFoundError, match=rf"shard .*{shard.name} \(listed in .*index\.json\) does not exist"):
        TeacherCache(copy).load("vkitti2", path, (16, 40))


def test_other_files_of_the_same_names_refused(roots: dict[str, Path], cache32: Path, tmp_path: Path) -> None:
    """Another Hypersim root with the same frame names (another seed) is not served the cached targets; a copy is."""
    other = tmp_path / "other"
    write_hypersim(other, {"train": 5, "val": 2}, size=HYPERSIM_SIZE, seed=1)
    sets = {**train_sets(roots), "hypersim": HypersimDataset(other, "train")}
    assert [e["rel"] for e in sets["hypersim"].entries] == [e["rel"] for e in train_sets(roots)["hypersim"].entries]
    with pytest.raises(TeacherCacheError, match=r"'hypersim' is configured differently .*content: cached 'sha256:"):
        DepthDataModule(train=sets, teacher_cache=str(cache32), num_workers=0)
    copy = tmp_path / "copy"
    shutil.copytree(roots["hypersim"], copy)
    DepthDataModule(train={**train_sets(roots), "hypersim": HypersimDataset(copy, "train")}, teacher_cache=str(cache32))


def test_size_mismatch_refused(roots: dict[str, Path], cache32: Path) -> None:
    sets = train_sets(roots, resize=[16, 24])
    with pytest.raises(
        TeacherCacheError, match=r"'hypersim' is configured differently .*resize: cached None, now \[16, 24\]"
    ):
        DepthDataModule(train=sets, teacher_cache=str(cache32), num_workers=0)
    cache = TeacherCache(cache32)
    path, (shard, *_) = next(iter(cache.entries("hypersim").items()))
    with pytest.raises(
        TeacherCacheError, match=rf"{shard}: sample '{path}' .* cached for a 20x28 image, .* returns 16x24"
    ):
        cache.load("hypersim", path, (16, 24))


def test_random_crop_refused(roots: dict[str, Path], config: Path, cache32: Path, tmp_path: Path, capsys) -> None:
    crop = "--data.init_args.train_transforms=[{class_path: d3epth.data.RandomCrop, init_args: {size: [8, 8]}}]"
    assert run_tool(config, tmp_path / "cache", crop) == 2
    assert "a random crop shows the student a different window" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()  # refused before anything was written
    with pytest.raises(ValueError, match=r"train_transforms contains RandomCrop\(size=\[8, 8\]\); a random crop"):
        make_dm(roots, cache32, train_transforms=[RandomCrop([8, 8])])
    cropped = HypersimDataset(roots["hypersim"], "train", transforms=[RandomCrop([8, 8])])
    with pytest.raises(ValueError, match=r"training set 'h' has the random transform RandomCrop"):
        DepthDataModule(train={"h": cropped}, teacher_cache=str(cache32), num_workers=0)


def test_tool_refuses_to_mix_teachers_in_one_cache(config: Path, cache32: Path, tmp_path: Path, capsys) -> None:
    copy = tmp_path / "cache"
    shutil.copytree(cache32, copy)
    assert run_tool(config, copy, "--dtype", "float32", "--model.init_args.teacher.config.seed=1") == 2
    err = capsys.readouterr().err
    assert "holds targets of teacher {'config': {" in err and "'seed': 0}" in err
    assert run_tool(config, copy, "--dtype", "float16") == 2
    assert "stores float32, not float16" in capsys.readouterr().err
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "file.txt").write_text("not a cache")
    assert run_tool(config, tmp_path / "other") == 2
    assert "is not a teacher cache" in capsys.readouterr().err
