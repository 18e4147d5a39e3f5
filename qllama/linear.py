"""The matrices of a model, behind one interface: `lin(x)` multiplies, `lin.rows(ids)` looks rows up.

DenseLinear holds float32 (the reference); QuantLinear holds a format's planes as they are in the
file (no copies) and runs the Numba kernels on them: an int8-activation GEMV per token for decode,
dequantized row tiles times BLAS for prefill.
"""
from __future__ import annotations

import os

import numpy as np

from .kernels.matvec import dequantize, matvec, quantize_activation
from .kernels.vector_ir import variant
from .quantize.tensor import QuantizedTensor

PREFILL_MIN_TOKENS = 4      # from here on, dequantize tiles and use BLAS instead of GEMVs
TILE_ELEMENTS = 1 << 20     # weights per dequantized tile: 4 MB of float32, cache-friendly
# the portable LLVM IR instead of the x86 AVX2 intrinsics (tests run both; also a debugging aid)
PORTABLE = os.environ.get("QLLAMA_PORTABLE_KERNELS", "") in ("1", "true")
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
    def __init__(self, q: QuantizedTensor, portable: bool = PORTABLE):
        fmt = q.fmt
        self.shape = q.shape
        self.bits, self.group, self.offset = fmt.bits, fmt.group_size, fmt.family.offset
        self.qweight = np.ascontiguousarray(q.qweight)
        self.scales = np.ascontiguousarray(q.scales).view(np.uint16)     # fp16 bits, read by the kernels
        self.mins = NO_MINS if q.mins is None else np.ascontiguousarray(q.mins).view(np.uint16)
        self.n_groups = self.scales.shape[1]
        self.in_padded = self.n_groups * self.group
        self.variant = variant(self.bits, self.group, q.mins is not None, portable)
        self.nbytes = q.nbytes

    def _padded(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.shape[-1] == self.in_padded:
            return x
        return np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, self.in_padded - x.shape[-1])])

    def __call__(self, x: np.ndarray) -> np.ndarray:          # (n, in) -> (n, out)
        xp = self._padded(x)
        out = np.empty((len(xp), self.shape[0]), np.float32)
        if len(xp) < PREFILL_MIN_TOKENS:
            xq = np.empty(self.in_padded, np.int8)
            xd, xsum = np.empty(self.n_groups, np.float32), np.empty(self.n_groups, np.float32)
            for i, row in enumerate(xp):
                quantize_activation(row, self.group, xq, xd, xsum)
                matvec(self.qweight, self.scales, self.mins, xq, xd, xsum, out[i], self.variant)
            return out
        step = max(1, TILE_ELEMENTS // self.in_padded)
        tile = np.empty((step, self.in_padded), np.float32)
        for r0 in range(0, self.shape[0], step):
            r1 = min(r0 + step, self.shape[0])
            self._dequantize(r0, r1, tile)
            out[:, r0:r1] = xp @ tile[:r1 - r0].T
        return out

    def _dequantize(self, r0: int, r1: int, out: np.ndarray):
        dequantize(self.qweight, self.scales, self.mins, self.bits, self.offset, r0, r1, out)

    def rows(self, ids) -> np.ndarray:
        out = np.empty((len(ids), self.in_padded), np.float32)
        for i, r in enumerate(ids):
            self._dequantize(int(r), int(r) + 1, out[i:i + 1])
        return out[:, :self.shape[1]]
