"""The matrices of a model, behind one interface: `lin(x)` multiplies, `lin.rows(ids)` looks rows up.

DenseLinear holds float32 (the reference); QuantLinear holds a format's planes and runs the Numba
kernels on them: the activation quantized to int8 per group (the kernels module's quantize_input), then integer
tiles of rows times tokens (a GEMV for one token, a GEMM for a prompt). Which kernels is the
format's table entry's `kernel`, a module of qllama.kernels (matmul.py: the group-wise formats;
kquant.py: the k-quants) that lays the planes out for its kernel once (`prepare`; mostly 8-row
interleaved copies, after which the caller may drop the file's pages: SourceTensor.done) and looks
rows up (`dequantize_rows`).
"""
from __future__ import annotations

import importlib
import os

import numpy as np

from .kernels import layout, repack
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


class QuantLinear:
    """A quantized matrix laid out for its kernel. q: a QuantizedTensor, or the stored bytes of one
    matrix or of several that multiply the same input (repack.Stored: ggml blocks or planes), which
    become one matrix, their rows one after another (`splits`: where each part's outputs begin):
    a layer's q, k, v in one call, the activation quantized once and the threads woken once."""
    def __init__(self, q: QuantizedTensor | list, path: int = DEFAULT_PATH):
        parts = [repack.stored_planes(q)] if isinstance(q, QuantizedTensor) else q
        self.fmt = parts[0].fmt
        self.shape = (sum(p.shape[0] for p in parts), parts[0].shape[1])
        self.kernels = kernels_of(self.fmt)
        prepared = self.kernels.prepare(parts, path)
        self.planes, self.matmul = prepared.planes, prepared.matmul
        self.out_rows, self.interleaved, self.variant = prepared.out_rows, prepared.interleaved, prepared.variant
        # the fp16 scales (and mins) are the only floats in the planes: all finite? (Model refuses if not)
        self.finite = prepared.finite
        self.in_padded = parts[0].n_blocks * self.fmt.group_size
        self.nbytes = sum(p.nbytes for p in parts)
        self.splits = np.cumsum([p.shape[0] for p in parts])[:-1]   # the output's columns where parts begin

    def _padded(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.shape[-1] == self.in_padded:
            return x
        return np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, self.in_padded - x.shape[-1])])

    def __call__(self, x: np.ndarray) -> np.ndarray:          # (n, in) -> (n, out)
        xp = self._padded(x)
        out = np.empty((len(xp), self.out_rows), np.float32)
        self.matmul(*self.planes, *self.kernels.quantize_input(xp, self.fmt), out)
        return out if self.out_rows == self.shape[0] else np.ascontiguousarray(out[:, :self.shape[0]])

    def rows(self, ids) -> np.ndarray:
        return self.kernels.dequantize_rows(self, ids)[:, :self.shape[1]]


def fusable(parts: list) -> bool:
    """Whether matrices' stored bytes (repack.Stored) can make one QuantLinear: one format and input
    width, and rows in whole blocks of eight (so no part's rows split an interleaved block)."""
    first = parts[0]
    return all(p.fmt == first.fmt and p.shape[1] == first.shape[1] and p.shape[0] % layout.ROWS == 0 for p in parts)
