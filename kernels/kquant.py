"""Matmuls of the k-quant formats (Q4_K, Q5_K, Q6_K): decode GEMV and prefill GEMM on their planes.

The planes are interleaved by eight rows at load (kquant_ir.py), the rows padded to whole blocks of
eight with zero rows (real models' row counts are multiples of eight; a padded row costs one
block's bytes once and its outputs are cut off). The kernel runs over tiles of eight rows by eight,
four or one tokens, threads splitting the blocks of rows, as matmul.py's interleaved kernel does;
it reads exactly the bytes the file stores (4.5 bits per weight for Q4_K).
"""
from __future__ import annotations

import functools

import numba as nb
import numpy as np

from . import layout, repack
from .jit import kernel
from .kquant_ir import kquant_dot
from .layout import ROWS, Prepared
from .vector_ir import unpack_variant, variant

ABSENT = np.empty((0, 0), np.uint8)          # the qh of Q4_K
ABSENT_F16 = np.empty((0, 0), np.uint16)     # the mins of Q6_K
TOKEN_CHUNK = 64                   # prefill's tokens per pass over the rows (as matmul.py)
_dot_8, _dot_4, _dot_1 = kquant_dot(8), kquant_dot(4), kquant_dot(1)


def prepare(parts: list, path: int) -> Prepared:
    """A k-quant matrix's stored bytes (repack.Stored: ggml blocks or planes; several parts are
    fused one after another) -> interleaved planes, the rows padded with zero rows to whole blocks
    of eight, and the kernel: planes (qweight, qh, subscales, scales, mins) in its argument order."""
    fmt = parts[0].fmt
    specs = {p.name: p for p in fmt.planes}
    packed, bad = repack.pack(parts, [repack.PlaneLayout(p.name, p.chunk) for p in fmt.planes],
                              interleave=True, pad_rows=True)
    arrays = []
    for name in ("qweight", "qh", "subscales", "scales", "mins"):
        if name not in specs:
            arrays.append(ABSENT_F16 if name == "mins" else ABSENT)
        else:
            arrays.append(packed[name].view(np.uint16) if specs[name].dtype == "F16" else packed[name])
    v = variant(fmt, path)
    return Prepared(tuple(arrays), matmul_kernel(v), arrays[0].shape[0], True, v, finite=bad == 0)


def dequantize_rows(lin, ids) -> np.ndarray:
    """Rows ids of a QuantLinear of a k-quant -> (len(ids), in_padded) float32, through the table's
    numpy reference (an embedding lookup: a few rows)."""
    fmt = lin.fmt
    names = ("qweight", "qh", "subscales", "scales", "mins")
    specs = {p.name: p for p in fmt.planes}
    planes = {}
    for name, plane in zip(names, lin.planes):
        if name in specs:
            spec = specs[name]
            raw = plane.view(np.uint8)
            gathered = np.stack([layout.row_bytes(raw, spec.nbytes, spec.chunk, int(r)) for r in ids])
            planes[name] = gathered.reshape(-1, spec.nbytes).view(np.float16 if spec.dtype == "F16" else np.uint8)
    return fmt.dequantize_planes(planes).reshape(len(ids), -1)


def row_kernels(lin, typeof) -> list:
    """dequantize_rows compiles nothing (numpy)."""
    return []


@functools.cache
def matmul_kernel(variant: int):
    """The compiled matmul of one k-quant format and path (vector_ir.variant)."""
    unpack_variant(variant)          # a number outside the table fails here, not in the compiler

    @kernel(parallel=True)
    def matmul(qweight, qh, subscales, scales, mins, xq, xd, xsum, out):
        """out (tokens, rows) = x @ W.T, rows in whole interleaved blocks of eight."""
        blocks, n = qweight.shape[0] // ROWS, xq.shape[0]
        for start in range(0, n, TOKEN_CHUNK):
            end = min(n, start + TOKEN_CHUNK)
            for i in nb.prange(blocks):
                t = start
                while t + 8 <= end:
                    _dot_8(qweight, qh, subscales, scales, mins, i, xq, xd, xsum, t, out, variant)
                    t += 8
                if t + 4 <= end:
                    _dot_4(qweight, qh, subscales, scales, mins, i, xq, xd, xsum, t, out, variant)
                    t += 4
                while t < end:
                    _dot_1(qweight, qh, subscales, scales, mins, i, xq, xd, xsum, t, out, variant)
                    t += 1

    return matmul
