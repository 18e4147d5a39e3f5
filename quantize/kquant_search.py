"""Error-minimising search for the k-quants (Q2_K .. Q6_K), in Numba, one super-block at a time.

The idea of ggml's ggml-quants.c (make_qkx2_quants / make_qkx3_quants for the Q4_K/Q5_K scale and
min of each sub-block, make_qx_quants for Q6_K, then the sub-block scales quantized to 6 or 8 bits
against the super-block's fp16 d and dmin); the code is ours:

1. each sub-block: a fan of candidate scales around min/max (or absmax) rounding; for each, round
   the codes and solve the weighted least squares for the scale (and min) of those codes; keep the
   candidate with the smallest weighted squared error;
2. the super-block: d = largest sub-block scale / 63 (Q2_K: 15; Q3_K, Q6_K signed: / -32, / -128), in fp16; each
   sub-block scale rounds to its 6-bit (8-bit) integer against d; the same for the mins and dmin;
3. refine each sub-block with the stored d and dmin: re-round the codes, refit the scale (and min)
   by least squares for them, try the integer sub-scales (and mins) on either side of the fit,
   keep whichever has the smallest error. So every score is of values as they will be stored.

The weight of each squared error is the column importance (mean x^2 of the input activations from
--calibration), or 1: the search minimises exactly the error `quantize_matrix` reports.
"""
from __future__ import annotations

import math

import numba as nb
import numpy as np

from .search import _error_asymmetric as _asym_error  # sum w (x - (s q + b))^2, q rounded into [0, qmax]
from .search import _f16

QK_K = 256
# candidates: iscale = (nmax + FAN_STEP * k) / range, |k| <= N_FAN (Q6_K: from each end of the levels);
# twice as many, twice as fine, measured the same error to 4 digits on random and SmolLM2 weights
N_FAN = 10
FAN_STEP = 0.1
N_FAN_SYM = 9
FAN_STEP_SYM = 0.1
N_REFINE = 3


@nb.njit(cache=True, inline="always")
def _asym_fit(x, w, origin, iscale, qmax):
    """Round (x - origin) * iscale, then the weighted least-squares scale s >= 0 and offset b <= 0
    (a k-quant's min is subtracted: b = -dmin * m, m >= 0) for those codes."""
    sw = swq = swqq = swx = swqx = 0.0
    for j in range(x.shape[0]):
        q = min(max(np.round((x[j] - origin) * iscale), 0.0), qmax)
        sw += w[j]
        swq += w[j] * q
        swqq += w[j] * q * q
        swx += w[j] * x[j]
        swqx += w[j] * q * x[j]
    det = sw * swqq - swq * swq
    if det <= 0.0:
        return 0.0, 0.0
    s = (sw * swqx - swq * swx) / det
    b = (swqq * swx - swq * swqx) / det
    if b > 0.0:           # the offset cannot be positive: fit the scale alone
        b = 0.0
        s = swqx / swqq if swqq > 0.0 else 0.0
    return max(s, 0.0), b


@nb.njit(cache=True)
def _asym_subblock(x, w, qmax):
    """Step 1 for one sub-block: the (scale, offset) with the smallest weighted error, in float."""
    lo, hi = min(x.min(), 0.0), x.max()
    if hi <= lo:
        return 0.0, lo
    best_s, best_b = (hi - lo) / qmax, lo
    best = _asym_error(x, w, best_s, best_b, qmax)
    for k in range(-N_FAN, N_FAN + 1):
        s, b = _asym_fit(x, w, lo, (qmax + FAN_STEP * k) / (hi - lo), qmax)
        err = _asym_error(x, w, s, b, qmax)
        if err < best:
            best, best_s, best_b = err, s, b
    for _ in range(2):  # re-round with the fitted pair, refit
        if best_s <= 0.0:
            break
        s, b = _asym_fit(x, w, best_b, 1.0 / best_s, qmax)
        err = _asym_error(x, w, s, b, qmax)
        if err < best:
            best, best_s, best_b = err, s, b
    return best_s, best_b


@nb.njit(cache=True, parallel=True)
def search_asymmetric_kquant(x, w, sub, qmax, smax):
    """x, w (n, 256) float32 -> codes (n, 256) int32 in [0, qmax], d, dmin (n,) fp16-exact float32,
    sc, m (n, 256 / sub) int32 in [0, smax]. value = d sc q - dmin m (ggml's Q2_K, Q4_K, Q5_K)."""
    n = x.shape[0]
    n_sub = QK_K // sub
    codes = np.zeros((n, QK_K), np.int32)
    d_out = np.zeros(n, np.float32)
    dmin_out = np.zeros(n, np.float32)
    sc_out = np.zeros((n, n_sub), np.int32)
    m_out = np.zeros((n, n_sub), np.int32)
    for i in nb.prange(n):
        scales = np.zeros(n_sub)
        mins = np.zeros(n_sub)   # -offset, >= 0
        for j in range(n_sub):
            s, b = _asym_subblock(x[i, j * sub:(j + 1) * sub], w[i, j * sub:(j + 1) * sub], qmax)
            scales[j], mins[j] = s, -b
        d = _f16(scales.max() / smax)
        dmin = _f16(mins.max() / smax)
        d_out[i], dmin_out[i] = d, dmin
        for j in range(n_sub):
            xs, ws = x[i, j * sub:(j + 1) * sub], w[i, j * sub:(j + 1) * sub]
            sc = min(max(int(np.round(scales[j] / d)), 0), smax) if d > 0.0 else 0
            m = min(max(int(np.round(mins[j] / dmin)), 0), smax) if dmin > 0.0 else 0
            best = _asym_error(xs, ws, d * sc, -dmin * m, qmax)
            for _ in range(N_REFINE):  # step 3: refit for the stored codes, try the integers around the fit
                s, b = _asym_fit(xs, ws, -dmin * m, 1.0 / (d * sc) if sc > 0 else 0.0, qmax)
                base_sc = int(math.floor(s / d)) if d > 0.0 else 0
                base_m = int(math.floor(-b / dmin)) if dmin > 0.0 else 0
                improved = False
                for tsc in range(base_sc, base_sc + 2):
                    for tm in range(base_m, base_m + 2):
                        csc, cm = min(max(tsc, 0), smax), min(max(tm, 0), smax)
                        err = _asym_error(xs, ws, d * csc, -dmin * cm, qmax)
                        if err < best:
                            best, sc, m, improved = err, csc, cm, True
                if not improved:
                    break
            sc_out[i, j], m_out[i, j] = sc, m
            step, low = d * sc, dmin * m
            inv = 1.0 / step if step > 0.0 else 0.0
            for t in range(sub):
                codes[i, j * sub + t] = int(min(max(np.round((xs[t] + low) * inv), 0.0), qmax))
    return codes, d_out, dmin_out, sc_out, m_out


@nb.njit(cache=True, inline="always")
def _sym_error(x, w, s, qmin, qmax):
    inv = 1.0 / s if s != 0.0 else 0.0
    err = 0.0
    for j in range(x.shape[0]):
        q = min(max(np.round(x[j] * inv), qmin), qmax)
        diff = x[j] - s * q
        err += w[j] * diff * diff
    return err


@nb.njit(cache=True, inline="always")
def _sym_fit(x, w, iscale, qmin, qmax):
    """Round x * iscale, then the weighted least-squares scale for those levels."""
    sxq = sqq = 0.0
    for j in range(x.shape[0]):
        q = min(max(np.round(x[j] * iscale), qmin), qmax)
        sxq += w[j] * x[j] * q
        sqq += w[j] * q * q
    return sxq / sqq if sqq > 0.0 else 0.0


@nb.njit(cache=True)
def _sym_subblock(x, w, qmin, qmax):
    """Step 1 for one sub-block: the signed scale with the smallest weighted error, in float.
    The largest magnitude maps onto either end of the levels (Q6_K: -32 or 31), with a fan around."""
    signed_max = 0.0
    for j in range(x.shape[0]):
        if abs(x[j]) > abs(signed_max):
            signed_max = x[j]
    if signed_max == 0.0:
        return 0.0
    best_s, best = 0.0, np.inf
    for end in (qmin, qmax):
        s = signed_max / end
        err = _sym_error(x, w, s, qmin, qmax)
        if err < best:
            best, best_s = err, s
        for k in range(-N_FAN_SYM, N_FAN_SYM + 1):
            s = _sym_fit(x, w, (end + FAN_STEP_SYM * k * np.sign(end)) / signed_max, qmin, qmax)
            err = _sym_error(x, w, s, qmin, qmax)
            if err < best:
                best, best_s = err, s
    return best_s


@nb.njit(cache=True, parallel=True)
def search_symmetric_kquant(x, w, sub, qmin, qmax, smin, smax):
    """x, w (n, 256) float32 -> levels (n, 256) int32 in [qmin, qmax], d (n,) fp16-exact float32,
    sc (n, 256 / sub) int32 in [smin, smax]. value = d sc level (ggml's Q3_K, level = code - 4;
    Q6_K, level = code - 32)."""
    n = x.shape[0]
    n_sub = QK_K // sub
    levels = np.zeros((n, QK_K), np.int32)
    d_out = np.zeros(n, np.float32)
    sc_out = np.zeros((n, n_sub), np.int32)
    for i in nb.prange(n):
        scales = np.zeros(n_sub)
        big = 0.0
        for j in range(n_sub):
            scales[j] = _sym_subblock(x[i, j * sub:(j + 1) * sub], w[i, j * sub:(j + 1) * sub], qmin, qmax)
            if abs(scales[j]) > abs(big):
                big = scales[j]
        d = _f16(big / smin)      # the largest sub-block scale maps to smin (Q6_K: -128, int8's full range)
        d_out[i] = d
        for j in range(n_sub):
            xs, ws = x[i, j * sub:(j + 1) * sub], w[i, j * sub:(j + 1) * sub]
            sc = min(max(int(np.round(scales[j] / d)), smin), smax) if d != 0.0 else 0
            best = _sym_error(xs, ws, d * sc, qmin, qmax)
            for _ in range(N_REFINE):
                s = _sym_fit(xs, ws, 1.0 / (d * sc) if sc != 0 else 0.0, qmin, qmax)
                base = int(math.floor(s / d)) if d != 0.0 else 0
                improved = False
                for t in range(base, base + 2):
                    c = min(max(t, smin), smax)
                    err = _sym_error(xs, ws, d * c, qmin, qmax)
                    if err < best:
                        best, sc, improved = err, c, True
                if not improved:
                    break
            sc_out[i, j] = sc
            step = d * sc
            inv = 1.0 / step if step != 0.0 else 0.0
            for t in range(sub):
                levels[i, j * sub + t] = int(min(max(np.round(xs[t] * inv), qmin), qmax))
    return levels, d_out, sc_out


def search_kquant(fmt, x: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """(n, 256) super-blocks and per-weight importance -> the planes of k-quant `fmt`, searched."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    w = np.ascontiguousarray(weights, dtype=np.float32)
    qmax = (1 << fmt.bits) - 1
    smin, smax = fmt.sub_range
    if fmt.has_mins:
        codes, d, dmin, sc, m = search_asymmetric_kquant(x, w, fmt.sub_block, float(qmax), smax)
        planes = {"scales": d.astype(np.float16)[:, None], "mins": dmin.astype(np.float16)[:, None],
                  "subscales": fmt.pack_subscales(sc, m)}
    else:
        levels, d, sc = search_symmetric_kquant(x, w, fmt.sub_block, float(-fmt.offset), float(qmax - fmt.offset),
                                                smin, smax)
        codes = levels + fmt.offset
        planes = {"scales": d.astype(np.float16)[:, None], "subscales": fmt.pack_subscales(sc, None)}
    planes.update(fmt.pack_codes(codes))
    return planes
