"""The matrices of a model, behind one interface: `lin(x)` multiplies, `lin.rows(ids)` looks rows up.

DenseLinear holds float32 (the reference); QuantLinear holds a format's planes and runs the Numba
kernels on them: the activation quantized to int8 per group (the format's act_group), then integer
tiles of rows times tokens (a GEMV for one token, a GEMM for a prompt). Which kernels is the
format's table entry's `kernel`, a module of qllama.kernels (matmul.py: the group-wise formats;
kquant.py: the k-quants) that lays the planes out for its kernel once (`prepare`; mostly 8-row
interleaved copies, after which the caller may drop the file's pages: SourceTensor.done) and looks
rows up (`dequantize_rows`).
"""
from __future__ import annotations

import copy
import importlib
import os

import numpy as np

from .kernels import layout
from .kernels.matmul import quantize_activations
from .kernels.vector_ir import PORTABLE, best_path
from .quantize.tensor import QuantizedTensor

# the portable LLVM IR instead of the x86 intrinsics (a debugging aid; the tests run every path)
DEFAULT_PATH = PORTABLE if os.environ.get("QLLAMA_PORTABLE_KERNELS", "") in ("1", "true") else best_path()


def kernels_of(fmt):
    """The kernels module of a format (its table entry names it)."""
    return importlib.import_module(f"{__package__}.kernels.{fmt.kernel}")


class DenseLinear:
    def __init__(self, weight: np.ndarray):
        self.weight = weight                                   # (out, in) float32
        self.shape = weight.shape
        self.nbytes = weight.nbytes

    def __call__(self, x: np.ndarray) -> np.ndarray:          # (n, in) -> (n, out)
        return x @ self.weight.T

    def rows(self, ids) -> np.ndarray:
        return self.weight[ids].astype(np.float32)

    @property
    def finite(self) -> bool:
        return bool(np.isfinite(self.weight).all())


class QuantLinear:
    def __init__(self, q: QuantizedTensor, path: int = DEFAULT_PATH):
        self.fmt, self.shape = q.fmt, q.shape
        # the fp16 scales (and mins) are the only floats in the planes: all finite? (Model refuses if not)
        self.finite = all(np.isfinite(p).all() for p in q.planes.values() if p.dtype == np.float16)
        self.kernels = kernels_of(q.fmt)
        prepared = self.kernels.prepare(q, path)
        self.planes, self.matmul = prepared.planes, prepared.matmul
        self.out_rows, self.interleaved, self.variant = prepared.out_rows, prepared.interleaved, prepared.variant
        self.in_padded = q.n_groups * q.fmt.group_size
        self.act_group = q.fmt.act_group
        self.nbytes = q.nbytes

    def _padded(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.shape[-1] == self.in_padded:
            return x
        return np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, self.in_padded - x.shape[-1])])

    def __call__(self, x: np.ndarray) -> np.ndarray:          # (n, in) -> (n, out)
        xp = self._padded(x)
        n, n_act = len(xp), self.in_padded // self.act_group
        xq = np.empty((n, self.in_padded), np.int8)
        xd, xsum = np.empty((n, n_act), np.float32), np.empty((n, n_act), np.float32)
        quantize_activations(xp, self.act_group, xq, xd, xsum)
        out = np.empty((n, self.out_rows), np.float32)
        self.matmul(*self.planes, xq, xd, xsum, out)
        return out if self.out_rows == self.shape[0] else np.ascontiguousarray(out[:, :self.shape[0]])

    def rows(self, ids) -> np.ndarray:
        return self.kernels.dequantize_rows(self, ids)[:, :self.shape[1]]


def stacked(parts: list) -> QuantLinear | None:
    """One QuantLinear for matrices that multiply the same input (a layer's q, k, v; gate and up),
    their rows one after another: one call (activation quantized once, threads woken once) instead
    of several, which is most of the time of a small model's small matrices in decode. None where
    the parts differ in format, kernel or input, or a part's rows would split an interleaved block."""
    first = parts[0]
    if not all(isinstance(p, QuantLinear) for p in parts):
        return None
    same = (first.fmt, first.matmul, first.shape[1], tuple(a.shape[1:] for a in first.planes))
    if not all(same == (p.fmt, p.matmul, p.shape[1], tuple(a.shape[1:] for a in p.planes)) for p in parts):
        return None
    if any(p.out_rows != p.shape[0] for p in parts) or (first.interleaved and any(p.shape[0] % layout.ROWS for p in parts)):
        return None
    fused = copy.copy(first)
    fused.planes = tuple(a if a.size == 0 else np.concatenate(arrays) for a, *arrays in
                         zip(first.planes, *(p.planes for p in parts)))
    fused.shape = (sum(p.shape[0] for p in parts), first.shape[1])
    fused.out_rows = fused.shape[0]
    fused.nbytes = sum(p.nbytes for p in parts)
    fused.splits = np.cumsum([p.shape[0] for p in parts])[:-1]   # the output's columns where parts begin
    return fused
