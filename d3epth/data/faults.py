"""Bad training data, found early and named: unusable sets refused at setup, bad files named or skipped in training.

* :func:`probe_valid_depth` — at ``setup("fit")`` the datamodule refuses a training set in which not one probed sample
  has a valid depth pixel (a wrong ``min_depth``/``max_depth``, a depth scale off by 1000, an unlabeled folder).
  The probe reads at most :data:`PROBE_SAMPLES` samples spread evenly over the set (the whole set when it is that
  small): a full pass over Hypersim's 54 k samples would cost minutes at every start, and a set whose evenly spaced
  samples are all empty is broken as a whole. Sparse empties that the probe misses are caught at run time: a batch
  without a valid pixel gives a zero masked loss and is counted (``train/empty_batches``,
  :mod:`d3epth.tasks.guard`).
* :class:`CheckedDataset` — wraps each training set: an unreadable or corrupt file, or NaN/Inf in a sample, raises a
  one-line :class:`~d3epth.errors.DataError` naming the set and the file; with ``skip_bad_samples`` the sample is
  replaced by the next good one of the same set (same size, so the batch still stacks), a warning names the file, and
  the sample carries ``skipped_samples`` (files skipped to produce it) for the task to log as
  ``train/skipped_samples``.
"""

from __future__ import annotations

import logging

import torch
from torch.utils.data import Dataset

from d3epth.data.sample import Sample
from d3epth.errors import DataError

__all__ = ["MAX_SKIPPED_IN_A_ROW", "PROBE_SAMPLES", "CheckedDataset", "nonfinite_keys", "probe_valid_depth"]

logger = logging.getLogger(__name__)

#: Samples read per training set by :func:`probe_valid_depth`.
PROBE_SAMPLES = 16
#: Bad samples in a row after which ``skip_bad_samples`` gives up (the set is broken, not a few of its files).
MAX_SKIPPED_IN_A_ROW = 32


def nonfinite_keys(sample: Sample) -> list[str]:
    """Keys of the floating-point tensors of ``sample`` that hold NaN or Inf."""
    return [
        key
        for key, value in sample.items()
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all())
    ]


class CheckedDataset(Dataset):
    """A training set whose bad samples fail with a :class:`DataError` naming the set and the file, or are skipped.

    Args:
        dataset: the training set (possibly wrapped in an augmentation).
        name: the set's name in the datamodule.
        skip_bad_samples: replace a bad sample by the next good one of the set instead of failing; every sample then
            carries ``skipped_samples`` (int: bad samples skipped to produce it).
    """

    def __init__(self, dataset: Dataset, name: str, skip_bad_samples: bool = False) -> None:
        self.dataset = dataset
        self.name = name
        self.skip_bad_samples = bool(skip_bad_samples)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def _read(self, index: int) -> Sample:
        try:
            sample = self.dataset[index]
        except DataError as err:  # already names the file
            raise DataError(f"training set {self.name!r}: {err}") from err
        except (OSError, ValueError) as err:  # the readers name the file in their message
            raise DataError(f"training set {self.name!r}, sample {index}: {err}") from err
        bad = nonfinite_keys(sample)
        if bad:
            raise DataError(
                f"training set {self.name!r}: {sample.get('path', f'sample {index}')}: {bad} hold NaN or Inf"
            )
        return sample

    def __getitem__(self, index: int) -> Sample:
        if not self.skip_bad_samples:
            try:
                return self._read(index)
            except DataError as err:
                raise DataError(f"{err}; set data.init_args.skip_bad_samples: true to skip such files") from err
        n = len(self)
        for skipped in range(min(n, MAX_SKIPPED_IN_A_ROW)):
            try:
                sample = self._read((index + skipped) % n)
            except DataError as err:
                logger.warning("skipping a bad training sample: %s", err)
                last = err
                continue
            return {**sample, "skipped_samples": skipped}
        raise DataError(
            f"training set {self.name!r}: {min(n, MAX_SKIPPED_IN_A_ROW)} samples in a row from index {index} are bad "
            f"(the last: {last}); fix the set rather than skipping it"
        )


def probe_valid_depth(dataset: CheckedDataset) -> None:
    """Refuse a training set without a valid depth pixel in any of :data:`PROBE_SAMPLES` evenly spaced samples.

    Samples without ``valid_mask`` (a source that is not depth-labelled) are not probed.

    Raises:
        DataError: one line naming the set, what was probed and the settings to check; or a bad file's error.
    """
    n = len(dataset)
    count = min(n, PROBE_SAMPLES)
    indices = sorted({i * n // count for i in range(count)})
    for index in indices:
        mask = dataset[index].get("valid_mask")
        if mask is None or bool(mask.any()):
            return
    inner = getattr(dataset.dataset, "dataset", dataset.dataset)  # below an augmentation wrapper, if any
    depth_range = ""
    if hasattr(inner, "min_depth") and hasattr(inner, "max_depth"):
        depth_range = f" in ({inner.min_depth}, {inner.max_depth}) m"
    raise DataError(
        f"training set {dataset.name!r}: not one valid depth pixel{depth_range} in the "
        f"{'whole set' if count == n else f'{count} samples probed (of {n})'}; check its depth files, depth scale "
        "and min_depth/max_depth"
    )
