"""The CUDA backend: numba-cuda kernels behind the same seam as the CPU kernels (Ops, the linears).

`require()` is called before anything here touches numba.cuda: it says in one line what is missing
(the numba-cuda package, or a usable GPU and driver). Numba's CUDA simulator
(NUMBA_ENABLE_CUDASIM=1, set before numba is imported) counts as a GPU: the tests run there.
"""
from __future__ import annotations

from ..errors import QllamaError


def require() -> None:
    """Raise QllamaError naming what is missing for --device cuda."""
    try:
        import numba_cuda  # noqa: F401  (NVIDIA's package; numba's own CUDA target is deprecated)
    except ImportError:
        raise QllamaError("--device cuda needs the numba-cuda package: pip install 'qllama[cuda]'") from None
    import numba
    from numba import cuda
    if numba.config.ENABLE_CUDASIM:
        return
    try:
        cuda.current_context()
    except Exception as e:      # CudaSupportError and friends: no driver, no device, bad driver
        reason = " ".join(str(e).split()).rstrip(": ")
        raise QllamaError(f"--device cuda: no usable NVIDIA GPU or driver ({reason})") from None
