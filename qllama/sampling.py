"""Sampling: one set of defaults, a sampler built from them, and the repetition penalty.

The filter order is llama.cpp's default chain: repetition penalty -> top-k -> top-p -> min-p ->
temperature -> draw. Temperature 0 is greedy (argmax, ties to the lowest id).
"""
from __future__ import annotations

import math
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
    presence_penalty: float = 0.0   # OpenAI's: subtracted once from each token seen in the last repeat_last_n
    frequency_penalty: float = 0.0  # OpenAI's: subtracted per occurrence there
    seed: int | None = None       # same seed, same text

    def __post_init__(self):
        for name in ("temperature", "top_p", "min_p", "repeat_penalty", "presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise QllamaError(f"{name} must be a finite number, got {value!r}")
        for name in ("top_k", "repeat_last_n"):
            if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), int):
                raise QllamaError(f"{name} must be an integer, got {getattr(self, name)!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not 0 <= self.seed < 2**64):
            raise QllamaError(f"seed must be an integer in [0, 2^64), got {self.seed!r}")
        if self.repeat_last_n < 0:
            raise QllamaError(f"repeat_last_n must be >= 0, got {self.repeat_last_n}")
        if not -2 <= self.presence_penalty <= 2 or not -2 <= self.frequency_penalty <= 2:
            raise QllamaError("presence_penalty and frequency_penalty must be in [-2, 2]")
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


def apply_penalties(logits: np.ndarray, history: list[int], params: SamplingParams) -> np.ndarray:
    """The repetition penalty, then OpenAI's presence and frequency penalties, over the last
    repeat_last_n tokens of history (as llama.cpp's penalties sampler)."""
    recent = history[-params.repeat_last_n:] if params.repeat_last_n else []
    logits = apply_repeat_penalty(logits, recent, params.repeat_penalty)
    if recent and (params.presence_penalty or params.frequency_penalty):
        seen, counts = np.unique(np.asarray(recent), return_counts=True)
        logits = logits.copy()
        logits[seen] -= params.presence_penalty + params.frequency_penalty * counts
    return logits


def make_picker(params: SamplingParams) -> Callable[[np.ndarray, list[int]], int]:
    """A function (logits, history) -> next token id: penalties, then the sampler."""
    sample = make_sampler(params)
    return lambda logits, history: sample(apply_penalties(logits, history, params))


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
