"""The IDX file format of (Fashion-)MNIST, read and written with every field checked.

An IDX file is a big-endian header -- two zero bytes, a type code, the number of dimensions ``d`` -- then
``d`` 32-bit sizes, then the values in C order. Files may be gzip-compressed (``*.gz``). A truncated, padded or
mislabelled file raises :class:`DataError` naming the file and what is wrong, so a bad download is caught at
load time rather than deep inside training.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from visionattn.errors import UsageError

__all__ = ["DataError", "read_idx", "write_idx", "IDX_DTYPES"]

# type code -> numpy dtype (big-endian where it matters), from the format's description on LeCun's MNIST page
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class DataError(UsageError):
    """A data file or folder that cannot be used as it is; the message names the file and the problem."""


def _read_bytes(path: Path) -> bytes:
    if path.exists() and not path.is_file():
        raise DataError(f"{path}: a folder, needed an IDX file")
    if not path.is_file():
        raise FileNotFoundError(f"IDX file {path} does not exist")
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (EOFError, OSError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: cannot decompress ({type(err).__name__}: {err}); the file is truncated or "
                        "is not gzip data -- delete it and install or download it again") from None


def read_idx(
    path: str | os.PathLike, expect_ndim: int | None = None, dtype_code: int | None = 0x08
) -> np.ndarray:
    """Read one IDX file (plain or ``.gz``) into a numpy array of its declared shape.

    Args:
        path: the file.
        expect_ndim: number of dimensions the header must declare (1 for labels, 3 for images); ``None``: any.
        dtype_code: type code the header must declare (0x08 = unsigned byte); ``None``: any known code.

    Raises:
        DataError: bad magic number, unexpected type or rank, or a data length that does not match the header.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise DataError(f"{path}: {len(raw)} bytes, too short for an IDX header (needs at least 4)")
    zero, code, ndim = struct.unpack(">HBB", raw[:4])
    magic = raw[:4].hex()
    if zero != 0 or code not in IDX_DTYPES:
        raise DataError(f"{path}: bad magic number 0x{magic}; an IDX file starts with 0x0000, a type code in "
                        f"{[hex(c) for c in IDX_DTYPES]} and the number of dimensions")
    if dtype_code is not None and code != dtype_code:
        raise DataError(f"{path}: type code {code:#04x} in magic 0x{magic}, needed {dtype_code:#04x}")
    if expect_ndim is not None and ndim != expect_ndim:
        raise DataError(f"{path}: magic 0x{magic} declares {ndim} dimensions, needed {expect_ndim}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated header ({len(raw)} bytes, needed {header} for {ndim} dimensions)")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = IDX_DTYPES[code]
    needed = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    got = len(raw) - header
    if got != needed:
        what = "truncated" if got < needed else "longer than its header says"
        raise DataError(f"{path}: {what}: header declares shape {tuple(shape)} ({needed} data bytes), "
                        f"the file holds {got}")
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write ``array`` as an IDX file, gzip-compressed when ``path`` ends in ``.gz``; inverse of read_idx."""
    path = Path(path)
    array = np.ascontiguousarray(array)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in IDX_DTYPES.items()}
    code = codes.get(array.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(f"array: dtype {array.dtype} has no IDX type code; needed one of "
                         f"{sorted(str(v) for v in codes)}")
    body = struct.pack(">HBB", 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    body += array.astype(IDX_DTYPES[code], copy=False).tobytes()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(body)
    return path
