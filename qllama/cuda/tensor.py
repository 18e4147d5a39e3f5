"""Tensor: a float32 activation in device memory, with the few numpy operations forward() uses on
activations (shape, len, reshape, +, row slices and row gathers), so the one forward pass runs on
either backend. np.asarray(t) copies it to the host (the logits, once per pass)."""
from __future__ import annotations

import numpy as np
from numba import cuda

from . import elementwise
from .launch import THREADS, grid


class Tensor:
    def __init__(self, a):
        self.a = a                      # a C-contiguous DeviceNDArray

    @property
    def shape(self) -> tuple[int, ...]:
        return self.a.shape

    def __len__(self) -> int:
        return self.a.shape[0]

    def reshape(self, *shape) -> "Tensor":
        return Tensor(self.a.reshape(*shape))

    def __add__(self, other: "Tensor") -> "Tensor":
        if other.shape != self.shape:
            raise ValueError(f"shapes {self.shape} and {other.shape} differ")
        out = cuda.device_array(self.shape, np.float32)
        elementwise.add[grid(out.size, THREADS), THREADS](self.a.ravel(), other.a.ravel(), out.ravel())
        return Tensor(out)

    def __getitem__(self, index) -> "Tensor":
        if isinstance(index, slice):    # rows start..stop: a view
            return Tensor(self.a[index])
        ids = cuda.to_device(np.ascontiguousarray(index, dtype=np.int64))
        out = cuda.device_array((len(ids), self.shape[1]), np.float32)
        elementwise.gather_rows[grid(out.size, THREADS), THREADS](self.a, ids, out)
        return Tensor(out)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        host = self.a.copy_to_host()
        return host if dtype is None else host.astype(dtype, copy=False)


def empty(shape) -> Tensor:
    return Tensor(cuda.device_array(shape, np.float32))
