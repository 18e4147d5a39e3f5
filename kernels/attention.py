"""Attention over the KV cache (Numba): grouped-query, causal, reading float16 or float32 keys/values.

The cache rows in use are converted once per call into float32 scratch: keys transposed (kv_heads,
head_dim, length), so a query's scores are a sum of head_dim vectors along the positions with no
horizontal adds; values as (kv_heads, length, head_dim), so the weighted sum runs along head_dim.
Threads split the (token, KV head) pairs, pairing token i with token n-1-i so causal rows of
different lengths even out across threads. A decode step (a token or a few) skips the scratch and
reads the cache directly, one query head per thread item: converting the whole cache for one
token would cost more than the attention itself.
"""
from __future__ import annotations

import math

import numba as nb
import numpy as np

from .exp import exp_f32
from .jit import kernel
from .vector_ir import as_float

DIRECT_TOKENS = 4     # fewer tokens than this: read the cache directly instead of converting it


@kernel(parallel=True, fastmath=True)
def _unpack(keys, values, length):
    """Cache rows 0..length (float32 or fp16 bits) -> kt (kv, hd, length), vf (kv, length, hd)."""
    kv_heads, hd = keys.shape[1], keys.shape[2]
    kt = np.empty((kv_heads, hd, length), np.float32)
    vf = np.empty((kv_heads, length, hd), np.float32)
    for j in nb.prange(length):
        for g in range(kv_heads):
            for d in range(hd):
                kt[g, d, j] = as_float(keys[j, g, d])
                vf[g, j, d] = as_float(values[j, g, d])
    return kt, vf


@kernel(fastmath=True)
def _one_token(q, kt, vf, i, g, length, scale, s, out):
    """Token i's n_rep query heads of KV head g over positions 0..length -> out rows; s is scratch."""
    n_rep, hd = s.shape[0], kt.shape[1]
    s[:, :length] = 0.0
    for d in range(hd):                     # each key column once for all n_rep heads
        k = kt[g, d, :length]
        for r in range(n_rep):
            qd = q[i, g * n_rep + r, d] * scale
            row = s[r, :length]
            for j in range(length):
                row[j] += qd * k[j]
    for r in range(n_rep):
        row = s[r, :length]
        best = -np.inf
        for j in range(length):
            best = max(best, row[j])
        total = np.float32(0.0)
        for j in range(length):
            e = exp_f32(row[j] - best)
            row[j] = e
            total += e
        inv = np.float32(1.0) / total
        for j in range(length):
            row[j] *= inv
    o = out[i].reshape(-1, hd)[g * n_rep:(g + 1) * n_rep]
    o[:] = 0.0
    for j in range(length):
        v = vf[g, j]
        for r in range(n_rep):
            p = s[r, j]
            for d in range(hd):
                o[r, d] += p * v[d]


@kernel(parallel=True, fastmath=True)
def _direct(q, keys, values, pos, scale, out):
    """attention() for a few tokens, one (token, query head) per thread item, from the cache as is."""
    n, n_heads, hd = q.shape
    n_rep = n_heads // keys.shape[1]
    scores = np.empty((n * n_heads, pos + n), np.float32)
    for item in nb.prange(n * n_heads):
        i, h = item // n_heads, item % n_heads
        g, length = h // n_rep, pos + i + 1
        qv, s = q[i, h], scores[item]
        best = -np.inf
        for j in range(length):
            k = keys[j, g]
            acc = np.float32(0.0)
            for d in range(hd):
                acc += qv[d] * as_float(k[d])
            s[j] = acc * scale
            best = max(best, s[j])
        total = np.float32(0.0)
        for j in range(length):
            s[j] = exp_f32(s[j] - best)
            total += s[j]
        o = out[i, h * hd:(h + 1) * hd]
        o[:] = 0.0
        inv = np.float32(1.0) / total
        for j in range(length):
            p, v = s[j] * inv, values[j, g]
            for d in range(hd):
                o[d] += p * as_float(v[d])


@kernel(parallel=True, fastmath=True)
def attention(q, keys, values, pos, out):
    """q (n, n_heads, hd) float32 for positions pos..pos+n; keys, values (>= pos+n, kv_heads, hd)
    float32 or uint16 (fp16 bits); out (n, n_heads * hd) float32. Query head h reads KV head
    h // (n_heads / kv_heads); token i sees positions 0..pos+i."""
    n, n_heads, hd = q.shape
    kv_heads = keys.shape[1]
    n_rep = n_heads // kv_heads
    scale = np.float32(1.0 / math.sqrt(hd))
    if n < DIRECT_TOKENS:
        _direct(q, keys, values, pos, scale, out)
        return
    kt, vf = _unpack(keys, values, pos + n)
    pairs = (n + 1) // 2
    scratch = np.empty((pairs * kv_heads, n_rep, pos + n), np.float32)
    for item in nb.prange(pairs * kv_heads):
        k, g = item // kv_heads, item % kv_heads
        _one_token(q, kt, vf, k, g, pos + k + 1, scale, scratch[item], out)
        if n - 1 - k != k:
            _one_token(q, kt, vf, n - 1 - k, g, pos + n - k, scale, scratch[item], out)
