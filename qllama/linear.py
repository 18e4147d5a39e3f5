"""The matrices of a model, behind one interface: `lin(x)` multiplies, `lin.rows(ids)` looks rows up.

DenseLinear holds float32 (the reference); QuantLinear holds a format's planes and runs the Numba
kernels on them: a GEMV per token for decode, dequantized row tiles times BLAS for prefill.
"""
from __future__ import annotations

import numpy as np

from .kernels.matvec import KERNELS, group_sums
from .quantize.tensor import QuantizedTensor

PREFILL_MIN_TOKENS = 4      # from here on, dequantize tiles and use BLAS instead of GEMVs
TILE_ELEMENTS = 1 << 20     # weights per dequantized tile: 4 MB of float32, cache-friendly


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
    def __init__(self, q: QuantizedTensor):
        fmt = q.fmt
        self.shape = q.shape
        self.qweight = np.ascontiguousarray(q.qweight)
        self.scales = q.scales.astype(np.float32)
        mins = q.mins.astype(np.float32) if q.mins is not None else 0.0
        # value = d * (code - offset) + m = d * code + c, so the kernels need only d and c
        self.offsets = np.ascontiguousarray(mins - fmt.family.offset * self.scales, dtype=np.float32)
        self.n_groups = self.scales.shape[1]
        self.in_padded = self.n_groups * fmt.group_size
        self.matvec, self.dequantize = KERNELS[fmt.bits]
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
            for i, row in enumerate(xp):
                self.matvec(self.qweight, self.scales, self.offsets, row, group_sums(row, self.n_groups), out[i])
            return out
        step = max(1, TILE_ELEMENTS // self.in_padded)
        tile = np.empty((step, self.in_padded), np.float32)
        for r0 in range(0, self.shape[0], step):
            r1 = min(r0 + step, self.shape[0])
            self.dequantize(self.qweight, self.scales, self.offsets, r0, r1, tile)
            out[:, r0:r1] = xp @ tile[:r1 - r0].T
        return out

    def rows(self, ids) -> np.ndarray:
        out = np.empty((len(ids), self.in_padded), np.float32)
        for i, r in enumerate(ids):
            self.dequantize(self.qweight, self.scales, self.offsets, int(r), int(r) + 1, out[i:i + 1])
        return out[:, :self.shape[1]]
