"""The matrices of a model, behind one interface: `lin(x)` multiplies, `lin.rows(ids)` looks rows up.

DenseLinear holds float32 (the reference); QuantLinear holds a format's planes and runs the Numba
kernels on them: the activation quantized to int8 per group, then integer tiles of rows times
tokens (a GEMV for one token, a GEMM for a prompt). Planes are copied once into the kernels'
8-row interleaved layout (kernels/layout.py), after which the caller may drop the file's pages
(SourceTensor.done); only 8-bit planes on the avx2 path are used as they are in the file.
"""
from __future__ import annotations

import copy
import os

import numpy as np

from .kernels import layout
from .kernels.interleaved_ir import BIAS_8BIT
from .kernels.matmul import bias_codes, dequantize, interleaves, matmul_kernel, quantize_activations
from .kernels.vector_ir import AVX2, AVX512, PORTABLE, best_path, variant
from .quantize.tensor import QuantizedTensor

# the portable LLVM IR instead of the x86 intrinsics (a debugging aid; the tests run every path)
DEFAULT_PATH = PORTABLE if os.environ.get("QLLAMA_PORTABLE_KERNELS", "") in ("1", "true") else best_path()
NO_MINS = np.empty((0, 0), np.uint16)


class DenseLinear:
    def __init__(self, weight: np.ndarray):
        self.weight = weight                                   # (out, in) float32
        self.shape = weight.shape
        self.nbytes = weight.nbytes

    def __call__(self, x: np.ndarray) -> np.ndarray:          # (n, in) -> (n, out)
        return x @ self.weight.T

    def rows(self, ids) -> np.ndarray:
        return self.weight[ids].astype(np.float32)


class QuantLinear:
    def __init__(self, q: QuantizedTensor, path: int = DEFAULT_PATH):
        fmt = q.fmt
        self.shape = q.shape
        self.bits, self.group, self.offset = fmt.bits, fmt.group_size, fmt.family.offset
        self.group_bytes = self.group * self.bits // 8
        self.qweight = np.ascontiguousarray(q.qweight)
        self.scales = np.ascontiguousarray(q.scales).view(np.uint16)     # fp16 bits, read by the kernels
        self.mins = NO_MINS if q.mins is None else np.ascontiguousarray(q.mins).view(np.uint16)
        self.n_groups = self.scales.shape[1]
        self.in_padded = self.n_groups * self.group
        self.interleaved = interleaves(self.bits, path)
        if self.interleaved:
            self.qweight = layout.interleave_codes(self.qweight, self.group_bytes)
            if self.bits == 8:
                bias_codes(self.qweight)
            self.scales = layout.interleave_groups(self.scales)
            self.mins = self.mins if q.mins is None else layout.interleave_groups(self.mins)
        elif path == AVX512 and self.group == 32 and self.n_groups % 2:
            path = AVX2                 # the avx512 row-tile kernel takes groups of 32 in pairs
        self.matmul = matmul_kernel(variant(self.bits, self.group, q.mins is not None, path))
        self.nbytes = q.nbytes

    def _padded(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.shape[-1] == self.in_padded:
            return x
        return np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, self.in_padded - x.shape[-1])])

    def __call__(self, x: np.ndarray) -> np.ndarray:          # (n, in) -> (n, out)
        xp = self._padded(x)
        n = len(xp)
        xq = np.empty((n, self.in_padded), np.int8)
        xd, xsum = np.empty((n, self.n_groups), np.float32), np.empty((n, self.n_groups), np.float32)
        quantize_activations(xp, self.group, xq, xd, xsum)
        out = np.empty((n, self.shape[0]), np.float32)
        self.matmul(self.qweight, self.scales, self.mins, xq, xd, xsum, out)
        return out

    def rows(self, ids) -> np.ndarray:
        out = np.empty((len(ids), self.in_padded), np.float32)
        for i, r in enumerate(ids):
            r = int(r)
            if self.interleaved:        # the row gathered back into the file's layout
                codes = layout.row_codes(self.qweight, self.group_bytes, r)[None]
                if self.bits == 8 and r < layout.whole_rows(self.qweight):
                    codes ^= np.uint8(BIAS_8BIT)
                scales = layout.row_groups(self.scales, r)[None]
                mins = self.mins if self.mins is NO_MINS else layout.row_groups(self.mins, r)[None]
                dequantize(codes, scales, mins, self.bits, self.offset, 0, 1, out[i:i + 1])
            else:
                dequantize(self.qweight, self.scales, self.mins, self.bits, self.offset, r, r + 1, out[i:i + 1])
        return out[:, :self.shape[1]]


def stacked(parts: list) -> QuantLinear | None:
    """One QuantLinear for matrices that multiply the same input (a layer's q, k, v; gate and up),
    their rows one after another: one call (activation quantized once, threads woken once) instead
    of several, which is most of the time of a small model's small matrices in decode. None where
    the parts differ in format or input, or a part's rows would split an interleaved block."""
    first = parts[0]
    if not all(isinstance(p, QuantLinear) for p in parts):
        return None
    same = (first.bits, first.group, first.offset, first.matmul, first.shape[1], first.mins is NO_MINS)
    if not all(same == (p.bits, p.group, p.offset, p.matmul, p.shape[1], p.mins is NO_MINS) for p in parts):
        return None
    if first.interleaved and any(p.shape[0] % layout.ROWS for p in parts):
        return None
    fused = copy.copy(first)
    fused.qweight = np.concatenate([p.qweight for p in parts])
    fused.scales = np.concatenate([p.scales for p in parts])
    fused.mins = NO_MINS if first.mins is NO_MINS else np.concatenate([p.mins for p in parts])
    fused.shape = (sum(p.shape[0] for p in parts), first.shape[1])
    fused.nbytes = sum(p.nbytes for p in parts)
    fused.splits = np.cumsum([p.shape[0] for p in parts])[:-1]   # the output's columns where parts begin
    return fused
