"""Reader for the IDX format of (Fashion-)MNIST, validating everything the header promises.

Layout (LeCun et al.): 2 zero bytes, a type byte (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
0x0E float64), a byte ``ndim``, then ``ndim`` big-endian uint32 sizes, then ``prod(sizes)`` big-endian items in
C order. Image files are uint8 with ndim 3 (magic 0x00000803 = 2051, shape (N, rows, cols)); label files uint8
with ndim 1 (magic 0x00000801 = 2049). Files may be gzip-compressed (``.gz``).
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from .core import DataError

IDX_TYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
             0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | Path, *, ndim: int | None = None, type_code: int | None = None) -> torch.Tensor:
    """The array stored in IDX file ``path`` as a tensor (native byte order).

    ``ndim`` / ``type_code``, when given, are required of the header (a mismatch means a wrong or swapped file).
    Raises :class:`DataError` naming the file for an unreadable gzip stream, a wrong magic number or a payload
    whose size does not match the header (truncated or with trailing bytes).
    """
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: cannot read ({err}); the file is corrupt or truncated, replace it") from err
    if len(raw) < 4:
        raise DataError(f"{path}: {len(raw)} bytes is too short for an IDX header; the file is truncated")
    zero, code, dims = struct.unpack(">HBB", raw[:4])
    magic = int.from_bytes(raw[:4], "big")
    if ndim is not None and type_code is not None:
        expected = f"0x{type_code << 8 | ndim:08X}"
    else:
        expected = "0x0000TTDD, TT a type byte in " + ", ".join(f"0x{t:02X}" for t in IDX_TYPES)
    if zero != 0 or code not in IDX_TYPES:
        raise DataError(f"{path}: wrong magic number 0x{magic:08X} (expected {expected}); not an IDX file")
    if (ndim is not None and dims != ndim) or (type_code is not None and code != type_code):
        raise DataError(f"{path}: wrong magic number 0x{magic:08X} (expected {expected}); "
                        "is it the images file swapped with the labels file?")
    header = 4 + 4 * dims
    if len(raw) < header:
        raise DataError(f"{path}: header promises {dims} dimensions but the file ends at byte {len(raw)}; truncated")
    shape = struct.unpack(f">{dims}I", raw[4:header])
    dtype = IDX_TYPES[code]
    expected_bytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected_bytes:
        kind = "truncated" if len(raw) - header < expected_bytes else "has trailing bytes"
        raise DataError(f"{path}: header says shape {tuple(shape)} = {expected_bytes} data bytes but the file has "
                        f"{len(raw) - header}; the file {kind}, replace it")
    arr = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return torch.from_numpy(arr.astype(dtype.newbyteorder("="), copy=True))
