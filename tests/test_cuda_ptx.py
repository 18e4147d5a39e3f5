"""The CUDA kernels compiled for a real GPU, without one: NVIDIA's compiler (NVVM, from the
nvidia-* wheels that `qllama[cuda]` installs) turns every kernel, at the argument types the
backend launches it with, into PTX. The simulator (test_cuda_sim.py) runs the kernels as Python
and accepts code the GPU compiler refuses; this is where such code fails. The hot kernels must
also keep to float32: a double-precision instruction runs at 1/32 to 1/64 of the rate on
consumer cards."""
import math
import re
from types import SimpleNamespace

import numba.cuda.dispatcher
import pytest
from numba import cuda
from numba.core import types

from qllama.cuda import attention, elementwise, matmul
from qllama.cuda.dequant import DEQUANT_RUN, format_numbers

CC = (7, 5)     # Turing, the oldest architecture CUDA 13 still builds for


def array(dtype, ndim):
    return types.Array(dtype, ndim, "C")


F32_1, F32_2, F32_3 = array(types.float32, 1), array(types.float32, 2), array(types.float32, 3)
I64_1 = array(types.int64, 1)
# as CudaLinear.planes: codes, qh, scales, mins, subscales, dense, the fp16 table, format numbers
PLANES = (array(types.uint8, 2), array(types.uint8, 2), array(types.uint16, 2), array(types.uint16, 2),
          array(types.uint8, 2), F32_2, F32_1, types.UniTuple(types.int64, len(format_numbers(None))))

KERNELS = {
    "add": (elementwise.add, (F32_1, F32_1, F32_1)),
    "silu_mul": (elementwise.silu_mul, (F32_1, F32_1, F32_1)),
    "gather_rows": (elementwise.gather_rows, (F32_2, I64_1, F32_2)),
    "rmsnorm": (elementwise.rmsnorm, (F32_2, F32_1, types.float32, F32_2)),
    "rope": (elementwise.rope, (F32_3, F32_2, F32_2, F32_3)),
    "attention": (attention.attention, (F32_3, F32_3, F32_3, types.int64, types.int64, F32_3, F32_2)),
}
for family in DEQUANT_RUN:
    gemv, gemm, lookup = matmul.kernels(family)
    KERNELS[f"gemv_{family}"] = (gemv, PLANES + (F32_2, F32_2))
    KERNELS[f"gemm_{family}"] = (gemm, PLANES + (F32_2, F32_2))
    KERNELS[f"lookup_{family}"] = (lookup, PLANES + (I64_1, F32_2))

# a double-precision arithmetic, conversion or math instruction (loads and moves of .f64 aside)
F64_MATH = re.compile(r"^\s*(add|sub|mul|fma|div|rcp|sqrt|rsqrt|ex2|lg2|min|max|setp|cvt)[.\w]*\.f64\b",
                      re.MULTILINE)


@pytest.fixture(autouse=True)
def no_device(monkeypatch):
    # a device function called from a kernel is compiled for the current device's architecture:
    # with no GPU, name the one compile_ptx targets
    monkeypatch.setattr(numba.cuda.dispatcher, "get_current_device",
                        lambda: SimpleNamespace(compute_capability=CC))


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_kernel_compiles_to_float32_ptx(name, no_device):
    kernel, signature = KERNELS[name]
    ptx, _ = cuda.compile_ptx(kernel.py_func, signature, cc=CC)
    assert ".entry" in ptx
    assert not F64_MATH.findall(ptx), F64_MATH.findall(ptx)[:5]


def test_the_float64_check_sees_double_math(no_device):
    def root(a):
        a[0] = math.sqrt(a[0] * 0.1)    # a float64 constant makes the product and the root float64
    ptx, _ = cuda.compile_ptx(root, (F32_1,), cc=CC)
    assert F64_MATH.findall(ptx)
