"""A format's planes: the arrays a quantized matrix is stored as, one field of its blocks each.

A format cuts every row into blocks (a group of 32..128 weights, or a k-quant super-block of 256);
each field of a block (codes, a scale, packed sub-block scales, ...) becomes one plane of shape
(out, n_blocks * per_block), so kernels read contiguous streams and a ggml block converts to planes
by slicing its bytes field by field (`ggml_fields` gives the order of the fields in ggml's block).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ITEMSIZE = {"U8": 1, "F16": 2}
NUMPY = {"U8": np.uint8, "F16": np.float16}


@dataclass(frozen=True)
class Plane:
    name: str         # the plane's key in a qllama file: <tensor>.<name>
    dtype: str        # safetensors dtype: "U8" (codes, packed or int8 scales) or "F16" (scales)
    per_block: int    # values per block of one row
    chunk: int        # bytes the kernels' 8-row interleave keeps together (kernels/layout.py)

    @property
    def nbytes(self) -> int:
        """Bytes per block of one row."""
        return self.per_block * ITEMSIZE[self.dtype]


def split_ggml_blocks(blocks: np.ndarray, out: int, n_blocks: int, planes: tuple[Plane, ...],
                      ggml_fields: tuple[str, ...]) -> dict[str, np.ndarray]:
    """(out, n_blocks * block bytes) uint8, ggml's blocks row after row -> {plane name: (out, n_blocks *
    per_block)} copies, bit for bit: each field's bytes are sliced out of every block."""
    by_name = {p.name: p for p in planes}
    size = sum(by_name[f].nbytes for f in ggml_fields)
    blocks = np.asarray(blocks).reshape(out, n_blocks, size)
    result, start = {}, 0
    for field in ggml_fields:
        p = by_name[field]
        part = np.ascontiguousarray(blocks[..., start:start + p.nbytes])
        result[field] = part.view(NUMPY[p.dtype]).reshape(out, n_blocks * p.per_block)
        start += p.nbytes
    return {p.name: result[p.name] for p in planes}      # in the format's order of planes


def join_ggml_blocks(planes: dict[str, np.ndarray], n_blocks: int, specs: tuple[Plane, ...],
                     ggml_fields: tuple[str, ...]) -> np.ndarray:
    """split_ggml_blocks backwards: planes -> (out * n_blocks, block bytes) uint8 ggml blocks."""
    by_name = {p.name: p for p in specs}
    parts = []
    for field in ggml_fields:
        a = np.ascontiguousarray(planes[field])
        parts.append(a.view(np.uint8).reshape(a.shape[0] * n_blocks, by_name[field].nbytes))
    return np.concatenate(parts, axis=1)
