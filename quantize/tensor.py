"""Quantize one matrix into planes, and back: the bridge between the FORMATS table and files.

Rows whose length is not a multiple of the group size (stories260K's hidden_dim is 172) are padded
with their own last value up to whole groups; padded weights get zero importance, so the search
ignores them, and dequantize cuts them off again.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .formats import QuantFormat
from .kquants import KQuantFormat
from .planes import NUMPY, split_ggml_blocks
from .search import search_quantize


@dataclass
class QuantizedTensor:
    fmt: QuantFormat | KQuantFormat
    shape: tuple[int, int]          # (out, in) of the original matrix
    planes: dict[str, np.ndarray]   # plane name -> (out, n_groups * per_block), as fmt.planes lists

    @property
    def n_groups(self) -> int:
        return -(-self.shape[1] // self.fmt.group_size)

    @property
    def qweight(self) -> np.ndarray:
        return self.planes["qweight"]

    @property
    def scales(self) -> np.ndarray:
        return self.planes["scales"]

    @property
    def mins(self) -> np.ndarray | None:
        return self.planes.get("mins")

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.planes.values())

    def rows(self, r0: int, r1: int) -> "QuantizedTensor":
        """Rows r0..r1 (views)."""
        return QuantizedTensor(self.fmt, (min(r1, self.shape[0]) - r0, self.shape[1]),
                               {k: v[r0:r1] for k, v in self.planes.items()})

    def dequantize(self) -> np.ndarray:
        """float32 (out, in) through the table's reference."""
        out, n_in = self.shape
        blocks = {p.name: np.ascontiguousarray(self.planes[p.name]).reshape(out * self.n_groups, p.per_block)
                  for p in self.fmt.planes}
        x = self.fmt.dequantize_planes(blocks)
        return x.reshape(out, self.n_groups * self.fmt.group_size)[:, :n_in]


def plane_shapes(fmt, shape: tuple[int, int]) -> dict[str, tuple[tuple[int, int], str]]:
    """Plane name -> (shape, safetensors dtype), known before quantizing (the writer needs it up front)."""
    out, n_in = shape
    n_groups = -(-n_in // fmt.group_size)
    return {p.name: ((out, n_groups * p.per_block), p.dtype) for p in fmt.planes}


CHUNK_ELEMENTS = 1 << 22  # rows are quantized in chunks of about this many weights to bound memory


def quantize_matrix(w: np.ndarray, fmt, importance: np.ndarray | None = None,
                    search: bool = True) -> QuantizedTensor:
    """w (out, in) float32 -> planes. importance (in,): weight of each input column's squared error
    (an imatrix); None weighs all equally. search=False gives ggml's absmax rounding (the k-quants:
    their quantize_ref's min/max rounding)."""
    out, n_in = w.shape
    g = fmt.group_size
    pad = -n_in % g
    n_groups = (n_in + pad) // g
    col_weight = np.ones(n_in, np.float32) if importance is None else importance.astype(np.float32)
    col_weight = np.pad(col_weight, (0, pad))  # padding counts for nothing
    planes = {name: np.empty(s, NUMPY[dtype]) for name, (s, dtype) in plane_shapes(fmt, w.shape).items()}
    step = max(1, CHUNK_ELEMENTS // (n_in + pad))
    for r in range(0, out, step):
        rows = w[r:r + step]
        n = len(rows)
        x = np.pad(rows, ((0, 0), (0, pad)), mode="edge") if pad else rows
        groups = x.reshape(-1, g)
        weights = np.broadcast_to(col_weight, x.shape).reshape(-1, g) if search else None
        if not fmt.searchable:   # the k-quants search whole super-blocks themselves
            for name, a in fmt.quantize_planes(groups, weights).items():
                planes[name][r:r + n] = a.reshape(n, -1)
            continue
        if search:
            levels, d, m = search_quantize(fmt, groups, weights)
        else:
            levels, d, m = fmt.quantize_ref(groups)
        planes["qweight"][r:r + n] = fmt.pack(levels).reshape(n, -1)
        planes["scales"][r:r + n] = d.reshape(n, n_groups)
        if m is not None:
            planes["mins"][r:r + n] = m.reshape(n, n_groups)
    return QuantizedTensor(fmt, (out, n_in), planes)


def relative_error(q: QuantizedTensor, w: np.ndarray) -> float:
    """||dequantize(q) - w|| / ||w||, in row chunks to bound memory."""
    step = max(1, CHUNK_ELEMENTS // w.shape[1])
    err = ref = 0.0
    for r in range(0, w.shape[0], step):
        err += float(np.sum((q.rows(r, r + step).dequantize() - w[r:r + step]) ** 2, dtype=np.float64))
        ref += float(np.sum(w[r:r + step].astype(np.float64) ** 2))
    return float(np.sqrt(err / ref)) if ref > 0 else 0.0


REQUANTIZE_ELEMENTS = 1 << 20   # weights decoded to float32 at a time when requantizing at load (4 MiB)


def requantize(raw: np.ndarray, order: np.ndarray | None, decode, shape: tuple[int, int], fmt) -> QuantizedTensor:
    """A matrix stored in an encoding with no table entry -> planes of fmt, a block of rows at a
    time, never a float32 copy of the whole: raw (out, row bytes) the stored rows, order the row
    order to apply (or None), decode(stored rows) -> float32 (n, in). Rounding as quantize_ref."""
    out, n_in = shape
    planes = {name: np.empty(s, NUMPY[dtype]) for name, (s, dtype) in plane_shapes(fmt, shape).items()}
    step = max(1, REQUANTIZE_ELEMENTS // n_in)
    for r in range(0, out, step):
        rows = raw[r:r + step] if order is None else raw[order[r:r + step]]
        w = np.asarray(decode(rows), np.float32).reshape(-1, n_in)
        for name, a in quantize_matrix(w, fmt, search=False).planes.items():
            planes[name][r:r + len(w)] = a
    return QuantizedTensor(fmt, shape, planes)


def from_ggml_blocks(blocks: np.ndarray, shape: tuple[int, int], fmt) -> QuantizedTensor:
    """A ggml tensor of fmt.ggml_type (rows of blocks) -> planes, bit for bit: each field of every
    block is sliced into its plane (fmt.ggml_fields gives the fields' order)."""
    out, n_in = shape
    if n_in % fmt.group_size:
        raise ValueError(f"rows of {n_in} weights are not whole {fmt.ggml_type} blocks of {fmt.group_size}")
    n_groups = n_in // fmt.group_size
    return QuantizedTensor(fmt, shape, split_ggml_blocks(blocks, out, n_groups, fmt.planes, fmt.ggml_fields))
