"""Dequantize-matmul kernels that read qllama's planes directly (Numba, any CPU Numba supports).

Decode (one token) is a GEMV that reads each weight byte once: the activation is quantized to int8
per group once per matmul, and the integer block dot products run in LLVM vector IR (vector_ir.py),
four rows per step so each activation load serves four rows. Prefill (many tokens) dequantizes row
tiles to float32 and lets BLAS multiply. Threads split the output rows (prange).

Every format's value is d * code + c per group (q8: c = 0; q4: c = -8 d; q4a: c = m), so
  y[r] = sum_g d[r,g] * dx[g] * (codes[r,g,:] . xq[g,:]) + c[r,g] * xsum[g].
Scales and mins stay fp16 (read as uint16 bits, converted in the kernel): Numba has no float16 on
the CPU, and float32 copies would add a third to the bytes a 4-bit GEMV reads.
"""
from __future__ import annotations

import numba as nb
import numpy as np

from .vector_ir import half_to_float, rows_dot

ROWS_PER_STEP = 4
_dot4 = rows_dot(ROWS_PER_STEP)
_dot1 = rows_dot(1)


@nb.njit(cache=True, fastmath=True)
def quantize_activation(x, group, xq, xd, xsum):
    """x (n_groups * group,) float32 -> xq int8 codes, xd (n_groups,) scales (amax / 127), and
    xsum (n_groups,) the sums of the quantized x per group (for the offsets and mins: with the sum
    of the same x the codes saw, the kernel computes W . x_quantized exactly, and the large offset
    term of 4-bit codes cancels instead of leaving 8 d times the activation's rounding error)."""
    for g in range(xd.shape[0]):
        v = x[g * group:(g + 1) * group]
        amax = np.float32(0.0)
        for j in range(group):
            amax = max(amax, abs(v[j]))
        d = amax / np.float32(127.0)
        inv = np.float32(1.0) / d if d > 0 else np.float32(0.0)
        s = 0
        for j in range(group):
            q = np.int32(np.rint(v[j] * inv))
            xq[g * group + j] = np.int8(q)
            s += q
        xd[g] = d
        xsum[g] = d * np.float32(s)


@nb.njit(cache=True, parallel=True)
def matvec(qweight, scales, mins, xq, xd, xsum, out, variant):
    """out (rows,) = W @ x for W's planes and x quantized by quantize_activation."""
    rows = out.shape[0]
    steps = rows // ROWS_PER_STEP
    tail = rows - steps * ROWS_PER_STEP
    for i in nb.prange(steps + tail):
        if i < steps:
            r = i * ROWS_PER_STEP
            _dot4(qweight, scales, mins, r, xq, xd, xsum, out, r, variant)
        else:
            r = steps * ROWS_PER_STEP + (i - steps)
            _dot1(qweight, scales, mins, r, xq, xd, xsum, out, r, variant)


@nb.njit(cache=True, parallel=True, fastmath=True)
def dequantize(qweight, scales, mins, bits, offset, r0, r1, out):
    """Rows r0..r1 of the planes -> out (r1 - r0, in_padded) float32. scales, mins: fp16 bits (uint16);
    mins of length 0 for symmetric formats, whose c is -offset * d."""
    n_groups = scales.shape[1]
    qbytes = qweight.shape[1] // n_groups
    codes = qweight.view(np.int8)
    has_mins = mins.size > 0
    for r in nb.prange(r1 - r0):
        for gi in range(n_groups):
            d = half_to_float(scales[r0 + r, gi])
            c = half_to_float(mins[r0 + r, gi]) if has_mins else -np.float32(offset) * d
            if bits == 4:
                for j in range(qbytes):
                    b = np.int32(qweight[r0 + r, gi * qbytes + j])
                    out[r, 2 * gi * qbytes + j] = d * np.float32(b & 15) + c
                    out[r, (2 * gi + 1) * qbytes + j] = d * np.float32(b >> 4) + c
            else:
                for j in range(qbytes):
                    out[r, gi * qbytes + j] = d * np.float32(codes[r0 + r, gi * qbytes + j]) + c
