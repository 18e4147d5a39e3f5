"""GPTQ (Frantar et al., 2022, arXiv:2210.17323) with qllama's group formats, for --calibration.

Columns are quantized left to right; the rounding error of each column is spread over the columns
not yet quantized, weighted by the inverse of H = E[x x^T] of the layer's inputs (from calibration
text), so the *output* error is what is minimised, not the weight error. Each group's scale (and
min) is chosen by the error-minimising search on the group's current, already-compensated weights,
weighted by diag(H). Blocks of columns defer the update of the rest of the matrix (lazy batch).
"""
from __future__ import annotations

import numpy as np

from .formats import QuantFormat
from .search import search_quantize
from .tensor import QuantizedTensor

BLOCK = 128        # columns per lazy batch (a multiple of every group size)
DAMP = 0.01        # ridge added to H, as a fraction of its mean diagonal (the paper's default)


def inverse_cholesky(h: np.ndarray) -> np.ndarray:
    """Upper Cholesky factor of H^-1 (what GPTQ's column updates read), with damping."""
    h = h.astype(np.float64).copy()
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    h += DAMP * np.mean(np.diag(h)) * np.eye(len(h))
    return np.linalg.cholesky(np.linalg.inv(h)).T


def gptq_quantize(w: np.ndarray, fmt: QuantFormat, h: np.ndarray) -> QuantizedTensor:
    """w (out, in) float32, h (in, in) = E[x x^T] -> planes of `fmt`."""
    out, n_in = w.shape
    g = fmt.group_size
    pad = -n_in % g
    n_cols = n_in + pad
    # padded columns: zero weight, zero activation (H row/col 0 -> dead), so they cost nothing
    work = np.zeros((out, n_cols), np.float64)
    work[:, :n_in] = w
    hp = np.zeros((n_cols, n_cols))
    hp[:n_in, :n_in] = h
    importance = np.diag(hp).astype(np.float32)
    hinv = inverse_cholesky(hp)
    levels = np.zeros((out, n_cols), np.int32)
    scales = np.zeros((out, n_cols // g), np.float32)
    mins = np.zeros((out, n_cols // g), np.float32)
    lo, hi = fmt.family.qmin, fmt.family.qmax
    for b0 in range(0, n_cols, BLOCK):
        b1 = min(b0 + BLOCK, n_cols)
        block = work[:, b0:b1].copy()
        errors = np.zeros_like(block)
        for i in range(b1 - b0):
            col = b0 + i
            if col % g == 0:  # a new group: choose its scale from the compensated weights
                grp = block[:, i:i + g].astype(np.float32)
                _, d, m = search_quantize(fmt, grp, np.broadcast_to(importance[col:col + g], grp.shape))
                scales[:, col // g] = d
                if m is not None:
                    mins[:, col // g] = m
            d = scales[:, col // g].astype(np.float64)
            m = mins[:, col // g].astype(np.float64)
            inv = np.divide(1.0, d, out=np.zeros_like(d), where=d != 0)
            level = np.clip(np.round((block[:, i] - m) * inv), lo, hi)
            levels[:, col] = level
            err = (block[:, i] - (d * level + m)) / hinv[col, col]
            block[:, i:] -= np.outer(err, hinv[col, col:b1])
            errors[:, i] = err
        work[:, b1:] -= errors @ hinv[b0:b1, b1:]
    qweight = fmt.pack(levels.reshape(-1, g)).reshape(out, -1)
    planes = {"qweight": qweight, "scales": scales.astype(np.float16)}
    if not fmt.symmetric:
        planes["mins"] = mins.astype(np.float16)
    return QuantizedTensor(fmt, (out, n_in), planes)
