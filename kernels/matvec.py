"""Dequantize-matmul kernels that read qllama's planes directly (Numba, any CPU Numba supports).

Every format's value is d * q + c per group (q8: c = 0; q4: c = -8 d; q4a: c = m), so one kernel
per code width serves all families:  y[r] = sum_g d[r,g] * (q[r,g,:] . x[g,:]) + c[r,g] * xsum[g],
with xsum (the per-group sums of x) computed once per call. Decode (one token) is a GEMV that
reads each weight byte once; prefill dequantizes row tiles to float32 and lets BLAS multiply.
Threads split output rows (prange). Scales arrive as float32: Numba has no float16 on the CPU.
"""
from __future__ import annotations

import numba as nb
import numpy as np


@nb.njit(cache=True, parallel=True, fastmath=True)
def group_sums(x, n_groups):
    """x (n_groups * G,) -> (n_groups,) sums per group."""
    g = x.shape[0] // n_groups
    out = np.empty(n_groups, np.float32)
    for i in nb.prange(n_groups):
        out[i] = np.sum(x[i * g:(i + 1) * g])
    return out


@nb.njit(cache=True, parallel=True, fastmath=True)
def matvec_4bit(qweight, scales, offsets, x, xsum, out):
    """W (rows, in) as 4-bit planes @ x (in_padded,) -> out (rows,).
    qweight (rows, n_groups*G/2) uint8: byte j of a group holds weight j (low) and j + G/2 (high).
    The nibbles are split in float32 arithmetic on the bytes read as int8: Numba widens integer
    math to int64 (and uint8 -> float goes through uint64), neither of which AVX2 vectorizes."""
    rows, n_groups = scales.shape
    half = qweight.shape[1] // n_groups
    signed = qweight.view(np.int8)
    for r in nb.prange(rows):
        acc = np.float32(0.0)
        for gi in range(n_groups):
            codes = signed[r, gi * half:(gi + 1) * half]
            xlo = x[2 * gi * half:(2 * gi + 1) * half]
            xhi = x[(2 * gi + 1) * half:(2 * gi + 2) * half]
            s = np.float32(0.0)
            for j in range(half):
                c = np.float32(codes[j])
                c = c + np.float32(256.0) if c < 0 else c          # the byte, 0..255
                hi = np.floor(c * np.float32(0.0625))
                s += (c - np.float32(16.0) * hi) * xlo[j] + hi * xhi[j]
            acc += scales[r, gi] * s + offsets[r, gi] * xsum[gi]
        out[r] = acc


@nb.njit(cache=True, parallel=True, fastmath=True)
def matvec_8bit(qweight, scales, offsets, x, xsum, out):
    """W (rows, in) as 8-bit planes @ x (in_padded,) -> out (rows,). qweight holds int8 codes as uint8."""
    rows, n_groups = scales.shape
    g = qweight.shape[1] // n_groups
    codes_all = qweight.view(np.int8)
    for r in nb.prange(rows):
        acc = np.float32(0.0)
        for gi in range(n_groups):
            codes = codes_all[r, gi * g:(gi + 1) * g]
            xs = x[gi * g:(gi + 1) * g]
            s = np.float32(0.0)
            for j in range(g):
                s += np.float32(codes[j]) * xs[j]
            acc += scales[r, gi] * s + offsets[r, gi] * xsum[gi]
        out[r] = acc


@nb.njit(cache=True, parallel=True, fastmath=True)
def dequantize_4bit(qweight, scales, offsets, r0, r1, out):
    """Rows r0..r1 of 4-bit planes -> out (r1 - r0, in_padded) float32."""
    n_groups = scales.shape[1]
    half = qweight.shape[1] // n_groups
    for r in nb.prange(r1 - r0):
        for gi in range(n_groups):
            d, c = scales[r0 + r, gi], offsets[r0 + r, gi]
            for j in range(half):
                b = np.int32(qweight[r0 + r, gi * half + j])
                out[r, 2 * gi * half + j] = d * np.float32(b & 15) + c
                out[r, (2 * gi + 1) * half + j] = d * np.float32(b >> 4) + c


@nb.njit(cache=True, parallel=True, fastmath=True)
def dequantize_8bit(qweight, scales, offsets, r0, r1, out):
    """Rows r0..r1 of 8-bit planes -> out (r1 - r0, in_padded) float32."""
    n_groups = scales.shape[1]
    g = qweight.shape[1] // n_groups
    codes = qweight.view(np.int8)
    for r in nb.prange(r1 - r0):
        for gi in range(n_groups):
            d, c = scales[r0 + r, gi], offsets[r0 + r, gi]
            for j in range(g):
                out[r, gi * g + j] = d * np.float32(codes[r0 + r, gi * g + j]) + c


KERNELS = {4: (matvec_4bit, dequantize_4bit), 8: (matvec_8bit, dequantize_8bit)}
