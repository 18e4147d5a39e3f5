"""Attention over the KV cache (Numba): grouped-query, causal, reading float16 or float32 keys/values.

The cache is read where it lies (float16 as uint16 bits, converted per element in registers): no
float32 copy of the whole cache per layer per token, which would cost O(context) every step.
Threads split the (token, head) pairs; each pair's scores live in a scratch row of its own.
"""
from __future__ import annotations

import math

import numba as nb
import numpy as np

from .vector_ir import as_float


@nb.njit(cache=True, parallel=True, fastmath=True)
def attention(q, keys, values, pos, out):
    """q (n, n_heads, hd) float32 for positions pos..pos+n; keys, values (>= pos+n, kv_heads, hd)
    float32 or uint16 (fp16 bits); out (n, n_heads * hd) float32. Query head h reads KV head
    h // (n_heads / kv_heads); token i sees positions 0..pos+i. The query heads that share a KV
    head go together, so each key and value row is loaded and converted once for all of them."""
    n, n_heads, hd = q.shape
    kv_heads = keys.shape[1]
    n_rep = n_heads // kv_heads
    scale = np.float32(1.0 / math.sqrt(hd))
    scores = np.empty((n * kv_heads, n_rep, pos + n), np.float32)
    for item in nb.prange(n * kv_heads):
        i, g = item // kv_heads, item % kv_heads
        length = pos + i + 1
        qs = q[i, g * n_rep:(g + 1) * n_rep]              # (n_rep, hd)
        s = scores[item]
        row = np.empty(hd, np.float32)
        for j in range(length):
            k = keys[j, g]
            for d in range(hd):
                row[d] = as_float(k[d])
            for r in range(n_rep):
                acc = np.float32(0.0)
                for d in range(hd):
                    acc += qs[r, d] * row[d]
                s[r, j] = acc * scale
        for r in range(n_rep):
            best = -np.inf
            for j in range(length):
                best = max(best, s[r, j])
            total = np.float32(0.0)
            for j in range(length):
                e = np.exp(s[r, j] - best)
                s[r, j] = e
                total += e
            inv = np.float32(1.0) / total
            for j in range(length):
                s[r, j] *= inv
        o = out[i].reshape(n_heads, hd)[g * n_rep:(g + 1) * n_rep]
        o[:] = 0.0
        for j in range(length):
            v = values[j, g]
            for d in range(hd):
                row[d] = as_float(v[d])
            for r in range(n_rep):
                p = s[r, j]
                for d in range(hd):
                    o[r, d] += p * row[d]
