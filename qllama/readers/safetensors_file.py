"""Memory-mapped, validated reading of one .safetensors file.

Why not `safetensors.numpy`: it copies every tensor into memory and has no bfloat16 for numpy.
The format is an 8-byte little-endian header length, a JSON header, then the tensor bytes; every
offset and size in the (untrusted) header is checked against the file before anything is mapped.
"""
from __future__ import annotations

import json
import math
import mmap
import struct
from pathlib import Path

import numpy as np

from ..errors import QllamaError
from .byte_spans import overlapping_pair

# safetensors dtype name -> numpy dtype of the stored bytes (BF16 stays raw uint16 until widened)
DTYPES = {
    "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"), "F64": np.dtype("<f8"),
    "U8": np.dtype("u1"), "I8": np.dtype("i1"), "U16": np.dtype("<u2"), "I16": np.dtype("<i2"),
    "U32": np.dtype("<u4"), "I32": np.dtype("<i4"), "I64": np.dtype("<i8"), "U64": np.dtype("<u8"),
}
MAX_HEADER_BYTES = 100 * 1024 * 1024


def bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    """Exact: a bfloat16 is the top half of a float32."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


def to_float32(array: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":
        return bf16_to_f32(array)
    return np.asarray(array, dtype=np.float32)


class _DuplicateKey(Exception):
    pass


def _unique_keys(pairs: list) -> dict:
    """json object hook: a name given twice would silently mean its last entry."""
    out = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


class SafetensorsFile:
    """Maps a file; `.arrays[name]` are read-only views in the stored dtype, `.dtypes[name]` their names."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                size = self.path.stat().st_size
                if size < 8:
                    raise QllamaError(f"{self.path}: not a safetensors file (only {size} bytes)")
                (header_len,) = struct.unpack("<Q", f.read(8))
                if header_len > min(size - 8, MAX_HEADER_BYTES):
                    raise QllamaError(f"{self.path}: header length {header_len} runs past the end of the file "
                                      f"({size} bytes): truncated or not a safetensors file")
                header_bytes = f.read(header_len)
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size > 8 + header_len else None
        except OSError as e:
            raise QllamaError(f"{self.path}: cannot read ({e.strerror})") from None
        try:
            header = json.loads(header_bytes, object_pairs_hook=_unique_keys)
        except _DuplicateKey as e:
            raise QllamaError(f"{self.path}: header names {e.args[0]!r} twice") from None
        except (UnicodeDecodeError, ValueError):
            raise QllamaError(f"{self.path}: header is not valid JSON: not a safetensors file") from None
        if not isinstance(header, dict):
            raise QllamaError(f"{self.path}: header is not a JSON object")
        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise QllamaError(f"{self.path}: __metadata__ must map strings to strings")
        self.metadata: dict[str, str] = metadata
        data_start, data_size = 8 + header_len, size - 8 - header_len
        buffer = np.frombuffer(self._map, dtype=np.uint8) if self._map is not None else np.zeros(0, np.uint8)
        self.arrays: dict[str, np.ndarray] = {}
        self.dtypes: dict[str, str] = {}
        self.ranges: dict[str, tuple[int, int]] = {}   # file byte range of each tensor
        for name, info in header.items():
            self.arrays[name], self.dtypes[name] = self._view(buffer, data_start, data_size, name, info)
            begin, end = info["data_offsets"]
            self.ranges[name] = (data_start + begin, data_start + end)
        self._check_overlaps()

    def release(self, name: str) -> None:
        """Drop the mapped pages of one tensor from this process (they stay in the OS page cache):
        a streaming pass over a model then holds one tensor in memory at a time, not the file."""
        begin, end = self.ranges[name]
        begin -= begin % mmap.PAGESIZE
        if self._map is not None and end > begin and hasattr(mmap, "MADV_DONTNEED"):
            self._map.madvise(mmap.MADV_DONTNEED, begin, end - begin)

    def release_all(self) -> None:
        """release() for the whole file."""
        if self._map is not None and hasattr(mmap, "MADV_DONTNEED"):
            self._map.madvise(mmap.MADV_DONTNEED)

    def _check_overlaps(self) -> None:
        """The format forbids tensors sharing bytes: a crafted file could alias one tensor into another."""
        pair = overlapping_pair((begin, end, name) for name, (begin, end) in self.ranges.items())
        if pair:
            raise QllamaError(f"{self.path}: tensors {pair[0]!r} and {pair[1]!r} overlap in the file")

    def _view(self, buffer, data_start, data_size, name, info):
        try:
            dtype_name, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise QllamaError(f"{self.path}: tensor {name!r} has a malformed header entry") from None
        if not isinstance(dtype_name, str) or dtype_name not in DTYPES:
            raise QllamaError(f"{self.path}: tensor {name!r} has unsupported dtype {dtype_name!r}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                  for d in shape):
            raise QllamaError(f"{self.path}: tensor {name!r} has a bad shape {str(shape)[:60]}")
        dtype = DTYPES[dtype_name]
        n_bytes = math.prod(shape) * dtype.itemsize   # Python ints: [2^32, 2^32] must not wrap to 0
        if n_bytes > data_size:
            raise QllamaError(f"{self.path}: tensor {name!r} of shape {str(shape)[:60]} needs {n_bytes} bytes, more "
                              f"than the file's {data_size} bytes of data")
        if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end and end - begin == n_bytes):
            raise QllamaError(f"{self.path}: tensor {name!r} offsets {begin}..{end} do not match its "
                              f"shape {shape} and dtype {dtype_name}")
        if end > data_size:
            raise QllamaError(f"{self.path}: tensor {name!r} ends at byte {data_start + end} but the file has "
                              f"{data_start + data_size}: truncated file")
        raw = buffer[data_start + begin: data_start + end]
        return raw.view(dtype).reshape(shape), dtype_name
