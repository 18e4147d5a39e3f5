"""The matrices of a model, behind one interface: `lin(x)` multiplies, `lin.rows(ids)` looks rows up.

DenseLinear holds float32 (the reference); QuantLinear holds a format's planes as they are in the
file (no copies) and runs the Numba kernels on them: the activation quantized to int8 per group,
then integer tiles of rows times tokens (a GEMV for one token, a GEMM for a prompt).
"""
from __future__ import annotations

import os

import numpy as np

from .kernels.matmul import dequantize, matmul_kernel, quantize_activations
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
        self.qweight = np.ascontiguousarray(q.qweight)
        self.scales = np.ascontiguousarray(q.scales).view(np.uint16)     # fp16 bits, read by the kernels
        self.mins = NO_MINS if q.mins is None else np.ascontiguousarray(q.mins).view(np.uint16)
        self.n_groups = self.scales.shape[1]
        self.in_padded = self.n_groups * self.group
        if path == AVX512 and self.group == 32 and self.n_groups % 2:
            path = AVX2                 # the avx512 kernel takes groups of 32 in pairs
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

    def _dequantize(self, r0: int, r1: int, out: np.ndarray):
        dequantize(self.qweight, self.scales, self.mins, self.bits, self.offset, r0, r1, out)

    def rows(self, ids) -> np.ndarray:
        out = np.empty((len(ids), self.in_padded), np.float32)
        for i, r in enumerate(ids):
            self._dequantize(int(r), int(r) + 1, out[i:i + 1])
        return out[:, :self.shape[1]]
