"""RMSNorm, SwiGLU's gate and RoPE as Numba kernels: one pass over memory each, threads over rows.

The numpy forms (qllama/model.py, qllama/rope.py, the reference) take several passes and a
temporary per operator; at a 512-token prompt of a 7B model they were 9% of the time. A prompt's
rows are split across threads; a decode step (a row or a few) runs serially, since waking the
threads costs more than the work.
"""
from __future__ import annotations

import numba as nb
import numpy as np

from .exp import exp_f32
from .jit import NO_REASSOC, by_rows, kernel


@kernel(fastmath=NO_REASSOC)
def _sum_squares(x):
    """In a fixed order (jit.NO_REASSOC): eight running sums, which LLVM can keep in one vector,
    added pairwise at the end (2x the speed of one running sum at 4096)."""
    n = x.shape[0]
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = np.float32(0.0)
    for j in range(0, n - n % 8, 8):
        s0 += x[j] * x[j]
        s1 += x[j + 1] * x[j + 1]
        s2 += x[j + 2] * x[j + 2]
        s3 += x[j + 3] * x[j + 3]
        s4 += x[j + 4] * x[j + 4]
        s5 += x[j + 5] * x[j + 5]
        s6 += x[j + 6] * x[j + 6]
        s7 += x[j + 7] * x[j + 7]
    total = ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))
    for j in range(n - n % 8, n):
        total += x[j] * x[j]
    return total


@kernel(fastmath=NO_REASSOC)
def _rmsnorm_row(x, weight, eps, out):
    inv = np.float32(1.0) / np.sqrt(_sum_squares(x) / np.float32(x.shape[0]) + eps)
    for j in range(x.shape[0]):
        out[j] = x[j] * inv * weight[j]


@kernel(fastmath=NO_REASSOC)
def _silu_mul_row(gate, up, out):
    for j in range(gate.shape[0]):
        g = gate[j]
        out[j] = g / (np.float32(1.0) + exp_f32(-g)) * up[j]


@kernel(fastmath=NO_REASSOC)
def _rope_row(x, c, s, out):
    """x, out (heads, hd); c, s (hd / 2): rotate-half, the pair (j, j + hd / 2)."""
    half = x.shape[1] // 2
    for h in range(x.shape[0]):
        v, o = x[h], out[h]
        for j in range(half):
            a, b = v[j], v[j + half]
            o[j] = a * c[j] - b * s[j]
            o[j + half] = b * c[j] + a * s[j]


# each op twice: threads over the rows of a prompt, the calling thread for a decode step (by_rows)
@kernel(fastmath=NO_REASSOC)
def _rmsnorm_serial(x, weight, eps, out):
    for i in range(x.shape[0]):
        _rmsnorm_row(x[i], weight, eps, out[i])


@kernel(parallel=True, fastmath=NO_REASSOC)
def _rmsnorm_parallel(x, weight, eps, out):
    for i in nb.prange(x.shape[0]):
        _rmsnorm_row(x[i], weight, eps, out[i])


@kernel(fastmath=NO_REASSOC)
def _silu_mul_serial(gate, up, out):
    for i in range(gate.shape[0]):
        _silu_mul_row(gate[i], up[i], out[i])


@kernel(parallel=True, fastmath=NO_REASSOC)
def _silu_mul_parallel(gate, up, out):
    for i in nb.prange(gate.shape[0]):
        _silu_mul_row(gate[i], up[i], out[i])


@kernel(fastmath=NO_REASSOC)
def _rope_serial(x, cos, sin, out):
    for i in range(x.shape[0]):
        _rope_row(x[i], cos[i], sin[i], out[i])


@kernel(parallel=True, fastmath=NO_REASSOC)
def _rope_parallel(x, cos, sin, out):
    for i in nb.prange(x.shape[0]):
        _rope_row(x[i], cos[i], sin[i], out[i])


_rmsnorm = by_rows(_rmsnorm_serial, _rmsnorm_parallel)
_silu_mul = by_rows(_silu_mul_serial, _silu_mul_parallel)
_rope = by_rows(_rope_serial, _rope_parallel)


def rmsnorm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x (n, dim) float32 -> x / rms(x) * weight."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty_like(x)
    _rmsnorm(x, weight, np.float32(eps), out)
    return out


def silu_mul(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """silu(gate) * up, SwiGLU's gating, (n, hidden) float32. Column slices of a stacked matmul's
    output are copied first: the kernel vectorizes only over contiguous rows."""
    gate, up = np.ascontiguousarray(gate), np.ascontiguousarray(up)
    out = np.empty_like(gate)
    _silu_mul(gate, up, out)
    return out


def rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """apply_rope (qllama/rope.py) for float32 x (n, heads, head_dim), cos and sin (n, head_dim / 2)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty_like(x)
    _rope(x, cos, sin, out)
    return out
