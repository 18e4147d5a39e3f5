"""This machine's physical limits, so speeds can be given as fractions of them.

- read bandwidth: a parallel Numba sum over 1 GiB of float32 (every byte read once), best of 5.
  Each chunk is summed through a slice: indexing `a[i]` over a computed range kept LLVM from
  vectorizing, and the scalar loop then measured the adder (9 GB/s), not the memory (~80 GB/s);
- float32 GEMM rate: numpy's BLAS on 2048 x 2048 matrices, best of 5.

    python bench/machine_limits.py [--threads N]
"""
from __future__ import annotations

import argparse
import time

import numba as nb
import numpy as np


@nb.njit(parallel=True, fastmath=True, cache=True)
def parallel_sum(a):
    n_chunks = 64
    step = (a.shape[0] + n_chunks - 1) // n_chunks
    partial = np.zeros(n_chunks, np.float32)
    for c in nb.prange(n_chunks):
        chunk = a[c * step:min((c + 1) * step, a.shape[0])]
        s = np.float32(0.0)
        for i in range(chunk.shape[0]):
            s += chunk[i]
        partial[c] = s
    return partial.sum()


def best_of(fn, n=5) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        nb.set_num_threads(args.threads)
    a = np.ones(1 << 28, np.float32)                      # 1 GiB
    parallel_sum(a[:1024])
    read = a.nbytes / best_of(lambda: parallel_sum(a)) / 1e9
    m = np.random.default_rng(0).standard_normal((2048, 2048)).astype(np.float32)
    m @ m
    gemm = 2 * 2048 ** 3 / best_of(lambda: m @ m) / 1e9
    print(f"threads {nb.get_num_threads()}: read bandwidth {read:.1f} GB/s, float32 GEMM {gemm:.0f} GFLOP/s")


if __name__ == "__main__":
    main()
