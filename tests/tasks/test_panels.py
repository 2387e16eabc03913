"""Validation panels: prediction drawn off the GT, fixed-scale error, a distinct no-GT colour, the scalars' step."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from d3epth.data import DepthDataModule, HypersimDataset
from d3epth.utils.visualize import NO_GT_COLOUR, PANEL_TAG_SUFFIX, depth_error_panel
from tests.helpers.checkpoints import quiet_trainer, tiny_task
from tests.helpers.data import write_hypersim

H = W = 8


def column(panel: torch.Tensor, index: int) -> torch.Tensor:
    """Column ``index`` [3,H,W] of a one-row panel (RGB | GT | prediction | error)."""
    return panel[:, :, index * W : (index + 1) * W]


def sparse_case(pred_factor: torch.Tensor) -> tuple[torch.Tensor, ...]:
    image = torch.zeros(1, 3, H, W)
    depth = torch.linspace(1.0, 9.0, H * W).reshape(1, 1, H, W)
    valid = torch.zeros(1, 1, H, W, dtype=torch.bool)
    valid[..., ::3, ::2] = True  # sparse, LiDAR-like
    return image, depth * valid, valid, depth * pred_factor


def test_prediction_is_drawn_where_there_is_no_ground_truth() -> None:
    image, depth, valid, pred = sparse_case(torch.ones(1, 1, H, W))
    panel = depth_error_panel(image, depth, valid, {"prediction": pred}, alignment="none")
    gt, drawn = column(panel, 1), column(panel, 2)
    off = ~valid[0, 0]
    assert (gt[:, off] == 0).all()  # the GT column stays black off the GT ...
    assert (drawn[:, off].sum(0) > 0).all()  # ... the prediction is visible at every pixel


def test_error_colours_are_on_a_fixed_scale_with_a_distinct_no_gt_colour() -> None:
    everywhere = torch.full((1, 1, H, W), 1.25)  # AbsRel 0.25 at every pixel
    mixed = everywhere.clone()
    mixed[..., : H // 2, :] = 1.05  # AbsRel 0.05 in the top half, 0.25 below
    panels = []
    for factor in (everywhere, mixed):
        image, depth, valid, pred = sparse_case(factor)
        panels.append(column(depth_error_panel(image, depth, valid, {"p": pred}, alignment="none"), 3))
    row, col = H - 2, 0  # a valid pixel in the bottom half: AbsRel 0.25 in both maps
    assert valid[0, 0, row, col]
    torch.testing.assert_close(panels[0][:, row, col], panels[1][:, row, col])
    # "binary" runs white (0) to black (0.5): AbsRel 0.25 is mid-grey, AbsRel 0.05 nearly white.
    torch.testing.assert_close(panels[0][:, row, col], torch.full((3,), 0.5), atol=0.02, rtol=0)
    assert panels[1][:, 0, 0].min() > 0.85
    magenta = torch.tensor(NO_GT_COLOUR)
    off = ~valid[0, 0]
    assert (panels[0][:, off] == magenta[:, None]).all()
    valid_colours = panels[1][:, valid[0, 0]]
    assert ((valid_colours - magenta[:, None]).abs().sum(0) > 0.5).all()  # never confused with a valid error


def test_images_are_logged_at_the_step_of_the_validation_scalars(tmp_path: Path) -> None:
    data = tmp_path / "hypersim"
    write_hypersim(data, counts={"train": 4, "val": 2}, size=(32, 32))
    task = tiny_task("stage2_light", seed=0, lr=1e-3, warmup_steps=1, num_logged_images=1)
    datamodule = DepthDataModule(
        train={"hypersim": HypersimDataset(data, split="train")},
        val={"hypersim": HypersimDataset(data, split="val")},
        batch_size=2,
        num_workers=0,
    )
    logger = TensorBoardLogger(tmp_path / "logs", name="panels")
    trainer = quiet_trainer(
        tmp_path, logger=logger, max_steps=4, val_check_interval=2, limit_val_batches=1, num_sanity_val_steps=1
    )
    trainer.fit(task, datamodule=datamodule)
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0}).Reload()
    image_tag = f"val_images/hypersim/{PANEL_TAG_SUFFIX}"
    assert image_tag in events.Tags()["images"]
    image_steps = [e.step for e in events.Images(image_tag)]
    scalar_steps = [e.step for e in events.Scalars("val/abs_rel")]
    assert len(image_steps) == 2 and image_steps == scalar_steps  # none from the sanity check
