"""The fast path for the training loader's most common file: an 8-bit RGB PNG, decoded by libpng through torchvision.

:func:`~d3epth.data.base.read_rgb` sends such files here and every other image (palette, grey, alpha, 16-bit PNGs,
JPEG, ...) to PIL; both give the same pixels for an RGB PNG (``tests/data/test_readers.py``).
"""

from __future__ import annotations

import re

import numpy as np
import torch

from d3epth.data.storage import DataPath

#: The first bytes of every PNG file.
PNG_SIGNATURE: bytes = b"\x89PNG\r\n\x1a\n"


def is_png_rgb8(data: bytes) -> bool:
    """Whether a file's bytes are an 8-bit truecolour PNG: signature, then IHDR with bit depth 8 and colour type 2."""
    # IHDR: length (4), type (4), width (4), height (4), bit depth (1), colour type (1; 2 = truecolour).
    return data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR" and data[24:26] == b"\x08\x02"


def decode_png_rgb8(data: bytes, path: DataPath) -> np.ndarray:
    """The bytes of an 8-bit RGB PNG (``path``, for errors) decoded by libpng through torchvision, uint8 [H,W,3].

    The RGB decode is the training loader's largest stage (``benchmarks/data_throughput.py --decode-cost``);
    torchvision's takes 0.7-0.8 of PIL's time at 768x1024 and gives the same pixels (tested). Other PNG kinds
    (palette, grey, alpha, 16-bit) and other formats keep PIL's decoding and conversions.
    """
    from torchvision.io import ImageReadMode, decode_png  # torchvision's image ops load on first use

    try:
        chw = decode_png(torch.frombuffer(bytearray(data), dtype=torch.uint8), ImageReadMode.RGB)
    except RuntimeError as err:  # torchvision prefixes its C++ source location: keep only the reason
        reason = re.sub(r"^.*\.cpp:\d+, ", "", str(err).strip().splitlines()[-1])
        raise ValueError(f"{path}: unreadable or corrupt image ({reason})") from err
    return np.ascontiguousarray(chw.permute(1, 2, 0).numpy())
