"""The IDX file format of MNIST and Fashion-MNIST (plain or gzip-compressed).

An IDX file is a 4-byte magic number ``0x00 0x00 TYPE NDIM``, ``NDIM``
big-endian uint32 dimensions, then the data in C order, big-endian.

References
----------
Y. LeCun, C. Cortes and C. J. C. Burges, "The MNIST database of handwritten
digits", http://yann.lecun.com/exdb/mnist/ (section "File formats").
"""
from __future__ import annotations

import gzip
import math
import struct
import zlib

import numpy as np

from ._common import DataError, as_path, read_bytes

__all__ = ["read_idx"]

# IDX type codes -> big-endian dtypes.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def maybe_gunzip(data: bytes, source) -> bytes:
    """Decompress gzip data (recognised by its magic bytes), else return as is."""
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{source}: corrupt or truncated gzip data ({exc})") from exc


def parse_idx(data: bytes, source) -> np.ndarray:
    n = len(data)
    if n < 4:
        raise DataError(f"{source}: truncated IDX file ({n} bytes, the header alone needs 4)")
    if data[0] != 0 or data[1] != 0:
        raise DataError(f"{source}: not an IDX file (bad magic number 0x{data[:4].hex()})")
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise DataError(f"{source}: unknown IDX data type code 0x{code:02x}")
    if ndim == 0:
        raise DataError(f"{source}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if n < header:
        raise DataError(f"{source}: truncated IDX file ({n} bytes, the header needs {header})")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = _IDX_DTYPES[code]
    count = math.prod(dims)
    need = header + count * dtype.itemsize
    if n < need:
        raise DataError(f"{source}: truncated IDX file: {n} bytes, but shape {dims} of {dtype.name} needs {need}")
    if n > need:
        raise DataError(f"{source}: {n - need} unexpected trailing bytes after the IDX data of shape {dims}")
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="))


def read_idx(source):
    """Read an IDX file (the MNIST format), plain or gzip-compressed.

    Parameters
    ----------
    source : str, os.PathLike or bytes
        File path, or the file's content.  Compression is detected from the
        gzip magic bytes, not from the file name.

    Returns
    -------
    numpy.ndarray
        Native byte order, dtype from the header (uint8, int8, int16, int32,
        float32 or float64), shape from the header.

    Raises
    ------
    DataError
        Bad magic number, unknown type code, truncated file or trailing bytes,
        corrupt gzip data.
    FileNotFoundError
        If the path does not exist.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        label = "IDX data"
        data = bytes(source)
    else:
        path = as_path(source, "source")
        label = str(path)
        data = read_bytes(path)
    return parse_idx(maybe_gunzip(data, label), label)
