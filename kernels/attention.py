"""Attention over the KV cache (Numba): grouped-query, causal, reading float16 or float32 keys/values.

Prefill: a block of BLOCK tokens at a time, as two small matrix products in float_tile_ir.py's
4 x 16 tiles: scores = (the block's queries, every query head of one KV head) x keys, then, after
the causal softmax of each row, out = probabilities x values. The keys and values are converted
once per call into float32 scratch: keys transposed (kv_heads, head_dim, positions) and values
(kv_heads, positions, head_dim), so a tile reads rows of both. A column block of keys (or values)
is taken by every row tile in turn while it is in L1. Against a dot product per query and key,
each with a horizontal sum: 1.8-2.6x at 512 tokens (TinyLlama, 7B, Llama 3 8B shapes;
bench/attention_speed.py). Threads take the (KV head, token block) items in PREFILL_SHARES
shares, head by head, so a head's keys and values stay in L2 across its blocks; block i is paired
with block n-1-i so that causal rows of different lengths even out across threads.
Decode (a token or a few): threads split the positions, so the cache is read front to back (one
thread item per query head strided through it at 0.6x); the scores of all heads are kept, the
softmax runs per head, and each thread's share of the weighted values is summed at the end.
"""
from __future__ import annotations

import math

import numba as nb
import numpy as np

from .exp import exp_f32
from .float_tile_ir import TILE_COLS, TILE_ROWS, float_tile
from .jit import kernel
from .vector_ir import as_float

DIRECT_TOKENS = 4     # fewer tokens than this: the decode kernel (no value scratch)
DECODE_CHUNKS = 16    # decode's thread items: position ranges of at least 32
# prefill's thread items run in this many shares, each with its scratch: scratch per item was 16 MB
# of fresh memory every call at the 7B shape, per share it is 0.5 MB (1.6-1.75x there)
PREFILL_SHARES = 32
BLOCK = 8             # prefill's tokens per thread item: two row tiles (MHA) share each key block in L1 (7B: 1.2x of 4)


@kernel(parallel=True, fastmath=True)
def _keys_values(keys, values, length, cols, hd_padded):
    """Cache rows 0..length (float32 or fp16 bits) -> float32 keys transposed (kv_heads, head_dim,
    cols) and values (kv_heads, length, hd_padded), zero in the padding, which the tiles read."""
    kv_heads, hd = values.shape[1], values.shape[2]
    kt = np.empty((kv_heads, hd, cols), np.float32)
    vs = np.empty((kv_heads, length, hd_padded), np.float32)
    for g in nb.prange(kv_heads):
        for j in range(length):
            for d in range(hd):
                kt[g, d, j] = as_float(keys[j, g, d])
                vs[g, j, d] = as_float(values[j, g, d])
            vs[g, j, hd:] = 0.0
        kt[g, :, length:] = 0.0
    return kt, vs


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
def _token_block(q, kt, vs, g, block, pos, scale, qs, s, o, out):
    """Tokens block*BLOCK.. (up to BLOCK) of KV head g: their n_rep query heads are the rows of qs,
    s (scores, then probabilities) and o, which float_tile fills four rows at a time."""
    n, hd = q.shape[0], q.shape[2]
    n_rep = qs.shape[0] // BLOCK
    cols_all, hd_padded = kt.shape[2], vs.shape[2]
    first = block * BLOCK
    count = min(BLOCK, n - first)
    end = pos + first + count                   # the keys the last token sees
    cols = -(-end // TILE_COLS) * TILE_COLS
    for u in range(BLOCK):
        for r in range(n_rep):
            row = qs[u * n_rep + r]
            for d in range(hd):
                row[d] = q[first + u, g * n_rep + r, d] * scale if u < count else np.float32(0.0)
    for j in range(0, cols, TILE_COLS):         # a column block of the keys stays in L1 for every row tile
        for i in range(0, qs.shape[0], TILE_ROWS):
            float_tile(qs, i * hd, hd, kt, g * hd * cols_all + j, cols_all, hd, s, i * cols_all + j, cols_all)
    for u in range(BLOCK):
        seen = pos + first + u + 1              # causal: this token's keys
        for r in range(n_rep):
            row = u * n_rep + r
            if u < count:
                _softmax_rows(s[row:row + 1], seen)
                s[row, seen:end] = 0.0
            else:
                s[row, :end] = 0.0
    for d in range(0, hd_padded, TILE_COLS):
        for i in range(0, qs.shape[0], TILE_ROWS):
            float_tile(s, i * cols_all, cols_all, vs, g * vs.shape[1] * hd_padded + d, hd_padded, end, o,
                       i * hd_padded + d, hd_padded)
    for u in range(count):
        for r in range(n_rep):
            h = g * n_rep + r
            out[first + u, h * hd:(h + 1) * hd] = o[u * n_rep + r, :hd]


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
    """attention() for a prompt: (KV head, token block) pairs across threads (see the module's notes)."""
    n, n_heads, hd = q.shape
    kv_heads = keys.shape[1]
    n_rep = n_heads // kv_heads
    length = pos + n
    cols = -(-length // TILE_COLS) * TILE_COLS
    kt, vs = _keys_values(keys, values, length, cols, -(-hd // TILE_COLS) * TILE_COLS)
    blocks = -(-n // BLOCK)
    pairs = (blocks + 1) // 2
    items = pairs * kv_heads
    shares = min(items, PREFILL_SHARES)
    qs = np.empty((shares, BLOCK * n_rep, hd), np.float32)
    s = np.empty((shares, BLOCK * n_rep, cols), np.float32)
    o = np.empty((shares, BLOCK * n_rep, vs.shape[2]), np.float32)
    for c in nb.prange(shares):
        for item in range(c * items // shares, (c + 1) * items // shares):
            g, k = item // pairs, item % pairs   # head-major: a head's keys and values stay in L2 across its blocks
            _token_block(q, kt, vs, g, k, pos, scale, qs[c], s[c], o[c], out)
            if blocks - 1 - k != k:
                _token_block(q, kt, vs, g, blocks - 1 - k, pos, scale, qs[c], s[c], o[c], out)
