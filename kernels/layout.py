"""The 8-row interleaved layout of planes (see interleaved_ir.py), to and from the file's.

Rows 8b..8b+7 (a block) keep their bytes in the block's own span of the plane, reordered: per
group, for each four-byte chunk of the codes, that chunk of each of the eight rows in turn; the
scales (and mins) of a block become (group, row). Rows past the last whole block stay as they
are, so the same arrays serve the interleaved kernel (whole blocks) and the per-row one (the rest).
"""
from __future__ import annotations

import numpy as np

ROWS = 8


def whole_rows(a: np.ndarray) -> int:
    """The rows of a plane in whole blocks, which are interleaved; the rest are as stored."""
    return a.shape[0] // ROWS * ROWS


def interleave_codes(codes: np.ndarray, group_bytes: int) -> np.ndarray:
    """(rows, n_groups * group_bytes) codes -> a new array, same shape, interleaved."""
    whole, out = whole_rows(codes), np.empty_like(codes)
    n_groups = codes.shape[1] // group_bytes
    blocks = codes[:whole].reshape(-1, ROWS, n_groups, group_bytes // 4, 4)
    out[:whole] = blocks.transpose(0, 2, 3, 1, 4).reshape(whole, codes.shape[1])
    out[whole:] = codes[whole:]
    return out


def interleave_groups(per_group: np.ndarray) -> np.ndarray:
    """(rows, n_groups) scales or mins -> a new array, same shape, each block's (row, group) -> (group, row)."""
    whole, out = whole_rows(per_group), np.empty_like(per_group)
    blocks = per_group[:whole].reshape(-1, ROWS, per_group.shape[1])
    out[:whole] = blocks.transpose(0, 2, 1).reshape(whole, per_group.shape[1])
    out[whole:] = per_group[whole:]
    return out


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
