"""Error-minimising scale search (llama.cpp's make_qx_quants / make_qkx2_quants idea), in Numba.

For each group, try a fan of candidate scales around absmax; for each, round the codes and solve the
(weighted) least-squares scale (and min) for those codes; keep the candidate with the smallest
weighted squared error; then refine twice (re-round with the fitted scale, refit). Scales are
rounded to fp16 before the final rounding of the codes, so the stored values are what was scored.
"""
from __future__ import annotations

import math

import numba as nb
import numpy as np

N_STEPS = 12          # candidates per side of absmax: iscale = (nmax + STEP * k) / amax, |k| <= N_STEPS
STEP = 0.1


@nb.njit(cache=True, inline="always")
def _f16(v):
    """Round to the nearest float16 value, ties to even (Numba has no float16 type on the CPU)."""
    a = abs(v)
    if a == 0.0:
        return 0.0
    if a >= 65504.0:
        return math.copysign(65504.0, v)
    mantissa, exponent = math.frexp(max(a, 2.0 ** -14))   # below 2^-14 the spacing is fixed (subnormals)
    quantum = math.ldexp(1.0, exponent - 11)               # 10 stored mantissa bits
    return math.copysign(np.round(a / quantum) * quantum, v)


@nb.njit(cache=True, parallel=True)
def search_symmetric(x, w, qmin, qmax):
    """x, w (n, G) float32 -> levels (n, G) int32 in [qmin, qmax], d (n,) float32 (fp16-exact).
    value = d * level; minimises sum(w * (x - d * level)^2) over the candidate scales."""
    n, g = x.shape
    levels = np.zeros((n, g), np.int32)
    scales = np.zeros(n, np.float32)
    for i in nb.prange(n):
        xi, wi = x[i], w[i]
        amax = 0.0
        signed_max = 0.0
        for j in range(g):
            if abs(xi[j]) > amax:
                amax = abs(xi[j])
                signed_max = xi[j]
        if amax == 0.0:
            continue
        best_err, best_d = np.inf, 0.0
        # map the largest magnitude onto either end of the code range (q4: -8 or 7), fan around it;
        # the plain absmax scales are candidates too, so the search never does worse than them
        for end in (qmin, qmax):
            d = _f16(signed_max / end)
            err = _error_symmetric(xi, wi, d, qmin, qmax)
            if err < best_err:
                best_err, best_d = err, d
            for k in range(-N_STEPS, N_STEPS + 1):
                iscale = (end + STEP * k * np.sign(end)) / signed_max
                d = _fit_symmetric(xi, wi, iscale, qmin, qmax)
                err = _error_symmetric(xi, wi, d, qmin, qmax)
                if err < best_err:
                    best_err, best_d = err, d
        d = best_d
        for _ in range(2):  # refine: re-round with the fitted scale, refit
            if d == 0.0:
                break
            d2 = _fit_symmetric(xi, wi, 1.0 / d, qmin, qmax)
            if _error_symmetric(xi, wi, d2, qmin, qmax) < _error_symmetric(xi, wi, d, qmin, qmax):
                d = d2
        d = _f16(d)
        scales[i] = d
        inv = 1.0 / d if d != 0.0 else 0.0
        for j in range(g):
            levels[i, j] = min(max(int(np.round(xi[j] * inv)), qmin), qmax)
    return levels, scales


@nb.njit(cache=True, inline="always")
def _fit_symmetric(xi, wi, iscale, qmin, qmax):
    """Round with iscale, then the least-squares d for those levels, rounded to fp16."""
    sum_xl = 0.0
    sum_ll = 0.0
    for j in range(xi.shape[0]):
        level = min(max(np.round(xi[j] * iscale), qmin), qmax)
        sum_xl += wi[j] * xi[j] * level
        sum_ll += wi[j] * level * level
    return _f16(sum_xl / sum_ll) if sum_ll > 0 else 0.0


@nb.njit(cache=True, inline="always")
def _error_symmetric(xi, wi, d, qmin, qmax):
    inv = 1.0 / d if d != 0.0 else 0.0
    err = 0.0
    for j in range(xi.shape[0]):
        level = min(max(np.round(xi[j] * inv), qmin), qmax)
        diff = xi[j] - d * level
        err += wi[j] * diff * diff
    return err


@nb.njit(cache=True, parallel=True)
def search_asymmetric(x, w, qmax):
    """x, w (n, G) float32 -> levels (n, G) int32 in [0, qmax], d, m (n,) float32 (fp16-exact).
    value = d * level + m; minimises sum(w * (x - d * level - m)^2) over the candidate scales."""
    n, g = x.shape
    levels = np.zeros((n, g), np.int32)
    scales = np.zeros(n, np.float32)
    mins = np.zeros(n, np.float32)
    for i in nb.prange(n):
        xi, wi = x[i], w[i]
        lo, hi = xi.min(), xi.max()
        best_err, best_d, best_m = np.inf, 0.0, _f16(lo)
        if hi > lo:
            best_d = _f16((hi - lo) / qmax)  # plain min/max rounding is a candidate too
            best_err = _error_asymmetric(xi, wi, best_d, best_m, qmax)
            for k in range(-N_STEPS, N_STEPS + 1):
                iscale = (qmax + STEP * k) / (hi - lo)
                d, m = _fit_asymmetric(xi, wi, lo, iscale, qmax)
                err = _error_asymmetric(xi, wi, d, m, qmax)
                if err < best_err:
                    best_err, best_d, best_m = err, d, m
            for _ in range(2):
                if best_d <= 0.0:
                    break
                d, m = _fit_asymmetric(xi, wi, best_m, 1.0 / best_d, qmax)
                err = _error_asymmetric(xi, wi, d, m, qmax)
                if err < best_err:
                    best_err, best_d, best_m = err, d, m
        inv = 1.0 / best_d if best_d > 0.0 else 0.0
        for j in range(g):
            levels[i, j] = min(max(int(np.round((xi[j] - best_m) * inv)), 0), qmax)
        # the final codes came from re-rounding, so refit m for them: the group's (weighted) mean
        # error becomes zero instead of drifting one way in every group (a bias all rows share)
        sw = swr = 0.0
        for j in range(g):
            sw += wi[j]
            swr += wi[j] * (xi[j] - best_d * levels[i, j])
        m = _f16(swr / sw) if sw > 0 else best_m
        if _error_fixed(xi, wi, best_d, m, levels[i]) < _error_fixed(xi, wi, best_d, best_m, levels[i]):
            best_m = m
        scales[i], mins[i] = best_d, best_m
    return levels, scales, mins


@nb.njit(cache=True, inline="always")
def _error_fixed(xi, wi, d, m, lv):
    err = 0.0
    for j in range(xi.shape[0]):
        diff = xi[j] - d * lv[j] - m
        err += wi[j] * diff * diff
    return err


@nb.njit(cache=True, inline="always")
def _fit_asymmetric(xi, wi, origin, iscale, qmax):
    """Round (x - origin) * iscale, then solve the 2x2 weighted least squares for d and m."""
    sw = swl = swll = swx = swlx = 0.0
    for j in range(xi.shape[0]):
        level = min(max(np.round((xi[j] - origin) * iscale), 0.0), qmax)
        sw += wi[j]
        swl += wi[j] * level
        swll += wi[j] * level * level
        swx += wi[j] * xi[j]
        swlx += wi[j] * level * xi[j]
    det = sw * swll - swl * swl
    if det <= 0.0:
        return 0.0, _f16(swx / sw if sw > 0 else origin)
    d = (sw * swlx - swl * swx) / det
    m = (swll * swx - swl * swlx) / det
    if d <= 0.0:
        return 0.0, _f16(m)
    return _f16(d), _f16(m)


@nb.njit(cache=True, inline="always")
def _error_asymmetric(xi, wi, d, m, qmax):
    inv = 1.0 / d if d > 0.0 else 0.0
    err = 0.0
    for j in range(xi.shape[0]):
        level = min(max(np.round((xi[j] - m) * inv), 0.0), qmax)
        diff = xi[j] - d * level - m
        err += wi[j] * diff * diff
    return err


def search_quantize(fmt, groups: np.ndarray, weights: np.ndarray):
    """The searched (levels, d, m or None) for (n, G) groups under per-weight importance `weights`."""
    x = np.ascontiguousarray(groups, dtype=np.float32)
    w = np.ascontiguousarray(weights, dtype=np.float32)
    if fmt.symmetric:
        levels, d = search_symmetric(x, w, fmt.family.qmin, fmt.family.qmax)
        return levels, d, None
    return search_asymmetric(x, w, fmt.family.qmax)
