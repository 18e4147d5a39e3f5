"""The 8-row interleaved layout of planes (see interleaved_ir.py), to and from the file's.

Rows 8b..8b+7 (a block) keep their bytes in the block's own span of the plane, reordered: per
group, for each four-byte chunk of the codes, that chunk of each of the eight rows in turn; the
scales (and mins) of a block become (group, row). Rows past the last whole block stay as they
are, so the same arrays serve the interleaved kernel (whole blocks) and the per-row one (the rest).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

ROWS = 8
# int8 activation rows of a width that is a multiple of 4096 (a 7B model's 4096) get one cache line
# more (the kernels take the row stride from the array's shape and read only the codes). Unpadded,
# a prompt's matmul took 1.07-1.11x the time (Q4_0, Q4_K, Q6_K; bench/activation_stride.py): the
# eight rows of a tile of tokens map to one set of the 8-way L1 cache, we infer, as only multiples
# of 4096 gained. Other widths are left alone: a padded 5632 ran 5% slower.
ACT_ROW_PAD = 64


def activation_codes(n: int, width: int) -> np.ndarray:
    """An int8 array for the codes of n activation rows of `width`: (n, width), or wider (ACT_ROW_PAD)."""
    return np.empty((n, width + (ACT_ROW_PAD if width % 4096 == 0 else 0)), np.int8)


@dataclass
class Prepared:
    """A matrix's planes as one kernels module (matmul.py, kquant.py) lays them out for its kernel."""
    planes: tuple            # the kernel's plane arguments, in its order
    matmul: Callable         # matmul(*planes, xq, xd, xsum, out): out (tokens, out_rows)
    out_rows: int            # rows the kernel writes: the matrix's, or padded to whole blocks
    interleaved: bool
    variant: int             # vector_ir.variant: format and path
    finite: bool = True      # every fp16 scale and min is finite (repack.pack counts the others)


def interleave_bytes(plane: np.ndarray, block_bytes: int, chunk: int) -> np.ndarray:
    """(rows, n_blocks * block_bytes) uint8, rows a multiple of 8 -> a new array, same shape: per
    block of eight rows and per format block, each `chunk` bytes of the eight rows in turn. The
    numpy statement of the layout, which repack.py's kernel makes at load (tests/test_repack.py)."""
    rows, width = plane.shape
    blocks = plane.reshape(rows // ROWS, ROWS, width // block_bytes, block_bytes // chunk, chunk)
    return np.ascontiguousarray(blocks.transpose(0, 2, 3, 1, 4)).reshape(rows, width)


def row_bytes(plane: np.ndarray, block_bytes: int, chunk: int, r: int) -> np.ndarray:
    """Row r of a plane interleaved by interleave_bytes, in the file's layout."""
    b, i = divmod(r, ROWS)
    block = plane[b * ROWS:(b + 1) * ROWS].reshape(-1, block_bytes // chunk, ROWS, chunk)
    return np.ascontiguousarray(block[:, :, i, :]).reshape(-1)


def whole_rows(a: np.ndarray) -> int:
    """The rows of a plane in whole blocks, which are interleaved; the rest are as stored."""
    return a.shape[0] // ROWS * ROWS


def row_codes(codes: np.ndarray, group_bytes: int, r: int) -> np.ndarray:
    """Row r of interleaved codes, in the file's layout."""
    if r >= whole_rows(codes):
        return codes[r]
    b, i = divmod(r, ROWS)
    block = codes[b * ROWS:(b + 1) * ROWS].reshape(-1, group_bytes // 4, ROWS, 4)
    return np.ascontiguousarray(block[:, :, i, :]).reshape(-1)


def row_groups(per_group: np.ndarray, r: int) -> np.ndarray:
    """Row r of interleaved scales or mins, in the file's layout."""
    if r >= whole_rows(per_group):
        return per_group[r]
    b, i = divmod(r, ROWS)
    return np.ascontiguousarray(per_group[b * ROWS:(b + 1) * ROWS].reshape(-1, ROWS)[:, i])
