"""DeviceKVCache: the KV cache in GPU memory, with KVCache's interface (qllama/cache.py).

float32 keys and values (n_layers, ctx, n_kv_heads, head_dim); a step copies its new rows in on
the device and attention reads the layer's first pos+n rows in place.
"""
from __future__ import annotations

import numpy as np
from numba import cuda

from ..config import ModelArgs
from ..errors import QllamaError


class DeviceKVCache:
    def __init__(self, args: ModelArgs, ctx: int, dtype=np.float32):
        # dtype: always float32 here (Model refuses --kv-cache f16 with --device cuda)
        self.ctx = ctx
        shape = (args.n_layers, ctx, args.n_kv_heads, args.head_dim)
        self.k = cuda.device_array(shape, np.float32)
        self.v = cuda.device_array(shape, np.float32)

    def update(self, layer: int, pos: int, k, v):
        """Store k, v (Tensors (n, n_kv_heads, head_dim)) at positions pos..pos+n; return the
        device arrays of all keys and values so far."""
        n = k.shape[0]
        if pos + n > self.ctx:
            raise QllamaError(f"context full: {pos + n} tokens do not fit in a context of {self.ctx}")
        self.k[layer, pos:pos + n].copy_to_device(k.a)
        self.v[layer, pos:pos + n].copy_to_device(v.a)
        return self.k[layer, :pos + n], self.v[layer, :pos + n]

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes
