"""Matrix kernels over the planes as stored: a GEMV for up to MAX_BATCH tokens (decode, batched
decode) and a shared-memory tiled GEMM for more (prefill), plus the row lookup of embeddings.

One template per kernel, specialised per family by its device function (dequant.py): the weight
is dequantized where it is read, activations stay float32, sums are float32.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from numba import cuda, float32

from .dequant import DEQUANT_RUN, RUN
from .launch import GEMV_ROWS, GEMV_THREADS, MAX_BATCH, THREADS, TILE, TILE_STRIDE, grid


def gemv_template(dequant):
    @cuda.jit
    def gemv(codes, qh, scales, mins, subs, wf, h2f, fmt, x, out):
        """out (n, rows) = x (n, n_in) @ W.T for n <= MAX_BATCH: GEMV_THREADS threads per row split
        its dot products, each reading every weight once for all n tokens."""
        n, n_in = x.shape
        rows = out.shape[1]
        partial = cuda.shared.array((MAX_BATCH, GEMV_ROWS, GEMV_THREADS), float32)
        acc = cuda.local.array(MAX_BATCH, float32)
        buf = cuda.local.array(RUN, float32)
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        for block in range(cuda.blockIdx.x, (rows + GEMV_ROWS - 1) // GEMV_ROWS, cuda.gridDim.x):
            row = block * GEMV_ROWS + ty
            for t in range(n):
                acc[t] = 0
            if row < rows:
                for k0 in range(tx * RUN, n_in, GEMV_THREADS * RUN):
                    count = min(RUN, n_in - k0)
                    dequant(codes, qh, scales, mins, subs, wf, h2f, fmt, row, k0, count, buf)
                    for i in range(count):
                        for t in range(n):
                            acc[t] += buf[i] * x[t, k0 + i]
            for t in range(n):
                partial[t, ty, tx] = acc[t]
            cuda.syncthreads()
            stride = GEMV_THREADS // 2
            while stride > 0:
                if tx < stride:
                    for t in range(n):
                        partial[t, ty, tx] += partial[t, ty, tx + stride]
                cuda.syncthreads()
                stride //= 2
            if tx == 0 and row < rows:
                for t in range(n):
                    out[t, row] = partial[t, ty, 0]
            cuda.syncthreads()
    return gemv


def gemm_template(dequant):
    @cuda.jit
    def gemm(codes, qh, scales, mins, subs, wf, h2f, fmt, x, out):
        """out (n, rows) = x @ W.T in TILE x TILE output tiles: each block dequantizes a TILE x TILE
        slice of weights into shared memory once for TILE tokens."""
        n, n_in = x.shape
        rows = out.shape[1]
        sw = cuda.shared.array((TILE, TILE_STRIDE), float32)   # a Python constant: the GPU compiler needs one
        sx = cuda.shared.array((TILE, TILE_STRIDE), float32)
        buf = cuda.local.array(1, float32)
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        row_tiles = (rows + TILE - 1) // TILE
        for tile in range(cuda.blockIdx.x, row_tiles * ((n + TILE - 1) // TILE), cuda.gridDim.x):
            r0, t0 = (tile % row_tiles) * TILE, (tile // row_tiles) * TILE
            acc = float32(0)
            for k0 in range(0, n_in, TILE):
                k = k0 + tx
                buf[0] = 0
                if r0 + ty < rows and k < n_in:
                    dequant(codes, qh, scales, mins, subs, wf, h2f, fmt, r0 + ty, k, 1, buf)
                sw[ty, tx] = buf[0]
                sx[ty, tx] = x[t0 + ty, k] if t0 + ty < n and k < n_in else float32(0)
                cuda.syncthreads()
                for kk in range(TILE):
                    acc += sw[tx, kk] * sx[ty, kk]
                cuda.syncthreads()
            if r0 + tx < rows and t0 + ty < n:
                out[t0 + ty, r0 + tx] = acc
    return gemm


def rows_template(dequant):
    @cuda.jit
    def lookup(codes, qh, scales, mins, subs, wf, h2f, fmt, ids, out):
        """out[i] = row ids[i] of W, dequantized (the embedding lookup), a run per thread."""
        n, n_in = out.shape
        buf = cuda.local.array(RUN, float32)
        runs = (n_in + RUN - 1) // RUN
        for i in range(cuda.grid(1), n * runs, cuda.gridsize(1)):
            t = i // runs
            k0 = (i - t * runs) * RUN
            count = min(RUN, n_in - k0)
            dequant(codes, qh, scales, mins, subs, wf, h2f, fmt, ids[t], k0, count, buf)
            for j in range(count):
                out[t, k0 + j] = buf[j]
    return lookup


@lru_cache(maxsize=None)
def kernels(family: str):
    """(gemv, gemm, lookup) of a family, compiled on first use."""
    dequant = DEQUANT_RUN[family]
    return gemv_template(dequant), gemm_template(dequant), rows_template(dequant)


def matmul(planes: tuple, family: str, rows: int, x) -> "cuda.devicearray.DeviceNDArray":
    """x (n, n_in) float32 on the device -> (n, rows) float32 on the device."""
    n = x.shape[0]
    out = cuda.device_array((n, rows), np.float32)
    gemv, gemm, _ = kernels(family)
    if n <= MAX_BATCH:
        gemv[grid(rows, GEMV_ROWS), (GEMV_THREADS, GEMV_ROWS)](*planes, x, out)
    else:
        gemm[grid(-(-rows // TILE) * -(-n // TILE), 1), (TILE, TILE)](*planes, x, out)
    return out


def lookup_rows(planes: tuple, family: str, n_in: int, ids):
    """ids (n,) int64 on the device -> (n, n_in) float32 rows on the device."""
    out = cuda.device_array((ids.shape[0], n_in), np.float32)
    kernels(family)[2][grid(out.size // RUN + 1, THREADS), THREADS](*planes, ids, out)
    return out
