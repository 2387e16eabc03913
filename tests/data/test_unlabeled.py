"""Unlabeled images as a training source: the dataset, the datamodule's rules, the teacher cache's teacher_depth, and
tools/fit.py through stage 1 and stage 2 (pseudo-labels) on an unlabeled folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from d3epth.data import DepthDataModule, HypersimDataset, UnlabeledImageDataset
from d3epth.data.teacher_cache import TeacherCache, TeacherCacheWriter, fill_cache, teacher_fingerprint
from d3epth.data.unlabeled import centre_crop_to_aspect
from d3epth.errors import ConfigError, DataError
from d3epth.models.teacher.sources import load_teacher
from tests.helpers import CONF
from tests.helpers.checkpoints import TEACHER
from tests.helpers.data import write_hypersim
from tests.tool_loader import load_tool

fit = load_tool("fit")


def write_images(root: Path, sizes: list[tuple[int, int]], seed: int = 0) -> list[Path]:
    """RGB files of the given (H, W) sizes, alternating PNG and JPEG, half of them in a sub-folder."""
    rng = np.random.default_rng(seed)
    files = []
    for i, (h, w) in enumerate(sizes):
        path = root / ("sub" if i % 2 else "") / f"img_{i}.{'jpg' if i % 2 else 'png'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        files.append(path)
    return files


def test_folder_glob_and_list_give_unlabeled_samples_of_the_training_size(tmp_path: Path) -> None:
    files = write_images(tmp_path / "imgs", [(40, 60), (50, 30), (32, 32)])
    (tmp_path / "list.txt").write_text("# two of them\nimgs/img_0.png\nimgs/sub/img_1.jpg\n")

    folder = UnlabeledImageDataset(str(tmp_path / "imgs"), resize=[16, 24])
    assert len(folder) == 3
    assert sorted(e["rel"] for e in folder.entries) == ["img_0.png", "img_2.png", "sub/img_1.jpg"]
    sample = folder[0]
    assert sample["has_depth"] is False
    assert sample["image"].shape == (3, 16, 24) and sample["image"].abs().max() <= 1
    assert sample["depth"].shape == (1, 16, 24) and not sample["depth"].any()
    assert not sample["valid_mask"].any() and not sample["depth_norm"].any()

    assert len(UnlabeledImageDataset(str(tmp_path / "imgs" / "**" / "*.jpg"), resize=[16, 24])) == 1
    listed = UnlabeledImageDataset(str(tmp_path / "list.txt"), resize=[16, 24])
    assert [Path(e["rgb"]) for e in listed.entries] == [files[0].resolve(), files[1].resolve()]
    both = UnlabeledImageDataset([str(tmp_path / "list.txt"), str(tmp_path / "imgs")], resize=[16, 24])
    assert len(both) == 3  # a file met twice is kept once


def test_centre_crop_keeps_the_middle_at_the_target_aspect() -> None:
    rgb = np.zeros((10, 40, 3), dtype=np.uint8)
    rgb[:, 10:30] = 255  # the centred 20 columns
    crop = centre_crop_to_aspect(rgb, 20, 20)  # square target: the 10x10 middle
    assert crop.shape == (10, 10, 3) and (crop == 255).all()
    tall = centre_crop_to_aspect(np.zeros((40, 10, 3), dtype=np.uint8), 1, 2)  # wide target from a tall image
    assert tall.shape == (5, 10, 3)


def test_missing_sources_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="is not a folder, a glob"):
        UnlabeledImageDataset(str(tmp_path / "nowhere"), resize=[8, 8])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="matches no"):
        UnlabeledImageDataset(str(tmp_path / "empty"), resize=[8, 8])
    (tmp_path / "list.txt").write_text("gone.png\n")
    with pytest.raises(DataError, match=r"list.txt: 1 listed image\(s\) missing"):
        UnlabeledImageDataset(str(tmp_path / "list.txt"), resize=[8, 8])


@pytest.fixture
def sets(tmp_path: Path) -> tuple[HypersimDataset, UnlabeledImageDataset]:
    write_hypersim(tmp_path / "hypersim", counts={"train": 4, "val": 2}, size=(32, 32))
    write_images(tmp_path / "web", [(32, 48)] * 4)
    labelled = HypersimDataset(tmp_path / "hypersim", split="train")
    return labelled, UnlabeledImageDataset(str(tmp_path / "web"), resize=[32, 32])


def test_datamodule_mixes_unlabeled_training_sets_and_refuses_them_for_evaluation(sets: tuple) -> None:
    labelled, unlabeled = sets
    dm = DepthDataModule(train={"hypersim": labelled, "web": unlabeled}, batch_size=2, num_workers=0)
    assert dm.unlabeled_set_names == ["web"]
    dm.setup("fit")  # the labelled-set probe does not refuse the set without depth
    flags = {bool(b["has_depth"].all()) for b in dm.train_dataloader()}
    assert flags == {True, False}  # each batch from one set; both sets served
    with pytest.raises(ValueError, match=r"val\.web is UnlabeledImageDataset, a source without depth"):
        DepthDataModule(train={"hypersim": labelled}, val={"web": unlabeled})


def test_teacher_cache_serves_teacher_depth_of_image_and_mirror(sets: tuple, tmp_path: Path) -> None:
    _, unlabeled = sets
    teacher = load_teacher(TEACHER, freeze=True, purpose="test")
    info = {"source": TEACHER, "fingerprint": teacher_fingerprint(teacher), "vae_scale_factor": 8, "latent_channels": 4}
    writer = TeacherCacheWriter(tmp_path / "cache", info, "float32", "test", with_depth=True)
    fill_cache(writer, {"web": unlabeled}, teacher, torch.device("cpu"), batch_size=3, num_workers=0, progress=False)
    with pytest.raises(Exception, match=r"drop --with-depth to extend it"):
        TeacherCacheWriter(tmp_path / "cache", info, "float32", "test", with_depth=False)

    cache = TeacherCache(tmp_path / "cache")
    assert cache.has_depth
    dm = DepthDataModule(
        train={"web": unlabeled}, batch_size=2, num_workers=0, hflip_p=0.0, teacher_cache=str(cache.root)
    )
    sample = dm.train_dataset()[1]
    image = unlabeled[1]["image"][None]
    with torch.no_grad():
        torch.testing.assert_close(
            sample["teacher_depth"], teacher.one_step_depth(image)[0], atol=2e-4, rtol=0
        )  # batch of 6 vs 1: float noise
        mirrored = teacher.one_step_depth(image.flip(-1))[0]
    stored = cache.load("web", unlabeled.entries[1]["rel"], (32, 32))
    torch.testing.assert_close(
        stored["teacher_depth_flipped"], mirrored, atol=2e-4, rtol=0
    )  # batch of 6 vs 1: float noise
    assert "teacher_depth_flipped" not in sample  # the flip augmentation chose one of the pair


@pytest.fixture
def unlabeled_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    write_hypersim(tmp_path / "hypersim", counts={"train": 4, "val": 2}, size=(32, 32))
    write_images(tmp_path / "web", [(40, 40), (32, 64), (48, 32), (32, 32)])
    monkeypatch.setenv("D3EPTH_TEST_HYPERSIM", str(tmp_path / "hypersim"))
    monkeypatch.setenv("D3EPTH_TEST_UNLABELED", str(tmp_path / "web"))
    monkeypatch.setenv("D3EPTH_TEST_LOGS", str(tmp_path / "logs"))
    return CONF / "unlabeled_tiny.yaml"


def test_fit_distils_an_unlabeled_folder_in_stage1_and_stage2(unlabeled_config: Path, tmp_path: Path) -> None:
    config = ["--config", str(unlabeled_config), "--trainer.max_steps=4", "--trainer.val_check_interval=4"]
    assert fit.main(config) == 0
    stage1 = tmp_path / "logs" / "tiny_unlabeled"
    stage2 = [
        *config,
        "--run_name=tiny_unlabeled_stage2",
        "--model=d3epth.tasks.PixelRefinementTask",
        f"--model.init_args.init_from={stage1}",
        "--model.init_args.pseudo_label_ignore_fraction=0.1",
    ]
    assert fit.main(stage2) == 0
    events = list((tmp_path / "logs" / "tiny_unlabeled_stage2").rglob("events.out.tfevents.*"))
    tags = EventAccumulator(str(events[0].parent)).Reload().Tags()["scalars"]
    assert "train/pseudo_loss" in tags and "train/loss_ssi" in tags  # both kinds of batch trained


def test_gt_only_tasks_refuse_an_unlabeled_source(unlabeled_config: Path, capsys: pytest.CaptureFixture) -> None:
    baseline = [
        "--config",
        str(unlabeled_config),
        "--model=d3epth.tasks.PixelRefinementTask",
        "--model.init_args.teacher=null",
        "--trainer.max_steps=1",
    ]
    assert fit.main(baseline) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.init_args.train.web" in err[0] and "no model.init_args.teacher" in err[0]


def test_base_task_refuses_unlabeled_sets_with_one_line() -> None:
    from tests.helpers.checkpoints import tiny_task

    task = tiny_task("teacher")
    with pytest.raises(ConfigError, match=r"train.web: TeacherTask trains on ground truth"):
        task.check_unlabeled_sets(["web"])
    task.check_unlabeled_sets([])  # labelled sets only: fine
    tiny_task("stage1").check_unlabeled_sets(["web"])  # stage 1 distils them


def test_pseudo_label_mask_leaves_out_each_images_largest_errors() -> None:
    from tests.helpers.checkpoints import tiny_task

    task = tiny_task("stage2_light", pseudo_label_ignore_fraction=0.1)
    target = torch.linspace(-1, 1, 2 * 100).view(2, 1, 10, 10)
    pred = 3.0 * target + 0.5  # an affine map of the target: zero error after alignment...
    worst = torch.zeros_like(target, dtype=torch.bool)
    worst[0, 0, 0, :10] = True  # ...except 10 % of image 0's pixels and another 10 % of image 1's
    worst[1, 0, 5, :10] = True
    pred = torch.where(worst, pred + torch.linspace(1, 2, 10).view(1, 1, 1, 10), pred)
    keep = task.pseudo_label_mask(pred, target)
    assert torch.equal(keep, ~worst)
    assert bool(tiny_task("stage2_light").pseudo_label_mask(pred, target).all())  # fraction 0 keeps every pixel


def test_stage2_skips_unlabeled_batches_when_pseudo_labels_are_off() -> None:
    from torch.utils.data import DataLoader

    from d3epth.data.sample import collate_samples
    from tests.helpers.checkpoints import quiet_trainer, tiny_task

    def unlabeled_sample(i: int) -> dict:
        size = (1, 32, 32)
        return {
            "image": torch.rand(3, 32, 32) * 2 - 1,
            "depth": torch.zeros(size),
            "valid_mask": torch.zeros(size, dtype=torch.bool),
            "depth_norm": torch.zeros(size),
            "dataset": "web",
            "path": f"img_{i}.png",
            "has_depth": False,
        }

    task = tiny_task("stage2_light", pseudo_labels="none", warmup_steps=1)
    loader = DataLoader([unlabeled_sample(i) for i in range(4)], batch_size=2, collate_fn=collate_samples)
    before = {key: value.clone() for key, value in task.student.state_dict().items()}
    trainer = quiet_trainer(max_steps=2)
    with pytest.warns(UserWarning, match="returned `None`"):
        trainer.fit(task, train_dataloaders=loader)
    assert trainer.global_step == 2
    assert all(torch.equal(before[key], value) for key, value in task.student.state_dict().items())  # no update


def test_target_mask_covers_every_pixel_of_an_unlabeled_image_only() -> None:
    from d3epth.data.sample import target_mask

    valid = torch.tensor([[[[True, False], [False, False]]], [[[False, False], [False, False]]]])
    mask = target_mask(valid, torch.tensor([True, False]))
    assert torch.equal(mask[0], valid[0]) and bool(mask[1].all())
    assert target_mask(valid, None) is valid


def test_pseudo_labels_all_weigh_the_summed_terms_once() -> None:
    """Ground-truth and pseudo-label terms are summed per term, then weighted once (one regulariser, one DWA entry).

    Uncertainty weighting with s = (0.3, -0.2): loss = Σ_k ½ e^{-s_k} (L_k^gt + w L_k^pseudo) + ½ s_k, w = 0.5.
    """
    from tests.helpers.checkpoints import tiny_task

    generator = torch.Generator().manual_seed(0)
    batch = {
        "image": torch.rand(2, 3, 32, 32, generator=generator) * 2 - 1,
        "depth_norm": torch.rand(2, 1, 32, 32, generator=generator) * 2 - 1,
        "valid_mask": torch.rand(2, 1, 32, 32, generator=generator) > 0.2,
        "teacher_depth": torch.rand(2, 1, 32, 32, generator=generator) * 2 - 1,
    }
    task = tiny_task("stage2_light", pseudo_labels="all", pseudo_label_weight=0.5)
    s = torch.tensor([0.3, -0.2])
    with torch.no_grad():
        task.loss.weighting.log_vars.copy_(s)
        pred = task(batch["image"])
        gt = task.loss.terms(pred, batch["depth_norm"], batch["valid_mask"], image=batch["image"])
        pseudo = task.loss.terms(pred, batch["teacher_depth"], torch.ones_like(batch["valid_mask"]), batch["image"])
        expected = sum(
            0.5 * torch.exp(-s[k]) * (gt[name] + 0.5 * pseudo[name]) + 0.5 * s[k]
            for k, name in enumerate(("ssi", "grad"))
        )
        with pytest.warns(UserWarning, match="self.log"):  # no trainer attached
            loss = task.training_step(batch, 0)
    torch.testing.assert_close(loss, expected)

    dwa = tiny_task("stage2_light", pseudo_labels="all", loss={"weighting": "dwa", "weighting_kwargs": {"window": 5}})
    with torch.no_grad(), pytest.warns(UserWarning, match="self.log"):
        dwa.training_step(batch, 0)
    assert int(dwa.loss.weighting.window_count) == 1  # one record per step, not one per target
