"""Block-wide reductions for the row kernels (RMSNorm, attention's softmax): every thread of the
block calls them after writing its partial to buf[threadIdx.x]; each gets the result back."""
from __future__ import annotations

from numba import cuda

from .launch import ROW_THREADS


@cuda.jit(device=True)
def block_sum(buf, tx):
    cuda.syncthreads()
    stride = ROW_THREADS // 2
    while stride > 0:
        if tx < stride:
            buf[tx] += buf[tx + stride]
        cuda.syncthreads()
        stride //= 2
    total = buf[0]
    cuda.syncthreads()      # buf is free again only once every thread has read the result
    return total


@cuda.jit(device=True)
def block_max(buf, tx):
    cuda.syncthreads()
    stride = ROW_THREADS // 2
    while stride > 0:
        if tx < stride:
            buf[tx] = max(buf[tx], buf[tx + stride])
        cuda.syncthreads()
        stride //= 2
    best = buf[0]
    cuda.syncthreads()
    return best
