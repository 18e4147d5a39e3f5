"""Attention over the KV cache (Numba): grouped-query, causal, reading float16 or float32 keys/values.

Prefill: scores are dot products of a query with each cache row, read in place (a row of one KV
head is contiguous, so the dot runs along head_dim and no key is copied); each row is converted
once for all the query heads that share it. Values are converted once per call into float32
scratch, transposed (kv_heads, head_dim, length), so each output element is a dot product of the
probabilities with a contiguous row: accumulating weighted value rows into the output instead
would store the output once per position (0.6x, measured at the Llama-2-7B shape). Threads split
the (KV head, token) pairs head by head, so a head's keys and values stay in L2 across its tokens
(0.86x the time of token by token at the 7B shape), pairing token i with token n-1-i so causal
rows of different lengths even out across threads.
Decode (a token or a few): threads split the positions, so the cache is read front to back (one
thread item per query head strided through it at 0.6x); the scores of all heads are kept, the
softmax runs per head, and each thread's share of the weighted values is summed at the end.
"""
from __future__ import annotations

import math

import numba as nb
import numpy as np

from .exp import exp_f32
from .jit import kernel
from .vector_ir import as_float

DIRECT_TOKENS = 4     # fewer tokens than this: the decode kernel (no value scratch)
DECODE_CHUNKS = 16    # decode's thread items: position ranges of at least 32


@kernel(parallel=True, fastmath=True)
def _values_transposed(values, length):
    """Cache values 0..length (float32 or fp16 bits) -> float32 (kv_heads, head_dim, length)."""
    kv_heads, hd = values.shape[1], values.shape[2]
    vt = np.empty((kv_heads, hd, length), np.float32)
    for g in nb.prange(kv_heads):
        for j in range(length):
            for d in range(hd):
                vt[g, d, j] = as_float(values[j, g, d])
    return vt


@kernel(fastmath=True)
def _softmax_rows(s, length):
    """Each row of s[:, :length] -> its softmax, in place."""
    for r in range(s.shape[0]):
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


@kernel(fastmath=True)
def _one_token(q, keys, vt, i, g, length, scale, s, out):
    """Token i's n_rep query heads of KV head g over positions 0..length -> out; s is scratch."""
    n_rep, hd = s.shape[0], q.shape[2]
    for j in range(length):
        k = keys[j, g]                      # in L1 for the n_rep heads
        for r in range(n_rep):
            qv = q[i, g * n_rep + r]
            acc = np.float32(0.0)
            for d in range(hd):
                acc += qv[d] * as_float(k[d])
            s[r, j] = acc * scale
    _softmax_rows(s, length)
    o = out[i].reshape(-1, hd)[g * n_rep:(g + 1) * n_rep]
    for d in range(hd):
        v = vt[g, d, :length]
        for r in range(n_rep):
            p = s[r, :length]
            acc = np.float32(0.0)
            for j in range(length):
                acc += p[j] * v[j]
            o[r, d] = acc


@kernel(parallel=True, fastmath=True)
def _decode(q, keys, values, pos, scale, out):
    """attention() for a few tokens: positions split across threads (see the module's notes)."""
    n, n_heads, hd = q.shape
    n_rep = n_heads // keys.shape[1]
    length = pos + n
    step = max(32, -(-length // DECODE_CHUNKS))
    n_chunks = -(-length // step)
    scores = np.empty((n * n_heads, length), np.float32)
    for c in nb.prange(n_chunks):
        for j in range(c * step, min(length, (c + 1) * step)):
            for i in range(n):
                for h in range(n_heads):
                    if j > pos + i:             # causal: a later token's own position
                        scores[i * n_heads + h, j] = -np.inf
                        continue
                    k, qv = keys[j, h // n_rep], q[i, h]
                    acc = np.float32(0.0)
                    for d in range(hd):
                        acc += qv[d] * as_float(k[d])
                    scores[i * n_heads + h, j] = acc * scale
    for item in nb.prange(n * n_heads):
        _softmax_rows(scores[item:item + 1], length)
    partial = np.empty((n_chunks, n * n_heads, hd), np.float32)
    for c in nb.prange(n_chunks):
        part = partial[c]
        part[:] = 0.0
        for j in range(c * step, min(length, (c + 1) * step)):
            for item in range(n * n_heads):
                p, v, o = scores[item, j], values[j, (item % n_heads) // n_rep], part[item]
                for d in range(hd):
                    o[d] += p * as_float(v[d])
    for item in nb.prange(n * n_heads):
        o = out[item // n_heads, (item % n_heads) * hd:(item % n_heads + 1) * hd]
        o[:] = partial[0, item]
        for c in range(1, n_chunks):
            o += partial[c, item]


def attention(q, keys, values, pos, out):
    """q (n, n_heads, hd) float32 for positions pos..pos+n; keys, values (>= pos+n, kv_heads, hd)
    float32 or uint16 (fp16 bits); out (n, n_heads * hd) float32. Query head h reads KV head
    h // (n_heads / kv_heads); token i sees positions 0..pos+i. Two kernels, picked here rather than
    inside one, so a first run compiles them side by side (kernels/warmup.py)."""
    scale = np.float32(1.0 / math.sqrt(q.shape[2]))
    (_decode if q.shape[0] < DIRECT_TOKENS else _prefill)(q, keys, values, pos, scale, out)


@kernel(parallel=True, fastmath=True)
def _prefill(q, keys, values, pos, scale, out):
    """attention() for a prompt: (KV head, token) pairs across threads (see the module's notes)."""
    n, n_heads, hd = q.shape
    kv_heads = keys.shape[1]
    n_rep = n_heads // kv_heads
    vt = _values_transposed(values, pos + n)
    pairs = (n + 1) // 2
    scratch = np.empty((pairs * kv_heads, n_rep, pos + n), np.float32)
    for item in nb.prange(pairs * kv_heads):
        g, k = item // pairs, item % pairs   # head-major: a head's keys and values stay in L2 across its tokens
        _one_token(q, keys, vt, k, g, pos + k + 1, scale, scratch[item], out)
        if n - 1 - k != k:
            _one_token(q, keys, vt, n - 1 - k, g, pos + n - k, scale, scratch[item], out)
