"""Dequantize-matmul kernels that read qllama's planes directly (Numba, any CPU Numba supports).

The activation is quantized to int8 per group once per matmul, and the integer block dot products
run in LLVM vector IR (vector_ir.py) over tiles of weight rows times tokens: decode (one token) is a
GEMV that reads each weight byte once; prefill (many tokens) is a GEMM whose tiles
load each weight group once for four tokens and each activation group once for four rows. Threads
split the output rows (prange); a thread's rows stay in its L1 while it runs through the tokens.

Every format's value is d * code + c per group (q8: c = 0; q4: c = -8 d; q4a: c = m), so
  y[r] = sum_g d[r,g] * dx[g] * (codes[r,g,:] . xq[g,:]) + c[r,g] * xsum[g].
Scales and mins stay fp16 (read as uint16 bits, converted in the kernel): Numba has no float16 on
the CPU, and float32 copies would add a third to the bytes a 4-bit GEMV reads.
"""
from __future__ import annotations

import functools

import numba as nb
import numpy as np

from .jit import kernel
from .vector_ir import half_to_float, tile_dot, unpack_variant

ROWS, TOKENS = 4, 4                 # the tile; its tails run as single rows / single tokens
_dot_rt, _dot_r1, _dot_1t, _dot_11 = tile_dot(ROWS, TOKENS), tile_dot(ROWS, 1), tile_dot(1, TOKENS), tile_dot(1, 1)


@kernel()  # no fastmath: amax / 127 must not become amax * (1 / 127), which rounds differently
def _quantize_row(x, group, xq, xd, xsum):
    """x (n_groups * group,) float32 -> xq int8 codes, xd (n_groups,) scales (amax / 127), and
    xsum (n_groups,) the sums of the dequantized x per group (for the offsets and mins: with the sum
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


@kernel()
def quantize_activations(x, group, xq, xd, xsum):
    """Each row of x (tokens, n_groups * group) quantized into the rows of xq, xd, xsum (serial:
    a few microseconds per token, less than waking the threads would cost in decode)."""
    for t in range(x.shape[0]):
        _quantize_row(x[t], group, xq[t], xd[t], xsum[t])


@functools.cache
def matmul_kernel(variant: int):
    """The compiled matmul for one format and path (vector_ir.variant()): the variant is a constant
    of the closure, so each is its own specialization, compiled (or loaded from Numba's cache, whose
    key includes the closure's values) only when a model uses it."""

    # decode, measured on matrices not in cache: 4-bit codes stream fastest one row at a time
    # (four rows: 0.7x), 8-bit codes four rows at a time (one row: 0.8x)
    decode_rows = ROWS if unpack_variant(variant)[0] == 8 else 1

    @kernel(parallel=True)
    def matmul(qweight, scales, mins, xq, xd, xsum, out):
        """out (tokens, rows) = x @ W.T for W's planes and x quantized by quantize_activations."""
        rows, n = qweight.shape[0], xq.shape[0]
        if n < TOKENS:
            tiles = rows // decode_rows if decode_rows > 1 else 0
            for i in nb.prange(tiles + rows - tiles * decode_rows):
                if i < tiles:
                    for t in range(n):
                        _dot_r1(qweight, scales, mins, i * decode_rows, xq, xd, xsum, t, out, variant)
                else:
                    for t in range(n):
                        _dot_11(qweight, scales, mins, tiles * decode_rows + i - tiles, xq, xd, xsum, t, out, variant)
            return
        row_tiles, tok_tiles = rows // ROWS, n // TOKENS
        for i in nb.prange(row_tiles + rows % ROWS):
            whole = i < row_tiles
            r = i * ROWS if whole else row_tiles * ROWS + i - row_tiles
            for j in range(tok_tiles + n % TOKENS):
                t = j * TOKENS if j < tok_tiles else tok_tiles * TOKENS + j - tok_tiles
                if whole and j < tok_tiles:
                    _dot_rt(qweight, scales, mins, r, xq, xd, xsum, t, out, variant)
                elif whole:
                    _dot_r1(qweight, scales, mins, r, xq, xd, xsum, t, out, variant)
                elif j < tok_tiles:
                    _dot_1t(qweight, scales, mins, r, xq, xd, xsum, t, out, variant)
                else:
                    _dot_11(qweight, scales, mins, r, xq, xd, xsum, t, out, variant)

    return matmul


@kernel(parallel=True, fastmath=True)
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
