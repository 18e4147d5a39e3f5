"""The CUDA Backend for Model: its linear classes, where vectors and KV caches live, and its Ops."""
from __future__ import annotations

from . import require


def cuda_backend():
    require()       # one clear line when numba-cuda or a GPU is missing, before numba.cuda is touched
    from numba import cuda

    from ..model import Backend, Ops
    from .cache import DeviceKVCache
    from .linear import CudaDenseLinear, CudaQuantLinear
    from .ops import CudaOps
    ops = CudaOps()
    return Backend("cuda", CudaQuantLinear, CudaDenseLinear, cuda.to_device, DeviceKVCache,
                   Ops(ops.rmsnorm, ops.rope, ops.silu_mul, ops.attend, ops.concat), fuses=False)
