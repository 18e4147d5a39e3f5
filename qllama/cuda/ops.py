"""The CUDA Ops: the steps of forward() between the matmuls, on device Tensors.

RoPE's cos/sin come from the host (forward computes them once per pass for its positions): they
are uploaded on the first layer's call and reused by the others, which pass the same arrays.
"""
from __future__ import annotations

import numpy as np
from numba import cuda

from . import elementwise
from .attention import attention
from .launch import ROW_THREADS, THREADS, grid
from .tensor import Tensor, empty


class CudaOps:
    def __init__(self):
        self._rope_host = None          # the host cos array last uploaded, and its device copies
        self._rope_device = None
        self._scores = cuda.device_array(1, np.float32)    # attention's scratch, grown as needed

    def rmsnorm(self, x: Tensor, weight, eps: float) -> Tensor:
        out = empty(x.shape)
        elementwise.rmsnorm[grid(len(x), 1), ROW_THREADS](x.a, weight, np.float32(eps), out.a)
        return out

    def rope(self, x: Tensor, cos: np.ndarray, sin: np.ndarray) -> Tensor:
        if self._rope_host is not cos:
            self._rope_host, self._rope_device = cos, (cuda.to_device(cos), cuda.to_device(sin))
        out = empty(x.shape)
        n, heads, hd = x.shape
        elementwise.rope[grid(n * heads * hd // 2, THREADS), THREADS](x.a, *self._rope_device, out.a)
        return out

    def silu_mul(self, gate: Tensor, up: Tensor) -> Tensor:
        out = empty(gate.shape)
        elementwise.silu_mul[grid(out.a.size, THREADS), THREADS](gate.a.ravel(), up.a.ravel(), out.a.ravel())
        return out

    def attend(self, q: Tensor, keys, values, pos: int, n_rep: int) -> Tensor:
        n, heads, hd = q.shape
        need = n * heads * (pos + n)
        if self._scores.size < need:
            self._scores = cuda.device_array(max(need, 2 * self._scores.size), np.float32)
        scores = self._scores[:need].reshape(n, heads, pos + n)
        out = empty((n, heads * hd))
        attention[grid(n * heads, 1), ROW_THREADS](q.a, keys, values, pos, n_rep, scores, out.a)
        return out

    def concat(self, parts: list[Tensor]) -> Tensor:
        out = empty((sum(len(p) for p in parts),) + parts[0].shape[1:])
        start = 0
        for p in parts:
            out.a[start:start + len(p)].copy_to_device(p.a)
            start += len(p)
        return out
