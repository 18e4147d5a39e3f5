"""Causal attention over the device KV cache, with grouped-query attention.

One block per (token, query head): it scores the token against every cached position up to its
own, softmaxes them in a scratch row, and sums the values. Query head h reads KV head h // n_rep,
as qllama.model.attention groups them.
"""
from __future__ import annotations

import math

from numba import cuda, float32

from .block_reduce import block_max, block_sum
from .launch import ROW_THREADS


@cuda.jit
def attention(q, keys, values, pos, n_rep, scores, out):
    """q (n, heads, hd) at positions pos..pos+n; keys, values (pos+n, kv_heads, hd);
    scores (n, heads, pos+n) scratch; out (n, heads*hd)."""
    n, heads, hd = q.shape
    reduce = cuda.shared.array(ROW_THREADS, float32)
    tx = cuda.threadIdx.x
    scale = float32(1) / math.sqrt(float32(hd))
    for item in range(cuda.blockIdx.x, n * heads, cuda.gridDim.x):
        t, h = item // heads, item % heads
        kv = h // n_rep
        length = pos + t + 1                    # causal: positions 0..pos+t
        best = float32(-math.inf)
        for j in range(tx, length, ROW_THREADS):
            s = float32(0)
            for d in range(hd):
                s += q[t, h, d] * keys[j, kv, d]
            s *= scale
            scores[t, h, j] = s
            best = max(best, s)
        reduce[tx] = best
        best = block_max(reduce, tx)
        total = float32(0)
        for j in range(tx, length, ROW_THREADS):
            e = math.exp(scores[t, h, j] - best)
            scores[t, h, j] = e
            total += e
        reduce[tx] = total
        inv = float32(1) / block_sum(reduce, tx)
        for d in range(tx, hd, ROW_THREADS):
            acc = float32(0)
            for j in range(length):
                acc += scores[t, h, j] * values[j, kv, d]
            out[t, h * hd + d] = acc * inv
        cuda.syncthreads()
