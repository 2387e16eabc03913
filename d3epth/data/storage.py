"""Where dataset files live: a folder or an uncompressed ``.tar`` archive read member by member, behind one path type.

Marigold ships its evaluation sets (and suggests packing training sets) as tar archives: ``nyu_labeled_extracted.tar``,
``kitti_eigen_split_test.tar``, ``eth3d.tar``, ``scannet_val_sampled_800_1.tar``, ``diode_val.tar``, Hypersim's
``hypersim_processed_{train,val}.tar`` and ``vkitti.tar`` (Marigold README, "Evaluation" and "Training";
``src/dataset/base_depth_dataset.py`` reads members ``"./" + rel_path``). :func:`data_root` turns a dataset root into
a path object the readers use for every access: a :class:`pathlib.Path` for a folder, an :class:`ArchivePath` for a
tar. ``ArchivePath`` offers the subset of ``pathlib`` the readers need (``/``, ``exists``, ``is_file``, ``is_dir``,
``read_bytes``, ``read_text``, ``open``, ``iterdir``, ``glob``, ``relative_to``, ``name``, ``suffix``), so a reader
is written once for both.

The archive is indexed once (member name -> data offset and size, from the tar headers) and never extracted; each
process opens its own file handle on first read and re-opens after a fork (the handle is keyed by the process id),
so DataLoader workers never share a file offset, and a pickled archive (spawned workers) carries only the index.
Member names are normalised (a leading ``./`` dropped, as ``tar -cf x.tar .`` writes them); when every member lies
under one top-level folder (``eth3d/rgb/...``), paths are also found without that prefix. A missing member is
reported like a missing file: ``<archive>:<member>: file not found``.
"""

from __future__ import annotations

import fnmatch
import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Union

from d3epth.errors import DataError, MissingFileError

__all__ = ["ArchivePath", "DataPath", "TarArchive", "data_root", "is_tar_archive", "write_tar"]


class TarArchive:
    """The member index of one uncompressed tar file and a per-process handle to read members from it.

    Args:
        path: the ``.tar`` file.

    Raises:
        DataError: the file is not a tar archive, or is compressed (members cannot be read without decompressing
            everything before them; repack it with ``tar -cf``).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        #: member name (normalised) -> (offset of its data, size in bytes); regular files only.
        self.files: dict[str, tuple[int, int]] = {}
        #: folder name -> names of its direct children (files and folders); "" is the top level.
        self.children: dict[str, set[str]] = {"": set()}
        try:
            handle = tarfile.open(self.path, mode="r:")  # "r:" refuses compressed archives
        except tarfile.ReadError as err:
            kind = "a compressed tar" if tarfile.is_tarfile(self.path) else "not a tar archive"
            raise DataError(
                f"{self.path}: dataset root is {kind}; give a folder or an uncompressed .tar (tar -cf)"
            ) from err
        with handle:
            for member in handle:
                name = _normalise(member.name)
                if not name:
                    continue
                if member.isreg():
                    self.files[name] = (member.offset_data, member.size)
                    self._add_parents(name)
                elif member.isdir():
                    self._add_parents(name)
                    self.children.setdefault(name, set())
        tops = self.children[""]
        self.prefix = next(iter(tops)) if len(tops) == 1 and next(iter(tops)) not in self.files else ""
        self._handle: IO[bytes] | None = None
        self._pid: int | None = None

    def _add_parents(self, name: str) -> None:
        parts = name.split("/")
        for depth in range(len(parts)):
            parent, child = "/".join(parts[:depth]), parts[depth]
            self.children.setdefault(parent, set()).add(child)

    def resolve(self, name: str) -> str:
        """The stored member name for ``name``: itself, or under the single top-level folder when that exists."""
        name = _normalise(name)
        if self.prefix and name not in self.files and name not in self.children:
            prefixed = f"{self.prefix}/{name}" if name else self.prefix
            if prefixed in self.files or prefixed in self.children:
                return prefixed
        return name

    def _file(self) -> IO[bytes]:
        pid = os.getpid()
        if self._handle is None or self._pid != pid:  # first use in this process, or inherited through a fork
            self._handle = open(self.path, "rb")  # kept open for the life of the process
            self._pid = pid
        return self._handle

    def read_bytes(self, name: str) -> bytes:
        """The bytes of member ``name``.

        Raises:
            MissingFileError: no such member (``<archive>:<name>: file not found``).
            DataError: the archive is shorter than its index says (truncated since it was indexed).
        """
        member = self.resolve(name)
        if member not in self.files:
            raise MissingFileError(f"{self.path}:{_normalise(name)}: file not found")
        offset, size = self.files[member]
        handle = self._file()
        handle.seek(offset)
        data = handle.read(size)
        if len(data) != size:
            raise DataError(f"{self.path}:{member}: archive truncated ({len(data)} of {size} bytes); re-copy it")
        return data

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handle"], state["_pid"] = None, None  # file handles do not pickle; each process opens its own
        return state

    def __repr__(self) -> str:
        return f"TarArchive({str(self.path)!r}, files={len(self.files)}, prefix={self.prefix!r})"


def _normalise(name: str) -> str:
    """Member name without ``./`` segments, leading or trailing slashes."""
    parts = [p for p in str(name).replace("\\", "/").split("/") if p not in ("", ".")]
    return "/".join(parts)


class ArchivePath:
    """A file or folder inside a :class:`TarArchive`, with the ``pathlib.Path`` methods the readers use.

    ``str()`` gives ``<archive>:<member>``, the form every error message names.
    """

    def __init__(self, archive: TarArchive, member: str = "") -> None:
        self.archive = archive
        self.member = _normalise(member)

    # -- path algebra
    def __truediv__(self, other: str | os.PathLike[str]) -> ArchivePath:
        return ArchivePath(self.archive, f"{self.member}/{os.fspath(other)}" if self.member else os.fspath(other))

    @property
    def name(self) -> str:
        """Last path component."""
        return PurePosixPath(self.member).name

    @property
    def suffix(self) -> str:
        """File extension of the last component, with its dot."""
        return PurePosixPath(self.member).suffix

    @property
    def stem(self) -> str:
        """Last component without its extension."""
        return PurePosixPath(self.member).stem

    @property
    def parent(self) -> ArchivePath:
        """The containing folder (the archive top for a top-level member)."""
        parent = PurePosixPath(self.member).parent.as_posix()
        return ArchivePath(self.archive, "" if parent == "." else parent)

    def relative_to(self, other: ArchivePath) -> PurePosixPath:
        """This member's path relative to ``other`` (a folder of the same archive)."""
        if other.archive is not self.archive:
            raise ValueError(f"{self} is not in the archive of {other}")
        return PurePosixPath(self.member).relative_to(other.member or ".")

    def as_posix(self) -> str:
        """The member name, ``/``-separated."""
        return self.member

    # -- queries
    def is_file(self) -> bool:
        """Whether a regular file of this name is in the archive."""
        return self.archive.resolve(self.member) in self.archive.files

    def is_dir(self) -> bool:
        """Whether this name is a folder in the archive (explicit or implied by its members)."""
        return self.archive.resolve(self.member) in self.archive.children

    def exists(self) -> bool:
        """A file or a folder of this name is in the archive."""
        return self.is_file() or self.is_dir()

    def iterdir(self) -> Iterator[ArchivePath]:
        """Children of this folder, sorted by name (nothing for a file or a missing folder)."""
        for child in sorted(self.archive.children.get(self.archive.resolve(self.member), ())):
            yield self / child

    def glob(self, pattern: str) -> Iterator[ArchivePath]:
        """Direct children matching ``pattern`` (one path component, ``fnmatch`` rules), sorted."""
        if "/" in pattern:
            raise ValueError(f"ArchivePath.glob supports one path component, got {pattern!r}")
        return (child for child in self.iterdir() if fnmatch.fnmatchcase(child.name, pattern))

    # -- reading
    def read_bytes(self) -> bytes:
        """The member's bytes (raises ``<archive>:<member>: file not found`` when it is missing)."""
        return self.archive.read_bytes(self.member)

    def read_text(self, encoding: str = "utf-8") -> str:
        """The member decoded as text."""
        return self.read_bytes().decode(encoding)

    def open(self, mode: str = "rb") -> IO:
        """An in-memory file of the member (``"rb"`` or ``"r"``)."""
        if mode not in ("rb", "r"):
            raise ValueError(f"{self}: archive members are read-only, got mode {mode!r}")
        data = io.BytesIO(self.read_bytes())
        return data if mode == "rb" else io.TextIOWrapper(data, encoding="utf-8")

    # -- identity
    def __str__(self) -> str:
        return f"{self.archive.path}:{self.member}"

    def __repr__(self) -> str:
        return f"ArchivePath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ArchivePath) and (other.archive.path, other.member) == (self.archive.path, self.member)

    def __hash__(self) -> int:
        return hash((self.archive.path, self.member))

    def __lt__(self, other: ArchivePath) -> bool:
        return (str(self.archive.path), self.member) < (str(other.archive.path), other.member)


#: A path the readers accept: a filesystem path or a member of an archive.
DataPath = Union[Path, ArchivePath]  # noqa: UP007 -- a runtime alias (isinstance-free), kept readable

#: Archives indexed in this process, by (resolved path, size, mtime): datasets on the same tar share one index.
_INDEXED: dict[tuple[str, int, int], TarArchive] = {}


def is_tar_archive(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a file that ``tarfile`` recognises as an archive (compressed or not)."""
    path = Path(path)
    return path.is_file() and tarfile.is_tarfile(path)


def data_root(root: str | os.PathLike[str] | ArchivePath, what: str = "dataset") -> DataPath:
    """The dataset root ``root`` as a path object: the folder itself, or the top of the ``.tar`` archive.

    Args:
        root: a folder, a tar file, or an :class:`ArchivePath` (returned as is).
        what: the reader's name, for the error message.

    Raises:
        MissingFileError: ``root`` does not exist.
        DataError: ``root`` is a file but not an uncompressed tar archive.
    """
    if isinstance(root, ArchivePath):
        return root
    path = Path(root).expanduser()
    if path.is_dir():
        return path
    if not path.exists():
        raise MissingFileError(
            f"{what}: root folder {path} does not exist (expected the {what} data root: a folder or a .tar archive)"
        )
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _INDEXED:
        _INDEXED[key] = TarArchive(path)
    return ArchivePath(_INDEXED[key])


def write_tar(folder: str | os.PathLike[str], archive: str | os.PathLike[str], prefix: str = ".") -> Path:
    """Pack ``folder`` into an uncompressed tar whose members are ``<prefix>/<relative path>``, sorted.

    ``prefix="."`` gives Marigold's ``tar -cf x.tar .`` naming (``./test/...``); a folder name gives archives with one
    top-level folder. Returns the archive path.
    """
    folder, archive = Path(folder), Path(archive)
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                tar.add(path, arcname=f"{prefix}/{path.relative_to(folder).as_posix()}", recursive=False)
    return archive
