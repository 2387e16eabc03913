"""Dataset roots that are ``.tar`` archives: the same samples as the folder, DataLoader workers, errors."""

from __future__ import annotations

import gzip
import pickle
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from d3epth.data import (
    DIODEDataset,
    ETH3DDataset,
    HypersimDataset,
    KITTIDataset,
    NYUv2Dataset,
    ScanNetDataset,
    VirtualKITTI2Dataset,
    collate_samples,
    data_root,
)
from d3epth.data.storage import ArchivePath, write_tar
from d3epth.errors import DataError, MissingFileError
from tests.helpers.data import write_hypersim, write_kitti, write_nyu, write_vkitti2
from tests.helpers.eval_data import write_diode, write_eth3d, write_scannet

#: name -> (writer of the folder, reader built on a root).
READERS: dict[str, tuple[Callable[[Path], object], Callable[[Path], object]]] = {
    "hypersim": (lambda r: write_hypersim(r, {"train": 2}), lambda r: HypersimDataset(r, split="train")),
    "vkitti2": (
        lambda r: write_vkitti2(r, variations=("clone",)),
        lambda r: VirtualKITTI2Dataset(r, split="train", kb_crop=False),
    ),
    "vkitti2-scan": (  # no list file: the folder scan (glob) and intrinsic.txt files go through the archive
        lambda r: write_vkitti2(r, variations=("clone",), list_file=False),
        lambda r: VirtualKITTI2Dataset(r, split="train", kb_crop=False),
    ),
    "nyu": (lambda r: write_nyu(r, n=2), lambda r: NYUv2Dataset(r, load_filled=True)),
    "kitti": (lambda r: write_kitti(r, n=2), lambda r: KITTIDataset(r, kb_crop=False)),
    "eth3d": (lambda r: write_eth3d(r, n=2), ETH3DDataset),
    "scannet": (lambda r: write_scannet(r, n=2), ScanNetDataset),
    "diode": (lambda r: write_diode(r, n=2), DIODEDataset),
}


def assert_same_samples(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


@pytest.mark.parametrize("prefix", [".", "top"], ids=["dot-names", "one-top-folder"])
@pytest.mark.parametrize("name", list(READERS))
def test_tar_reads_the_same_samples_as_the_folder(tmp_path: Path, name: str, prefix: str) -> None:
    write, build = READERS[name]
    write(tmp_path / name)
    archive = write_tar(tmp_path / name, tmp_path / f"{name}.tar", prefix=prefix)
    folder_ds, tar_ds = build(tmp_path / name), build(archive)
    assert str(tar_ds.root).startswith(str(archive)) and len(tar_ds) == len(folder_ds) > 0
    for i in range(len(folder_ds)):
        assert_same_samples(folder_ds[i], tar_ds[i])
    assert tar_ds.check_files() == []


def test_tar_with_two_dataloader_workers(tmp_path: Path) -> None:
    write_eth3d(tmp_path / "eth3d", n=4)
    archive = write_tar(tmp_path / "eth3d", tmp_path / "eth3d.tar")
    dataset = ETH3DDataset(archive)
    dataset[0]  # the parent process opens its handle first: workers must re-open theirs after the fork
    loader = DataLoader(dataset, batch_size=1, num_workers=2, collate_fn=collate_samples)
    paths = []
    for i, batch in enumerate(loader):
        expected = ETH3DDataset(tmp_path / "eth3d")[i]
        assert torch.equal(batch["depth"][0], expected["depth"]) and torch.equal(batch["image"][0], expected["image"])
        paths += batch["path"]
    assert paths == [entry["rel"] for entry in dataset.entries]


def test_missing_member_is_named_like_a_missing_file(tmp_path: Path) -> None:
    written = write_scannet(tmp_path / "scannet", n=2)
    (tmp_path / "scannet" / written[1].depth_rel).unlink()
    archive = write_tar(tmp_path / "scannet", tmp_path / "scannet.tar")
    with pytest.raises(FileNotFoundError, match=rf"{archive}:{written[1].depth_rel} \(listed at "):
        ScanNetDataset(archive)
    dataset = ScanNetDataset(archive, check="none")
    with pytest.raises(FileNotFoundError, match=rf"^{archive}:{written[1].depth_rel}: file not found$"):
        dataset[1]
    with pytest.raises(MissingFileError, match=rf"^{archive}:nowhere/x\.png: file not found$"):
        (data_root(archive) / "nowhere" / "x.png").read_bytes()


def test_missing_split_list_inside_the_archive(tmp_path: Path) -> None:
    write_diode(tmp_path / "diode", n=1)
    (tmp_path / "diode" / "diode_val_all_filename_list.txt").unlink()
    archive = write_tar(tmp_path / "diode", tmp_path / "diode.tar")
    with pytest.raises(FileNotFoundError, match=rf"split file {archive}:diode_val_all_filename_list\.txt not found"):
        DIODEDataset(archive)


def test_compressed_or_foreign_file_root_refused(tmp_path: Path) -> None:
    write_scannet(tmp_path / "scannet", n=1)
    plain = write_tar(tmp_path / "scannet", tmp_path / "scannet.tar")
    gz = tmp_path / "scannet.tar.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    assert tarfile.is_tarfile(gz)
    with pytest.raises(DataError, match=r"scannet\.tar\.gz: dataset root is a compressed tar; .*tar -cf"):
        ScanNetDataset(gz)
    other = tmp_path / "notes.txt"
    other.write_text("not an archive")
    with pytest.raises(DataError, match=r"notes\.txt: dataset root is not a tar archive"):
        ScanNetDataset(other)
    with pytest.raises(FileNotFoundError, match=r"ScanNetDataset: root folder .*nowhere does not exist"):
        ScanNetDataset(tmp_path / "nowhere")


def test_archive_handle_is_per_process_and_not_pickled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written = write_scannet(tmp_path / "scannet", n=1)
    root = data_root(write_tar(tmp_path / "scannet", tmp_path / "scannet.tar"))
    member = root / written[0].depth_rel
    data = member.read_bytes()
    archive = root.archive
    first = archive._handle
    monkeypatch.setattr("os.getpid", lambda: -1)  # as seen from a forked DataLoader worker
    assert member.read_bytes() == data
    assert archive._handle is not first and archive._pid == -1 and not first.closed
    clone = pickle.loads(pickle.dumps(archive))  # a spawned worker gets the index, not the handle
    assert clone._handle is None and clone.files == archive.files
    assert ArchivePath(clone, written[0].depth_rel).read_bytes() == data
