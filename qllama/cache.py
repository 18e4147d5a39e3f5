"""KVCache: the keys and values of every past position, preallocated for the whole context."""
from __future__ import annotations

import mmap
from dataclasses import dataclass

import numpy as np

from .config import ModelArgs
from .errors import QllamaError


class KVCache:
    """k, v: (n_layers, ctx, n_kv_heads, head_dim); the model knows how many positions are filled.

    Rows are positions so a decode step appends one contiguous row per layer, and attention reads
    one contiguous (length, n_kv_heads, head_dim) block.
    """

    def __init__(self, args: ModelArgs, ctx: int, dtype=np.float32):
        self.ctx = ctx
        shape = (args.n_layers, ctx, args.n_kv_heads, args.head_dim)
        self.k = lazy_zeros(shape, dtype)
        self.v = lazy_zeros(shape, dtype)

    def update(self, layer: int, pos: int, k: np.ndarray, v: np.ndarray):
        """Store k, v (n, n_kv_heads, head_dim) at positions pos..pos+n; return all keys and values so far."""
        n = k.shape[0]
        if pos + n > self.ctx:
            raise QllamaError(f"context full: {pos + n} tokens do not fit in a context of {self.ctx}")
        self.k[layer, pos:pos + n] = k
        self.v[layer, pos:pos + n] = v
        return self.k[layer, :pos + n], self.v[layer, :pos + n]

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes


@dataclass(frozen=True)
class Span:
    """One sequence's share of a forward pass: its n tokens start at position pos of its cache."""
    cache: KVCache
    pos: int
    n: int


def lazy_zeros(shape, dtype) -> np.ndarray:
    """Zeros in anonymous memory that the OS provides 4 KiB at a time on first write. numpy advises
    huge pages for large arrays, so each layer's first cache row would make 2 MiB resident: the
    whole cache, whatever the context in use."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if nbytes == 0:
        return np.zeros(shape, dtype)
    return np.frombuffer(mmap.mmap(-1, nbytes), dtype=dtype).reshape(shape)
