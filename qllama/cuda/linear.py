"""The matrices of a model on the GPU, with the CPU linears' interface: `lin(x)`, `lin.rows(ids)`.

CudaQuantLinear uploads a format's planes once, as stored (fp16 scales as their uint16 bits);
CudaDenseLinear a float checkpoint's float32 matrix. Both multiply device Tensors (tensor.py).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from numba import cuda

from ..kernels.repack import in_row_order, stored_planes
from ..quantize.tensor import QuantizedTensor
from .dequant import family_of, format_numbers, half_table
from .matmul import lookup_rows, matmul
from .tensor import Tensor

NONE_U8, NONE_U16 = np.zeros((1, 1), np.uint8), np.zeros((1, 1), np.uint16)
NONE_F32 = np.zeros((1, 1), np.float32)


@lru_cache(maxsize=None)
def device_half_table():
    return cuda.to_device(half_table())


class CudaLinear:
    """planes: (codes, qh, scales, mins, subscales, dense) on the device, + the fp16 table and fmt."""

    def __init__(self, fmt, shape: tuple[int, int], arrays: tuple, nbytes: int, finite: bool):
        self.fmt, self.shape, self.nbytes, self.finite = fmt, shape, nbytes, finite
        self.family = family_of(fmt)
        self.planes = tuple(cuda.to_device(np.ascontiguousarray(a)) for a in arrays) + (
            device_half_table(), format_numbers(fmt))

    def __call__(self, x: Tensor) -> Tensor:                  # (n, in) -> (n, out)
        return Tensor(matmul(self.planes, self.family, self.shape[0], x.a))

    def rows(self, ids) -> Tensor:
        ids = cuda.to_device(np.ascontiguousarray(ids, dtype=np.int64))
        return Tensor(lookup_rows(self.planes, self.family, self.shape[1], ids))


class CudaQuantLinear(CudaLinear):
    def __init__(self, q: QuantizedTensor | list):
        """q: a QuantizedTensor, or one matrix's stored bytes (a list of one kernels/repack.Stored:
        the GPU fuses nothing)."""
        (part,) = [stored_planes(q)] if isinstance(q, QuantizedTensor) else q
        q, bad = in_row_order(part)
        p = q.planes
        u16 = [p[name].view(np.uint16) if name in p else NONE_U16 for name in ("scales", "mins")]
        super().__init__(q.fmt, q.shape, (p["qweight"], p.get("qh", NONE_U8), u16[0], u16[1],
                                          p.get("subscales", NONE_U8), NONE_F32), q.nbytes, bad == 0)


class CudaDenseLinear(CudaLinear):
    def __init__(self, weight: np.ndarray):
        weight = np.ascontiguousarray(weight, dtype=np.float32)
        super().__init__(None, weight.shape, (NONE_U8, NONE_U8, NONE_U16, NONE_U16, NONE_U8, weight),
                         weight.nbytes, bool(np.isfinite(weight).all()))
