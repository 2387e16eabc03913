"""Shared reader logic for the depth datasets: split lists, checked image decoding, valid masks, the sample dict.

Every dataset in this package is a :class:`BaseDepthDataset`. A sample is produced in three phases:

1. :meth:`~BaseDepthDataset.load` reads the files listed for ``index``: the RGB (8-bit, to [-1, 1]) and the raw
   depth in metres (the dataset's encoding divided by its scale; *invalid values are kept*, e.g. Virtual KITTI sky at
   655.35 m), computes ``valid_mask`` (``min_depth < d < max_depth``, strict, plus the dataset's own invalid rule),
   and applies the dataset's deterministic geometry (KB crop, evaluation crop mask, resize).
2. Optional transforms: the dataset's own ``transforms`` then, for training sets, the datamodule's augmentation.
3. :meth:`~BaseDepthDataset.finalize` computes ``depth_norm`` from the transformed depth (2 %/98 % quantiles over
   valid pixels; invalid pixels normalised too, so holes -> -1 and sky -> +1 as in Marigold) and zeroes ``depth``
   where the mask is False.

**Samples without valid pixels** do not raise: their ``valid_mask`` is all False and ``depth_norm`` all zeros, so
masked losses and metrics must skip them (a per-image mean over zero pixels). :meth:`check_files` lists such files
with ``include_empty=True`` if you would rather drop them from the list.

Errors are raised at construction for a missing root, a missing or unreadable split file, a list line with the
wrong number of columns (file and line number), listed files that do not exist, and -- for the first sample, or all
of them with ``check="full"`` -- an unreadable/corrupt image, an RGB/depth size mismatch or a depth PNG of the wrong
bit depth. The same per-file errors are raised, naming the file, whenever a sample is read.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

from d3epth.data.png import decode_png_rgb8, is_png_rgb8
from d3epth.data.sample import Sample
from d3epth.data.storage import ArchivePath, DataPath, data_root
from d3epth.data.transforms import Compose, KBCrop, Resize, Transform, normalize_depth
from d3epth.errors import DataError

#: PIL modes of a 16-bit single-channel PNG ("I" is what older Pillow versions report).
UINT16_MODES: frozenset[str] = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
#: PIL modes accepted for an 8-bit colour image (converted to RGB).
RGB_MODES: frozenset[str] = frozenset({"RGB", "RGBA", "RGBX", "L", "P", "CMYK", "YCbCr"})
#: Values of ``check``.
CHECK_LEVELS: tuple[str, ...] = ("none", "quick", "full")
#: At most this many problems are spelled out in one error message.
MAX_REPORTED = 10


def as_data_path(path: str | DataPath) -> DataPath:
    """``path`` as a :data:`~d3epth.data.storage.DataPath` (a plain string is a filesystem path)."""
    return path if isinstance(path, (Path, ArchivePath)) else Path(path)


def _open_checked(path: DataPath) -> Image.Image:
    """Open and fully decode an image (from a folder or an archive), turning every failure into an error naming it."""
    path = as_data_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        img = Image.open(path if isinstance(path, Path) else io.BytesIO(path.read_bytes()))
        img.load()  # decode now: a truncated or corrupt file fails here, not later in a worker
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"{path}: unreadable or corrupt image ({err})") from err
    return img


def read_rgb(path: DataPath) -> np.ndarray:
    """Read an 8-bit colour image as uint8 [H,W,3].

    Raises:
        FileNotFoundError: missing file.
        ValueError: unreadable/corrupt file, or not an 8-bit colour/grey image (e.g. a 16-bit PNG).
    """
    path = as_data_path(path)
    if path.suffix.lower() == ".png" and path.is_file():  # one read serves the header check and the decode
        data = path.read_bytes()
        if is_png_rgb8(data):
            return decode_png_rgb8(data, path)
    img = _open_checked(path)
    if img.mode not in RGB_MODES:
        raise ValueError(f"{path}: RGB image has PIL mode {img.mode!r}; expected an 8-bit RGB image")
    return np.array(img.convert("RGB"))  # a writable copy: torch.from_numpy refuses read-only arrays


def read_uint16_png(path: DataPath) -> np.ndarray:
    """Read a single-channel 16-bit PNG (depth encodings of Hypersim, VKITTI 2, NYUv2, KITTI) as uint16 [H,W].

    Raises:
        FileNotFoundError: missing file.
        ValueError: unreadable/corrupt file, or not a 16-bit single-channel image (e.g. an 8-bit PNG).
    """
    img = _open_checked(path)
    if img.mode not in UINT16_MODES:
        bits = {"L": "8-bit grey", "P": "8-bit palette", "RGB": "8-bit RGB", "RGBA": "8-bit RGBA"}.get(img.mode, "")
        desc = f"{bits} (PIL mode {img.mode!r})" if bits else f"PIL mode {img.mode!r}"
        raise ValueError(f"{path}: depth image is {desc}; expected a 16-bit single-channel (uint16) PNG")
    arr = np.asarray(img)
    if arr.dtype != np.uint16:
        if arr.min(initial=0) < 0 or arr.max(initial=0) > 65535:
            raise ValueError(f"{path}: depth values outside the uint16 range; expected a 16-bit PNG")
        arr = arr.astype(np.uint16)
    return arr


def load_npy(path: DataPath, what: str) -> np.ndarray:
    """Load a ``.npy`` array (never unpickling) from a folder or an archive member, as saved by ``np.save``.

    Raises:
        FileNotFoundError: missing file (``<path>: file not found``).
        DataError: not a readable ``.npy`` file (the message names ``what`` it was read as).
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        return np.load(io.BytesIO(path.read_bytes()), allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise DataError(
            f"{path}: unreadable {what} .npy file ({err}); expected a numpy array saved by np.save"
        ) from err


def image_from_uint8(rgb: np.ndarray) -> Tensor:
    """An 8-bit image uint8 [H,W,3] as the sample's ``image``: float32 [3,H,W] in [-1, 1] (``v / 127.5 - 1``)."""
    return torch.from_numpy(rgb).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


class BaseDepthDataset(Dataset):
    """One split of a depth dataset read from a split list; returns the sample dicts of :mod:`d3epth.data.sample`.

    Subclasses set the class attributes and override the hooks (``_default_split_file``, ``_data_dir``,
    ``_parse_line``, ``_read_pair``, ``_extra_invalid``, ``_read_mask``, ``_intrinsics``, ``_eval_mask``).

    Args:
        root: dataset root: a folder (e.g. ``sample_data/hypersim``) or an uncompressed ``.tar`` of it, read member
            by member (see :mod:`d3epth.data.storage`); every file the reader opens goes through it.
        split: split name (the subclass lists the allowed ones).
        split_file: list file; ``None`` = the dataset's default. Relative paths are taken from the working directory.
        min_depth: valid pixels have ``depth > min_depth`` (metres, strict).
        max_depth: valid pixels have ``depth < max_depth`` (metres, strict).
        resize: ``[height, width]`` to resize to after cropping, or ``None`` (native size).
        kb_crop: apply the KITTI benchmark crop (352x1216, bottom rows, horizontally centred) before resizing.
        image_interpolation: RGB interpolation for ``resize`` (see :class:`~d3epth.data.transforms.Resize`).
        transforms: extra transforms (a callable or a list of callables) applied after the dataset's own geometry,
            before ``depth_norm`` is computed.
        check: ``"none"`` (root and list only), ``"quick"`` (also every listed file exists and the first sample
            decodes), ``"full"`` (also :meth:`check_files` over the whole split).
        name: value of the ``dataset`` key; ``None`` = the class default.
    """

    #: Default value of the ``dataset`` key.
    default_name: ClassVar[str] = "depth"
    #: Column names of one list line.
    columns: ClassVar[tuple[str, ...]] = ("rgb", "depth")
    #: Splits the class knows a default list for.
    splits: ClassVar[tuple[str, ...]] = ("train", "val", "test")
    #: Stored value / depth_scale = metres.
    depth_scale: ClassVar[float] = 1000.0
    #: Whether the samples carry ground truth (``has_depth`` key); unlabeled image sources set False.
    has_depth: ClassVar[bool] = True

    def __init__(
        self,
        root: str | Path,
        split: str,
        split_file: str | Path | None = None,
        min_depth: float = 1e-5,
        max_depth: float = 80.0,
        resize: Sequence[int] | None = None,
        kb_crop: bool = False,
        image_interpolation: str = "bilinear",
        transforms: Transform | Sequence[Transform] | None = None,
        check: str = "quick",
        name: str | None = None,
    ) -> None:
        super().__init__()
        cls = type(self).__name__
        self.root: DataPath = data_root(root, cls)
        if split_file is None and split not in self.splits:
            raise ValueError(f"{cls}: split must be one of {list(self.splits)}, got {split!r}")
        if not (0.0 <= min_depth < max_depth):
            raise ValueError(
                f"{cls}: need 0 <= min_depth < max_depth, got min_depth={min_depth}, max_depth={max_depth}"
            )
        if check not in CHECK_LEVELS:
            raise ValueError(f"{cls}: check must be one of {list(CHECK_LEVELS)}, got {check!r}")
        self.split = split
        self.min_depth = float(min_depth)
        self.max_depth = float(max_depth)
        self.kb_crop = bool(kb_crop)
        self.name = name or self.default_name
        self._kb = KBCrop() if self.kb_crop else None
        self._resize = Resize(resize, image_interpolation=image_interpolation) if resize is not None else None
        self.resize = None if resize is None else list(self._resize.size)  # type: ignore[union-attr]
        if transforms is None or callable(transforms):
            self.transforms: Transform | None = transforms
        else:
            self.transforms = Compose(list(transforms))

        self.split_file: DataPath = as_data_path(split_file) if split_file is not None else self._default_split_file()
        self.data_dir = self._data_dir()
        self.entries: list[dict[str, Any]] = self._read_list()
        if not self.entries:
            raise ValueError(f"{cls}: {self.split_file} lists no samples")
        self._after_list()
        if check != "none":
            self._check_exists()
            self.load(0)
        if check == "full":
            self.check_files()

    # ------------------------------------------------------------------ hooks

    def _default_split_file(self) -> DataPath:
        """The list file used when ``split_file`` is None."""
        raise NotImplementedError

    def _data_dir(self) -> DataPath:
        """Folder the list's paths are relative to."""
        return self.root

    def _parse_line(self, parts: list[str], where: str) -> dict[str, Any] | None:
        """Turn one list line (already split, with the right column count) into an entry; ``None`` drops it."""
        return {col: self.data_dir / part for col, part in zip(self.columns, parts, strict=True)} | {"rel": parts[0]}

    def _after_list(self) -> None:
        """Called once the entries are read (e.g. to load intrinsics files)."""

    def _extra_invalid(self, raw: np.ndarray) -> np.ndarray | None:
        """Dataset-specific invalid pixels from the stored values (bool [H,W]), or None."""
        return None

    def _read_mask(self, entry: dict[str, Any], size: tuple[int, int]) -> np.ndarray | None:
        """A validity mask the dataset ships with each frame (bool [H,W] of ``size``, e.g. DIODE's), or None."""
        return None

    def _intrinsics(self, entry: dict[str, Any], height: int, width: int) -> Tensor | None:
        """Camera matrix [3,3] of the native frame, or None when unknown."""
        return None

    def _eval_mask(self, sample: Sample) -> Sample:
        """Hook to AND an evaluation crop into ``valid_mask`` (after the KB crop, before resizing)."""
        return sample

    # ------------------------------------------------------------------ list handling

    def _read_list(self) -> list[dict[str, Any]]:
        path = self.split_file
        cls = type(self).__name__
        if not path.is_file():
            raise FileNotFoundError(
                f"{cls}: split file {path} not found (expected a list with columns '{' '.join(self.columns)}' per line)"
            )
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"{cls}: cannot read split file {path}: {err}") from err
        entries = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            parts = line.split()
            if not parts or parts[0].startswith("#"):
                continue
            where = f"{path}:{lineno}"
            if len(parts) != len(self.columns):
                raise ValueError(
                    f"{where}: expected {len(self.columns)} columns ({' '.join(self.columns)}), "
                    f"got {len(parts)}: {line.strip()!r}"
                )
            entry = self._parse_line(parts, where)
            if entry is not None:
                entry["where"] = where
                entries.append(entry)
        return entries

    def _file_columns(self) -> list[str]:
        return [c for c in self.columns if c in ("rgb", "depth", "filled", "mask")]

    def _check_exists(self) -> None:
        missing = [
            f"{entry[col]} (listed at {entry['where']})"
            for entry in self.entries
            for col in self._file_columns()
            if not as_data_path(entry[col]).is_file()
        ]
        if missing:
            shown = "; ".join(missing[:MAX_REPORTED])
            more = f" and {len(missing) - MAX_REPORTED} more" if len(missing) > MAX_REPORTED else ""
            raise FileNotFoundError(
                f"{type(self).__name__}: {len(missing)} listed file(s) missing under {self.data_dir}: {shown}{more}"
            )

    # ------------------------------------------------------------------ reading

    def __len__(self) -> int:
        return len(self.entries)

    def _read_pair(self, entry: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        rgb = read_rgb(entry["rgb"])
        raw = read_uint16_png(entry["depth"])
        if rgb.shape[:2] != raw.shape:
            raise ValueError(
                f"{entry['rgb']} is {rgb.shape[0]}x{rgb.shape[1]} but its depth {entry['depth']} is "
                f"{raw.shape[0]}x{raw.shape[1]} (listed at {entry['where']}); RGB and depth must have the same size"
            )
        return rgb, raw

    def depth_from_raw(self, raw: np.ndarray) -> Tensor:
        """Stored uint16 values -> metres, float32 [1,H,W]."""
        return torch.from_numpy(raw.astype(np.float32) / np.float32(self.depth_scale))[None]

    def valid_from_depth(self, depth: Tensor, raw: np.ndarray | None = None) -> Tensor:
        """``min_depth < depth < max_depth`` (strict), minus the dataset's own invalid pixels; bool [1,H,W]."""
        mask = (depth > self.min_depth) & (depth < self.max_depth)
        extra = self._extra_invalid(raw) if raw is not None else None
        if extra is not None:
            mask &= ~torch.from_numpy(extra)[None]
        return mask

    def load(self, index: int) -> Sample:
        """Read sample ``index`` and apply the dataset's own geometry; ``depth`` still holds invalid values.

        Returns:
            ``image`` [3,H,W] in [-1,1], ``depth`` [1,H,W] metres (raw, unmasked), ``valid_mask`` [1,H,W],
            ``dataset``, ``path``, and ``intrinsics`` [3,3] where known.
        """
        entry = self.entries[index]
        rgb, raw = self._read_pair(entry)
        depth = self.depth_from_raw(raw)
        image = image_from_uint8(rgb)
        # 8/16-bit PNGs are always finite, but a reader of float files (EXR, HDF5) must map NaN/Inf to an invalid
        # value itself: past this point an Inf depth would pass as "beyond max_depth" and a NaN would reach depth_norm.
        # An integer RGB is finite by construction, so its scan (~7 ms at 768x1024) is skipped; the depth is always
        # scanned, since a subclass's depth_from_raw may compute it (e.g. an inverse from integers).
        checks = ((depth, "depth"),) if rgb.dtype.kind in "ui" else ((image, "rgb"), (depth, "depth"))
        for tensor, column in checks:
            if not bool(torch.isfinite(tensor).all()):
                raise DataError(f"{entry[column]}: holds NaN or Inf values (listed at {entry['where']})")
        valid = self.valid_from_depth(depth, raw)
        shipped = self._read_mask(entry, raw.shape)
        if shipped is not None:
            valid &= torch.from_numpy(shipped)[None]
        sample: Sample = {
            "image": image.contiguous(),
            "depth": depth,
            "valid_mask": valid,
            "dataset": self.name,
            "path": str(entry["rel"]),
            "has_depth": self.has_depth,
        }
        k = self._intrinsics(entry, rgb.shape[0], rgb.shape[1])
        if k is not None:
            sample["intrinsics"] = k
        sample.update(self._load_extra(entry, rgb.shape[:2]))
        if self._kb is not None:
            if rgb.shape[0] < self._kb.height or rgb.shape[1] < self._kb.width:
                raise ValueError(
                    f"{entry['rgb']}: image is {rgb.shape[0]}x{rgb.shape[1]}, smaller than the KB crop "
                    f"{self._kb.height}x{self._kb.width}; set kb_crop: false for frames smaller than the KITTI "
                    "benchmark size"
                )
            sample = self._kb(sample)
        sample = self._eval_mask(sample)
        if self._resize is not None:
            sample = self._resize(sample)
        return sample

    def _load_extra(self, entry: dict[str, Any], size: tuple[int, int]) -> Sample:
        """Further rasters of a sample (e.g. NYU's filled depth)."""
        return {}

    @staticmethod
    def finalize(sample: Sample) -> Sample:
        """Compute ``depth_norm`` from the (transformed) depth and zero ``depth`` where ``valid_mask`` is False."""
        depth, mask = sample["depth"], sample["valid_mask"]
        out = dict(sample)
        out["depth_norm"] = normalize_depth(depth, mask)
        out["depth"] = torch.where(mask, depth, torch.zeros((), dtype=depth.dtype))
        return out

    def get_sample(self, index: int, augment: Transform | None = None) -> Sample:
        """Load, apply the dataset's transforms, then ``augment`` (training augmentation), then finalise."""
        sample = self.load(index)
        if self.transforms is not None:
            sample = self.transforms(sample)
        if augment is not None:
            sample = augment(sample)
        return self.finalize(sample)

    def __getitem__(self, index: int) -> Sample:
        return self.get_sample(index)

    # ------------------------------------------------------------------ validation

    def check_files(
        self, raise_error: bool = True, include_empty: bool = False, progress: Callable[[int], None] | None = None
    ) -> list[str]:
        """Decode every listed file and report the bad ones.

        Checks that each file exists and decodes, the RGB is 8-bit colour, the depth a 16-bit PNG of the RGB's size,
        the frame fits the KB crop when enabled, and (with ``include_empty``) that some pixel is valid.

        Args:
            raise_error: raise a ``ValueError`` listing the problems instead of only returning them.
            include_empty: also report samples without any valid depth pixel.
            progress: called with each index checked (e.g. a tqdm ``update``).

        Returns:
            One message per bad sample, each naming the file and the problem (empty when all are good).
        """
        problems = []
        for i in range(len(self)):
            try:
                sample = self.load(i)
                if include_empty and not bool(sample["valid_mask"].any()):
                    problems.append(
                        f"{self.entries[i]['depth']}: no valid depth pixel in "
                        f"({self.min_depth}, {self.max_depth}) m (listed at {self.entries[i]['where']})"
                    )
            except (OSError, ValueError) as err:
                problems.append(str(err))
            if progress is not None:
                progress(i)
        if problems and raise_error:
            shown = "\n  ".join(problems[:MAX_REPORTED])
            more = f"\n  ... and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
            raise ValueError(
                f"{type(self).__name__}({self.split_file}): {len(problems)} bad sample(s):\n  {shown}{more}"
            )
        return problems

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, n={len(self)}, "
            f"depth=({self.min_depth}, {self.max_depth}) m, kb_crop={self.kb_crop}, resize={self.resize})"
        )


class BenchmarkDepthDataset(BaseDepthDataset):
    """A zero-shot benchmark reader (ETH3D, ScanNet, DIODE): no KB crop, split and range default to the class's.

    Subclasses set ``default_split`` and ``default_range`` (Marigold's values for the benchmark) and the hooks.

    Args:
        root: the benchmark's root folder or ``.tar``.
        split: split name; ``None`` = ``default_split``.
        split_file: list file; ``None`` = the split's default under ``root``.
        min_depth: valid pixels have ``depth > min_depth`` (m, strict); ``None`` = ``default_range[0]``.
        max_depth: valid pixels have ``depth < max_depth`` (m, strict, may be ``inf``); ``None`` = ``default_range[1]``.
        resize: ``[height, width]`` or ``None`` (native; evaluation runs at native resolution).
        image_interpolation: RGB resize mode.
        transforms, check, name: see :class:`BaseDepthDataset`.
    """

    #: Split used when ``split`` is None.
    default_split: ClassVar[str] = "test"
    #: ``(min_depth, max_depth)`` in metres used when those are None.
    default_range: ClassVar[tuple[float, float]] = (1e-5, 80.0)

    def __init__(
        self,
        root: str | Path,
        split: str | None = None,
        split_file: str | Path | None = None,
        min_depth: float | None = None,
        max_depth: float | None = None,
        resize: Sequence[int] | None = None,
        image_interpolation: str = "bilinear",
        transforms: Transform | Sequence[Transform] | None = None,
        check: str = "quick",
        name: str | None = None,
    ) -> None:
        low, high = self.default_range
        super().__init__(
            root,
            self.default_split if split is None else split,
            split_file=split_file,
            min_depth=low if min_depth is None else min_depth,
            max_depth=high if max_depth is None else max_depth,
            resize=resize,
            kb_crop=False,
            image_interpolation=image_interpolation,
            transforms=transforms,
            check=check,
            name=name,
        )


def pinhole(fx: float, fy: float, cx: float, cy: float) -> Tensor:
    """Camera matrix ``[[fx,0,cx],[0,fy,cy],[0,0,1]]`` as float32 [3,3]."""
    return torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=torch.float32)


def focal_from_fov(width: int, fov_deg: float) -> float:
    """Focal length in pixels of a pinhole camera with horizontal field of view ``fov_deg`` over ``width`` pixels."""
    return width / 2.0 / math.tan(math.radians(fov_deg) / 2.0)
