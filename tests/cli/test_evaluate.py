"""tools/evaluate.py end to end on tiny data: named benchmark, config test sets, results files, alignment, errors."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from d3epth.data import DepthDataModule, HypersimDataset, NYUv2Dataset
from d3epth.inference import load_predictor
from d3epth.metrics import METRIC_NAMES, DepthMetrics
from tests.helpers import CONF
from tests.helpers.checkpoints import quiet_trainer, tiny_task
from tests.helpers.data import write_hypersim, write_nyu
from tests.helpers.eval_data import write_diode, write_eth3d
from tests.tool_loader import load_tool

evaluate = load_tool("evaluate")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint) -> Iterator[dict[str, Path]]:
    """Tiny Hypersim (train/test) and NYU data, a 2-step-trained and an untrained stage-2 checkpoint, data configs.

    The configs under tests/conf read the data roots from $D3EPTH_TEST_HYPERSIM and $D3EPTH_TEST_NYU, set for
    this module.
    """
    root = tmp_path_factory.mktemp("evaluate")
    write_hypersim(root / "hypersim", counts={"train": 4, "test": 2}, size=(32, 32), seed=1)
    write_nyu(root / "nyuv2", n=3, size=(24, 32), seed=2)
    paths = {"untrained": tiny_checkpoint("stage2_light", seed=0, lr=1e-2, warmup_steps=0)[1]}

    task = tiny_task("stage2_light", seed=0, lr=1e-2, warmup_steps=0)
    datamodule = DepthDataModule(
        train={"hypersim": HypersimDataset(root / "hypersim", split="train")}, batch_size=2, num_workers=0
    )
    trainer = quiet_trainer(root, max_steps=2, limit_val_batches=0)
    trainer.fit(task, datamodule=datamodule)
    assert trainer.global_step == 2
    paths["trained"] = root / "trained.ckpt"
    trainer.save_checkpoint(paths["trained"])

    paths["hypersim"], paths["nyu"] = root / "hypersim", root / "nyuv2"
    paths["config"] = CONF / "evaluate_test_sets.yaml"
    paths["config_no_test"] = CONF / "evaluate_val_sets.yaml"
    paths["config_no_data"] = CONF / "evaluate_no_data.yaml"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("D3EPTH_TEST_HYPERSIM", str(paths["hypersim"]))
        patch.setenv("D3EPTH_TEST_NYU", str(paths["nyu"]))
        yield paths


def reference(checkpoint: Path, dataset, benchmark: str, alignment: str = "depth") -> dict[str, float]:
    """The metrics computed directly: the checkpoint's predictor image by image, one DepthMetrics over the set."""
    predictor = load_predictor(checkpoint)
    metrics = DepthMetrics(benchmark=benchmark, alignment=alignment)
    for i in range(len(dataset)):
        sample = dataset[i]
        pred = predictor.predict(sample["image"][None])
        metrics.update(pred, sample["depth"][None], sample["valid_mask"][None])
    return {key: float(value) for key, value in metrics.compute().items()}


def nyu_abs_rel_by_hand(checkpoint: Path, root: Path) -> float:
    """NYU AbsRel in numpy: Eigen crop scaled to the image, LS scale + shift in depth space, clip to (1e-3, 10) m."""
    predictor = load_predictor(checkpoint)
    dataset = NYUv2Dataset(root, split="test")
    values = []
    for i in range(len(dataset)):
        sample = dataset[i]
        pred = predictor.predict(sample["image"][None])[0, 0].double().numpy()
        gt = sample["depth"][0].double().numpy()
        height, width = gt.shape
        crop = np.zeros_like(gt, dtype=bool)
        # Eigen crop rows 45:471, cols 41:601 of 480x640, scaled and rounded half up.
        top, bottom = (int(np.floor(v * height / 480 + 0.5)) for v in (45, 471))
        left, right = (int(np.floor(v * width / 640 + 0.5)) for v in (41, 601))
        crop[top:bottom, left:right] = True
        mask = sample["valid_mask"][0].numpy() & (gt > 1e-3) & (gt < 10.0) & crop
        design = np.stack([pred[mask], np.ones(mask.sum())], axis=1)
        (scale, shift), *_ = np.linalg.lstsq(design, gt[mask], rcond=None)
        aligned = np.clip(scale * pred[mask] + shift, 1e-3, 10.0)
        values.append(np.mean(np.abs(aligned - gt[mask]) / gt[mask]))
    return float(np.mean(values))


def run(args: list[str], out: Path) -> int:
    return evaluate.main([*args, "--device", "cpu", "--out", str(out)])


def read_results(out: Path) -> tuple[list[dict], list[dict]]:
    rows = json.loads((out / "results.json").read_text())
    with open(out / "results.csv", newline="") as handle:
        return rows, list(csv.DictReader(handle))


def test_named_benchmark_matches_a_direct_computation(
    tiny: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NYUV2_ROOT", raising=False)
    out = tmp_path / "out"
    assert run([str(tiny["trained"]), "--benchmark", "nyu", "--nyu-root", str(tiny["nyu"])], out) == 0
    printed = capsys.readouterr().out
    rows, csv_rows = read_results(out)
    assert len(rows) == 1
    row = rows[0]
    assert (row["model"], row["benchmark"], row["alignment"], row["num_images"]) == (
        str(tiny["trained"]),
        "nyu",
        "depth",
        3,
    )
    expected = reference(tiny["trained"], NYUv2Dataset(tiny["nyu"], split="test"), "nyu")
    assert set(METRIC_NAMES) <= set(row)
    for key in METRIC_NAMES:
        assert row[key] == pytest.approx(expected[key], rel=1e-6, abs=1e-9), key
    assert row["abs_rel"] == pytest.approx(nyu_abs_rel_by_hand(tiny["trained"], tiny["nyu"]), rel=1e-5)
    # The CSV holds the same row.
    assert len(csv_rows) == 1 and list(csv_rows[0]) == list(row)
    for key in METRIC_NAMES:
        assert float(csv_rows[0][key]) == pytest.approx(row[key], rel=1e-12)
    # The table: header, rule, one line with the model, the benchmark, the image count and AbsRel to 4 places.
    lines = printed.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("model"))
    assert lines[header].split() == [
        "model",
        "benchmark",
        "images",
        *[k for k in METRIC_NAMES if k not in ("log10", "silog")],
    ]
    assert set(lines[header + 1].replace(" ", "")) == {"-"}
    cells = lines[header + 2].split()
    assert cells[:3] == [str(tiny["trained"]), "nyu", "3"]
    assert cells[3] == f"{row['abs_rel']:.4f}" and cells[-3] == f"{row['delta1']:.4f}"
    assert f"wrote {out / 'results.json'}" in printed


def test_benchmark_root_from_the_environment(
    tiny: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NYUV2_ROOT", str(tiny["nyu"]))
    assert run([str(tiny["trained"]), "--benchmark", "nyu"], tmp_path / "env") == 0
    assert run([str(tiny["trained"]), "--benchmark", "nyu", "--nyu-root", str(tiny["nyu"])], tmp_path / "flag") == 0
    assert read_results(tmp_path / "env")[0] == read_results(tmp_path / "flag")[0]


def test_config_test_sets_one_row_per_model_and_set(tiny: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    models = [str(tiny["trained"]), str(tiny["untrained"])]
    assert run([*models, "--config", str(tiny["config"])], out) == 0
    rows, csv_rows = read_results(out)
    assert [(r["model"], r["benchmark"]) for r in rows] == [(m, s) for m in models for s in ("hypersim", "nyu")]
    assert [(r["model"], r["benchmark"]) for r in csv_rows] == [(r["model"], r["benchmark"]) for r in rows]
    datasets = {"hypersim": HypersimDataset(tiny["hypersim"], split="test"), "nyu": NYUv2Dataset(tiny["nyu"], "test")}
    for row in rows:
        assert row["num_images"] == len(datasets[row["benchmark"]])
        # Config sets take the preset of their own name (hypersim: 65 m range; nyu: Eigen crop).
        expected = reference(Path(row["model"]), datasets[row["benchmark"]], row["benchmark"])
        for key in METRIC_NAMES:
            assert row[key] == pytest.approx(expected[key], rel=1e-6, abs=1e-9), (row["model"], row["benchmark"], key)
    # Two different models give different numbers on the same set.
    assert rows[0]["abs_rel"] != rows[2]["abs_rel"]


def test_alignment_none_changes_the_result(tiny: dict[str, Path], tmp_path: Path) -> None:
    args = [str(tiny["trained"]), "--benchmark", "nyu", "--nyu-root", str(tiny["nyu"])]
    assert run([*args, "--alignment", "none"], tmp_path / "none") == 0
    assert run(args, tmp_path / "auto") == 0
    (none,), _ = read_results(tmp_path / "none")
    (auto,), _ = read_results(tmp_path / "auto")
    assert none["alignment"] == "none" and auto["alignment"] == "depth"
    assert none["abs_rel"] != pytest.approx(auto["abs_rel"], rel=1e-3)
    expected = reference(tiny["trained"], NYUv2Dataset(tiny["nyu"], split="test"), "nyu", alignment="none")
    assert none["abs_rel"] == pytest.approx(expected["abs_rel"], rel=1e-6)
    assert none["rmse"] == pytest.approx(expected["rmse"], rel=1e-6)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing_model", "model source not found"),
        ("corrupt_checkpoint", "cannot read checkpoint"),
        ("missing_root", "give --nyu-root or set $NYUV2_ROOT"),
        ("config_without_test", "data.init_args.test is empty"),
        ("config_without_data", "evaluate_no_data.yaml: missing required argument 'data'"),
    ],
)
def test_errors_exit_2_with_a_message(
    case: str,
    message: str,
    tiny: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NYUV2_ROOT", raising=False)
    nyu = ["--benchmark", "nyu", "--nyu-root", str(tiny["nyu"])]
    named = {"missing_model": tmp_path / "nowhere.ckpt", "corrupt_checkpoint": tmp_path / "corrupt.ckpt"}
    (tmp_path / "corrupt.ckpt").write_bytes(b"PK\x03\x04 this is not a checkpoint" * 10)
    args = {
        "missing_model": [str(named["missing_model"]), *nyu],
        "corrupt_checkpoint": [str(named["corrupt_checkpoint"]), *nyu],
        "missing_root": [str(tiny["trained"]), "--benchmark", "nyu"],
        "config_without_test": [str(tiny["trained"]), "--config", str(tiny["config_no_test"])],
        "config_without_data": [str(tiny["trained"]), "--config", str(tiny["config_no_data"])],
    }[case]
    out = tmp_path / "out"
    assert run(args, out) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    if case in named:
        assert str(named[case]) in err  # the message names the file
    if case.startswith("config"):
        assert str(tiny[case.replace("config_without_", "config_no_")]) in err
    assert not (out / "results.json").exists()


def _hand_ranks(rows: list[dict], benchmarks: list[str]) -> dict[str, float]:
    """Average rank per model, by hand: 1 for the better of two models per (benchmark, metric), 1.5 each on a tie."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    assert len(models) == 2
    value = {(r["model"], r["benchmark"]): r for r in rows}
    ranks: dict[str, list[float]] = {m: [] for m in models}
    for bench in benchmarks:
        for key, sign in (("abs_rel", 1.0), ("delta1", -1.0)):  # lower AbsRel, higher δ1 is better
            a, b = (sign * value[(m, bench)][key] for m in models)
            ranks[models[0]].append(1.5 if a == b else (1.0 if a < b else 2.0))
            ranks[models[1]].append(1.5 if a == b else (2.0 if a < b else 1.0))
    return {m: sum(r) / len(r) for m, r in ranks.items()}


def test_benchmark_all_prints_table1_with_average_rank(
    tiny: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from d3epth.cli.make_sample_data import main as make_sample_data

    sample = tmp_path / "sample"
    sizes = ["--nyu-size", "32", "24", "--kitti-size", "64", "32", "--nyu-frames", "2", "--kitti-frames", "3"]
    datasets = ["nyuv2", "kitti", "eth3d", "scannet", "diode"]
    assert make_sample_data(["--out", str(sample), "--datasets", *datasets, *sizes, "--eval-frames", "2", "--tar"]) == 0
    roots = ["--nyu-root", str(sample / "nyuv2"), "--kitti-root", str(sample / "kitti.tar")]
    roots += ["--eth3d-root", str(sample / "eth3d.tar"), "--scannet-root", str(sample / "scannet")]
    roots += ["--diode-root", str(sample / "diode.tar"), "--no-kitti-kb-crop"]
    capsys.readouterr()
    models = [str(tiny["trained"]), str(tiny["untrained"])]
    out = tmp_path / "out"
    assert run([*models, "--benchmark", "all", *roots], out) == 0
    printed = capsys.readouterr().out.splitlines()
    rows, csv_rows = read_results(out)
    benchmarks = ["nyu", "kitti", "eth3d", "scannet", "diode"]
    assert [(r["model"], r["benchmark"]) for r in rows] == [(m, b) for m in models for b in benchmarks]
    assert [r["num_images"] for r in rows[:5]] == [2, 2, 2, 2, 2]
    expected = _hand_ranks(rows, benchmarks)
    assert sum(expected.values()) == pytest.approx(3.0)  # ranks 1 and 2 in every cell
    for row, csv_row in zip(rows, csv_rows, strict=True):
        assert row["avg_rank"] == pytest.approx(expected[row["model"]])
        assert float(csv_row["avg_rank"]) == pytest.approx(row["avg_rank"])
    # The Table-1 block: title, benchmark titles, metric names, rule, one row per model.
    start = next(i for i, line in enumerate(printed) if line.startswith("Table 1"))
    assert printed[start + 1].split() == ["NYUv2", "KITTI", "ETH3D", "ScanNet", "DIODE"]
    assert printed[start + 2].split() == ["model", *["AbsRel", "δ1"] * 5, "avg", "rank"]
    assert set(printed[start + 3].replace(" ", "")) == {"-"}
    for offset, model in enumerate(models):
        cells = printed[start + 4 + offset].split()
        mine = {r["benchmark"]: r for r in rows if r["model"] == model}
        numbers = [f"{100 * mine[b][k]:.1f}" for b in benchmarks for k in ("abs_rel", "delta1")]
        assert cells == [model, *numbers, f"{expected[model]:.2f}"]


def test_eth3d_and_diode_use_marigold_processing_resolutions(
    tiny: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from d3epth.cli import evaluate as cli
    from d3epth.inference.predictor import DepthPredictor

    seen: list[int | None] = []
    original = DepthPredictor.predict

    def spy(self, image, processing_resolution=None):
        seen.append(processing_resolution)
        return original(self, image, processing_resolution=0)  # keep the test fast

    monkeypatch.setattr(DepthPredictor, "predict", spy)
    write_eth3d(tmp_path / "eth3d", n=1)
    write_diode(tmp_path / "diode", n=1)
    args = ["--benchmark", "eth3d", "diode", "nyu", "--eth3d-root", str(tmp_path / "eth3d")]
    args += ["--diode-root", str(tmp_path / "diode"), "--nyu-root", str(tiny["nyu"])]
    assert cli.main([str(tiny["untrained"]), *args, "--device", "cpu", "--out", str(tmp_path / "o")]) == 0
    assert seen == [756, 640, 0, 0, 0]  # nyu: native, as Marigold's scripts (not a diffusers directory's 768)
    seen.clear()
    assert cli.main([str(tiny["untrained"]), *args, "--processing-resolution", "0", "--out", str(tmp_path / "p")]) == 0
    assert seen == [0, 0, 0, 0, 0]
    # A config's test sets take the preset of their name; a set named like no benchmark, the model's default.
    config = tmp_path / "sets.yaml"
    reader = "d3epth.data.{}, init_args: {{root: '{}', split: test}}}}"
    config.write_text(
        "data:\n  class_path: d3epth.data.DepthDataModule\n  init_args:\n    test:\n"
        f"      eth3d: {{class_path: {reader.format('ETH3DDataset', tmp_path / 'eth3d')}\n"
        f"      my_rooms: {{class_path: {reader.format('NYUv2Dataset', tiny['nyu'])}\n"
    )
    seen.clear()
    assert cli.main([str(tiny["untrained"]), "--config", str(config), "--out", str(tmp_path / "c")]) == 0
    assert seen == [756, None, None, None]


def test_precision_is_recorded_and_bf16_stays_close_to_fp32(tiny: dict[str, Path], tmp_path: Path) -> None:
    """fp32 is the default (published numbers do not depend on the CPU); bf16 moves AbsRel only slightly."""
    rows = {}
    for precision in (None, "bf16"):
        out = tmp_path / str(precision)
        extra = ["--precision", precision] if precision else []
        assert run([str(tiny["trained"]), "--benchmark", "nyu", "--nyu-root", str(tiny["nyu"]), *extra], out) == 0
        rows[precision] = read_results(out)[0][0]
    assert rows[None]["precision"] == "fp32" and rows["bf16"]["precision"] == "bf16"
    assert rows["bf16"]["abs_rel"] == pytest.approx(rows[None]["abs_rel"], abs=0.01)
