"""`kernel`: numba.njit with an on-disk cache that a change to any kernel source invalidates.

Numba keys a cached function by its own file's timestamp, but these kernels inline LLVM IR written
in vector_ir.py, so an edited vector_ir.py would leave stale machine code in the cache of every
file that uses it. The cache therefore lives in a folder named by a hash of all kernels/*.py and
the format table's files
(under qllama's cache folder, so a read-only install still caches). A folder that cannot be made
falls back to Numba's usual places. `is_cached` asks that cache whether a kernel is compiled yet
(kernels/warmup.py: the compile message, and the worker processes that fill the cache).
"""
from __future__ import annotations

import hashlib
import pickle
from contextlib import contextmanager
from pathlib import Path

import numba
import numba.core.config

from ..paths import cache_dir
from ..quantize import formats, kquants, planes

# the kernels' sources and the format table, whose order numbers the kernels (vector_ir.variant)
_SOURCES = sorted(Path(__file__).parent.glob("*.py")) + [Path(m.__file__) for m in (formats, kquants, planes)]
SOURCE_HASH = hashlib.sha256(b"".join(p.read_bytes() for p in _SOURCES)).hexdigest()


# fast-math without reassociation. With it, a parallel kernel compiled in this process summed in
# another order than the same kernel loaded from Numba's cache (rmsnorm, measured): a first run,
# which compiles, gave other logits than every later run. Without it a sum runs in source order.
NO_REASSOC = {"nnan", "ninf", "nsz", "arcp", "contract", "afn"}


@contextmanager
def _cache_folder():
    """Numba picks a function's cache folder when it is decorated: point it at ours meanwhile."""
    previous = numba.core.config.CACHE_DIR
    numba.core.config.CACHE_DIR = str(cache_dir() / "numba" / f"{numba.__version__}-{SOURCE_HASH[:16]}")
    try:
        yield
    finally:
        numba.core.config.CACHE_DIR = previous


def kernel(**options):
    """@kernel(parallel=True, fastmath=True, ...): numba.njit(cache=True, **options) into our folder.
    Float division follows numpy (inf or nan, no ZeroDivisionError): Python's check is a branch in
    every loop that divides, and it kept LLVM from vectorizing them (SwiGLU's gate: 10x slower)."""
    def decorate(fn):
        if fn.__closure__:
            # Numba names a function's cache index by its qualname and line, so every closure of one
            # def (matmul.py: a kernel per format) would share one index, and two processes compiling
            # two of them would both write it (and both number their data file .1.nbc)
            cells = pickle.dumps([c.cell_contents for c in fn.__closure__])
            fn.__qualname__ += "_" + hashlib.sha256(cells).hexdigest()[:12]
        with _cache_folder():
            return numba.njit(cache=True, **{"error_model": "numpy", **options})(fn)
    return decorate


def is_cached(dispatcher, sig: tuple) -> bool:
    """Whether Numba's on-disk cache holds `dispatcher`'s machine code for the argument types `sig`:
    its index lists the key Numba's own lookup would load (Dispatcher.compile -> Cache.load_overload,
    less the loading). Numba's private API; tests/test_warmup.py checks it against a cold and a warm cache."""
    cache = dispatcher._cache
    return cache._index_key(sig, dispatcher.targetctx.codegen()) in cache._cache_file._load_index()


def by_rows(serial, parallel, threads_from: int = 8):
    """A function that runs `serial` for fewer than `threads_from` rows (the first argument's length:
    a decode step, where waking the threads costs more than the work) and `parallel` otherwise.
    The first call runs both, so both are compiled (or loaded) before a reply's first token and
    neither in the middle of it; the kernels are pure, so running one twice changes nothing."""
    ready = False

    def call(*args):
        nonlocal ready
        if not ready:
            ready = True
            serial(*args)
            parallel(*args)
            return
        (parallel if len(args[0]) >= threads_from else serial)(*args)
    return call
