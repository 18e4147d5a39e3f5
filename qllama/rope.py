"""RoPE tables in Hugging Face's rotate-half layout, with linear, llama3 and per-frequency scaling.

llama3 scaling follows transformers' `_compute_llama3_parameters`: long wavelengths are divided by
the factor, short ones kept, and the band between blended smoothly. freq_factors is the same
scaling as GGUF files carry it (rope_freqs.weight): one divisor per frequency, applied as
llama.cpp's ggml_rope_ext applies its freq_factors.
"""
from __future__ import annotations

import math

import numpy as np

from .config import ModelArgs


def inverse_frequencies(args: ModelArgs) -> np.ndarray:
    """(head_dim/2,) float64 angular speed of each rotating pair."""
    inv_freq = 1.0 / args.rope_theta ** (np.arange(0, args.head_dim, 2, dtype=np.float64) / args.head_dim)
    if args.rope_scaling == "linear":
        return inv_freq / args.rope_factor
    if args.rope_scaling == "freq_factors":
        return inv_freq / np.asarray(args.rope_freq_factors, dtype=np.float64)
    if args.rope_scaling == "llama3":
        old_ctx, factor = args.rope_original_max_seq_len, args.rope_factor
        low, high = args.rope_low_freq_factor, args.rope_high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > old_ctx / low, inv_freq / factor, inv_freq)
        smooth = (old_ctx / wavelen - low) / (high - low)
        blended = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_ctx / high) & (wavelen <= old_ctx / low)
        return np.where(medium, blended, scaled)
    return inv_freq


def rope_at(inv_freq: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin: (n, head_dim/2) float32 for these positions, computed when needed (in float64, then
    rounded): no table as long as the context, so a long --ctx costs nothing until it is used."""
    angles = np.outer(positions.astype(np.float64), inv_freq)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """x: (n, heads, head_dim); cos, sin: (n, head_dim/2). Rotate-half: the pair is (i, i + head_dim/2)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c, s = cos[:, None, :], sin[:, None, :]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)
