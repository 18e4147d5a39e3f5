"""Make Numba's CUDA simulator fit for running these kernels in tests (NUMBA_ENABLE_CUDASIM=1 only).

The simulator runs each CUDA thread as a Python thread and polls them from the main one. Two
changes, neither touching what a kernel computes:
- a 20 us thread switch interval instead of CPython's 5 ms, with which the poller holds the GIL
  most of the time (the tests run about 6x faster);
- a lock around its shared-array allocation, which is not thread-safe: two threads of a block can
  each create "the" shared array and never see each other's writes (a wrong reduction, now and
  then, made likely by the short switch interval). Shared arrays are told apart by the caller's
  source line, as the simulator does.
"""
from __future__ import annotations

import sys
import threading

import numpy as np


def prepare() -> None:
    import numba
    if not numba.config.ENABLE_CUDASIM:
        raise RuntimeError("not running in Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1)")
    from numba.cuda.simulator import kernelapi
    from numba.np import numpy_support
    from numba.core import types
    sys.setswitchinterval(2e-5)
    original, lock = kernelapi.FakeCUDAShared.array, threading.Lock()

    def array(self, shape, dtype, alignment=None):
        if shape == 0 or alignment is not None:    # dynamic shared memory: no per-line allocation
            return original(self, shape, dtype, alignment)
        if isinstance(dtype, types.Type):
            dtype = numpy_support.as_dtype(dtype)
        caller = sys._getframe(1)
        key = (caller.f_code.co_filename, caller.f_lineno)
        with lock:
            found = self._allocations.get(key)
            if found is None:
                found = self._allocations[key] = np.empty(shape, dtype)
        return found

    kernelapi.FakeCUDAShared.array = array
