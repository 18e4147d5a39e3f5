"""Quantize one matrix into planes, and back: the bridge between the FORMATS table and files.

Rows whose length is not a multiple of the group size (stories260K's hidden_dim is 172) are padded
with their own last value up to whole groups; padded weights get zero importance, so the search
ignores them, and dequantize cuts them off again.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .formats import QuantFormat
from .search import search_quantize


@dataclass
class QuantizedTensor:
    fmt: QuantFormat
    shape: tuple[int, int]          # (out, in) of the original matrix
    qweight: np.ndarray             # uint8 (out, n_groups * qbytes_per_group)
    scales: np.ndarray              # float16 (out, n_groups)
    mins: np.ndarray | None         # float16 (out, n_groups), asymmetric formats only

    @property
    def n_groups(self) -> int:
        return -(-self.shape[1] // self.fmt.group_size)

    @property
    def nbytes(self) -> int:
        return self.qweight.nbytes + self.scales.nbytes + (self.mins.nbytes if self.mins is not None else 0)

    def planes(self) -> dict[str, np.ndarray]:
        planes = {"qweight": self.qweight, "scales": self.scales}
        if self.mins is not None:
            planes["mins"] = self.mins
        return planes

    def dequantize(self) -> np.ndarray:
        """float32 (out, in) through the table's reference."""
        out, n_in = self.shape
        g = self.fmt.group_size
        codes = self.qweight.reshape(out * self.n_groups, self.fmt.qbytes_per_group)
        mins = None if self.mins is None else self.mins.reshape(-1).astype(np.float32)
        x = self.fmt.dequantize_ref(self.fmt.unpack(codes), self.scales.reshape(-1).astype(np.float32), mins)
        return x.reshape(out, self.n_groups * g)[:, :n_in]


def plane_shapes(fmt: QuantFormat, shape: tuple[int, int]) -> dict[str, tuple[tuple[int, int], str]]:
    """Plane name -> (shape, safetensors dtype), known before quantizing (the writer needs it up front)."""
    out, n_in = shape
    n_groups = -(-n_in // fmt.group_size)
    planes = {"qweight": ((out, n_groups * fmt.qbytes_per_group), "U8"), "scales": ((out, n_groups), "F16")}
    if not fmt.symmetric:
        planes["mins"] = ((out, n_groups), "F16")
    return planes


CHUNK_ELEMENTS = 1 << 22  # rows are quantized in chunks of about this many weights to bound memory


def quantize_matrix(w: np.ndarray, fmt: QuantFormat, importance: np.ndarray | None = None,
                    search: bool = True) -> QuantizedTensor:
    """w (out, in) float32 -> planes. importance (in,): weight of each input column's squared error
    (an imatrix); None weighs all equally. search=False gives ggml's absmax rounding."""
    out, n_in = w.shape
    g = fmt.group_size
    pad = -n_in % g
    n_groups = (n_in + pad) // g
    col_weight = np.ones(n_in, np.float32) if importance is None else importance.astype(np.float32)
    col_weight = np.pad(col_weight, (0, pad))  # padding counts for nothing
    qweight = np.empty((out, n_groups * fmt.qbytes_per_group), np.uint8)
    scales = np.empty((out, n_groups), np.float16)
    mins = None if fmt.symmetric else np.empty((out, n_groups), np.float16)
    step = max(1, CHUNK_ELEMENTS // (n_in + pad))
    for r in range(0, out, step):
        rows = w[r:r + step]
        x = np.pad(rows, ((0, 0), (0, pad)), mode="edge") if pad else rows
        groups = x.reshape(-1, g)
        if search:
            weights = np.broadcast_to(col_weight, x.shape).reshape(-1, g)
            levels, d, m = search_quantize(fmt, groups, weights)
        else:
            levels, d, m = fmt.quantize_ref(groups)
        n = len(rows)
        qweight[r:r + n] = fmt.pack(levels).reshape(n, -1)
        scales[r:r + n] = d.reshape(n, n_groups)
        if mins is not None:
            mins[r:r + n] = m.reshape(n, n_groups)
    return QuantizedTensor(fmt, (out, n_in), qweight, scales, mins)


def relative_error(q: QuantizedTensor, w: np.ndarray) -> float:
    """||dequantize(q) - w|| / ||w||, in row chunks to bound memory."""
    step = max(1, CHUNK_ELEMENTS // w.shape[1])
    err = ref = 0.0
    for r in range(0, w.shape[0], step):
        part = QuantizedTensor(q.fmt, (min(step, w.shape[0] - r), w.shape[1]), q.qweight[r:r + step],
                               q.scales[r:r + step], None if q.mins is None else q.mins[r:r + step])
        err += float(np.sum((part.dequantize() - w[r:r + step]) ** 2, dtype=np.float64))
        ref += float(np.sum(w[r:r + step].astype(np.float64) ** 2))
    return float(np.sqrt(err / ref)) if ref > 0 else 0.0


def from_ggml_blocks(blocks: np.ndarray, shape: tuple[int, int], fmt: QuantFormat) -> QuantizedTensor:
    """A ggml Q8_0/Q4_0/Q4_1 tensor (rows of blocks) -> planes, byte for byte: fp16 d (and m) then
    the codes of each block are exactly the planes' fields (see formats.py)."""
    out, n_in = shape
    n_groups = n_in // fmt.group_size
    blocks = np.asarray(blocks).reshape(out, n_groups, fmt.bytes_per_group)
    scales = blocks[..., 0:2].copy().view(np.float16).reshape(out, n_groups)
    mins = None if fmt.symmetric else blocks[..., 2:4].copy().view(np.float16).reshape(out, n_groups)
    start = fmt.bytes_per_group - fmt.qbytes_per_group
    qweight = blocks[..., start:].reshape(out, n_groups * fmt.qbytes_per_group).copy()
    return QuantizedTensor(fmt, (out, n_in), qweight, scales, mins)


def to_ggml_blocks(q: QuantizedTensor) -> np.ndarray:
    """The inverse of from_ggml_blocks: planes -> uint8 (out, n_groups * bytes_per_group), each block
    fp16 d (and m) then the codes. Needs a format with a ggml layout and rows of whole groups."""
    fmt, (out, n_in) = q.fmt, q.shape
    if fmt.ggml_type is None or n_in % fmt.group_size:
        raise ValueError(f"{fmt.name} rows of {n_in} are not ggml blocks")
    fields = [q.scales.reshape(out, q.n_groups, 1).view(np.uint8)]
    if q.mins is not None:
        fields.append(q.mins.reshape(out, q.n_groups, 1).view(np.uint8))
    fields.append(q.qweight.reshape(out, q.n_groups, fmt.qbytes_per_group))
    return np.concatenate(fields, axis=2).reshape(out, q.n_groups * fmt.bytes_per_group)
