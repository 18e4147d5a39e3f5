"""The small kernels between the matmuls: residual add, SwiGLU, RMSNorm, RoPE, row gather.

Same math as qllama/model.py's numpy reference (rmsnorm, silu, rope.apply_rope), in float32.
"""
from __future__ import annotations

import math

from numba import cuda, float32

from .block_reduce import block_sum
from .launch import ROW_THREADS


@cuda.jit
def add(a, b, out):
    """Flat arrays: out = a + b."""
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        out[i] = a[i] + b[i]


@cuda.jit
def silu_mul(gate, up, out):
    """Flat arrays: out = silu(gate) * up."""
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        g = gate[i]
        out[i] = g / (float32(1) + math.exp(-g)) * up[i]


@cuda.jit
def gather_rows(x, ids, out):
    """out[i] = x[ids[i]] for (n, dim) arrays."""
    n, dim = out.shape
    for i in range(cuda.grid(1), n * dim, cuda.gridsize(1)):
        t = i // dim
        out[t, i - t * dim] = x[ids[t], i - t * dim]


@cuda.jit
def rmsnorm(x, weight, eps, out):
    """One block per row (grid-stride): x / sqrt(mean(x^2) + eps) * weight."""
    partial = cuda.shared.array(ROW_THREADS, float32)
    n, dim = x.shape
    tx = cuda.threadIdx.x
    for row in range(cuda.blockIdx.x, n, cuda.gridDim.x):
        s = float32(0)
        for k in range(tx, dim, ROW_THREADS):
            s += x[row, k] * x[row, k]
        partial[tx] = s
        inv = float32(1) / math.sqrt(block_sum(partial, tx) / float32(dim) + eps)
        for k in range(tx, dim, ROW_THREADS):
            out[row, k] = x[row, k] * inv * weight[k]


@cuda.jit
def rope(x, cos, sin, out):
    """x, out: (n, heads, head_dim); cos, sin: (n, head_dim/2). Rotate-half pairs (i, i + half)."""
    n, heads, hd = x.shape
    half = hd // 2
    for i in range(cuda.grid(1), n * heads * half, cuda.gridsize(1)):
        t = i // (heads * half)
        h = (i // half) % heads
        j = i % half
        c, s = cos[t, j], sin[t, j]
        x1, x2 = x[t, h, j], x[t, h, j + half]
        out[t, h, j] = x1 * c - x2 * s
        out[t, h, j + half] = x2 * c + x1 * s
