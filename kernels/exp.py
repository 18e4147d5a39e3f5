"""A float32 exp that LLVM vectorizes (Numba has no vector math library without Intel's SVML).

exp(x) = 2^n e^r with n = round(x / ln 2) and r = x - n ln 2 (ln 2 split in two so the product is
exact, Cody and Waite), |r| <= ln 2 / 2, and e^r by its Taylor series to r^7 / 7!, whose remainder
is below 2e-8 relative there: about one float32 rounding.
"""
from __future__ import annotations

import numba as nb
import numpy as np

from .vector_ir import pow2

LN2_HIGH = np.float32(0.693359375)         # 8 significant bits: n * LN2_HIGH is exact
LN2_LOW = np.float32(-2.12194440e-4)
LOG2E = np.float32(1.4426950408889634)


@nb.njit(inline="always", fastmath=True)
def exp_f32(x):
    """e ** x for float32 x; below -87 (where e ** x underflows float32's normal range) -> 0."""
    if x < np.float32(-87.0):
        return np.float32(0.0)
    x = min(x, np.float32(88.0))
    n = np.floor(x * LOG2E + np.float32(0.5))
    r = (x - n * LN2_HIGH) - n * LN2_LOW
    p = np.float32(1.0 / 5040.0)
    p = p * r + np.float32(1.0 / 720.0)
    p = p * r + np.float32(1.0 / 120.0)
    p = p * r + np.float32(1.0 / 24.0)
    p = p * r + np.float32(1.0 / 6.0)
    p = p * r + np.float32(0.5)
    p = p * r + np.float32(1.0)
    p = p * r + np.float32(1.0)
    return p * pow2(np.int64(n))
