"""Sampling: one set of defaults, a sampler built from them, and the repetition penalty.

The filter order is llama.cpp's default chain: repetition penalty -> top-k -> top-p -> min-p ->
temperature -> draw. Temperature 0 is greedy (argmax, ties to the lowest id).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .errors import QllamaError


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.8      # 0 = greedy
    top_k: int = 40               # keep the k most likely tokens; 0 = off
    top_p: float = 0.95           # keep the smallest set whose probability reaches p; 1 = off
    min_p: float = 0.05           # drop tokens below min_p x the top token's probability; 0 = off
    repeat_penalty: float = 1.0   # > 1 discourages tokens seen in the last repeat_last_n; 1 = off
    repeat_last_n: int = 64
    seed: int | None = None       # same seed, same text

    def __post_init__(self):
        if self.temperature < 0:
            raise QllamaError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise QllamaError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise QllamaError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p <= 1:
            raise QllamaError(f"min_p must be in [0, 1], got {self.min_p}")
        if self.repeat_penalty <= 0:
            raise QllamaError(f"repeat_penalty must be > 0, got {self.repeat_penalty}")


def apply_repeat_penalty(logits: np.ndarray, recent: list[int], penalty: float) -> np.ndarray:
    """CTRL-style penalty (as llama.cpp): divide positive logits of seen tokens, multiply negative ones."""
    if penalty == 1.0 or not recent:
        return logits
    logits = logits.copy()
    seen = np.unique(np.asarray(recent))
    logits[seen] = np.where(logits[seen] > 0, logits[seen] / penalty, logits[seen] * penalty)
    return logits


def make_sampler(params: SamplingParams) -> Callable[[np.ndarray], int]:
    """A function logits (vocab,) -> token id; it owns its random generator, seeded once."""
    if params.temperature == 0:
        return lambda logits: int(np.argmax(logits))
    rng = np.random.default_rng(params.seed)

    def sample(logits: np.ndarray) -> int:
        x = logits.astype(np.float64)
        candidates = np.arange(len(x))
        if 0 < params.top_k < len(x):
            candidates = np.argpartition(-x, params.top_k - 1)[:params.top_k]
        order = candidates[np.argsort(-x[candidates], kind="stable")]   # most likely first
        z = x[order]
        p = np.exp(z - z[0])
        p /= p.sum()
        keep = len(p)
        if params.top_p < 1.0:
            keep = min(keep, int(np.searchsorted(np.cumsum(p), params.top_p)) + 1)
        if params.min_p > 0.0:
            keep = min(keep, int(np.sum(p >= params.min_p * p[0])))
        z = z[:keep] / params.temperature
        p = np.exp(z - z[0])
        return int(order[rng.choice(keep, p=p / p.sum())])

    return sample
