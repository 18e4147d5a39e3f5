"""Block and grid sizes. Every kernel loops over its work (grid-stride), so any grid is correct:
on a GPU the grid covers the work; in Numba's simulator, where each thread is a Python thread,
blocks and grids are kept small so the tests on tiny shapes take seconds, not hours."""
from __future__ import annotations

import numba

SIMULATOR = bool(numba.config.ENABLE_CUDASIM)

GEMV_THREADS = 4 if SIMULATOR else 64     # threads sharing one row's dot product (a power of two)
GEMV_ROWS = 2 if SIMULATOR else 4         # rows per block
MAX_BATCH = 8                             # tokens a GEMV takes in one pass over the weights; more: GEMM
TILE = 4 if SIMULATOR else 16             # GEMM tile: TILE rows x TILE tokens per block
TILE_STRIDE = TILE + 1                    # shared tiles' row length: +1 spreads a column over the banks
THREADS = 8 if SIMULATOR else 256        # elementwise kernels
ROW_THREADS = 4 if SIMULATOR else 128     # rmsnorm and attention: threads per row or head (power of two)
MAX_GRID = 2 if SIMULATOR else 65535


def grid(n_items: int, per_block: int) -> int:
    return max(1, min(-(-n_items // per_block), MAX_GRID))
