"""Values read from a model's config or metadata, checked for type and range before any use.

Model files come from strangers: a number may be a string, a list, null, zero, NaN or 10^18. Every
value a reader takes goes through one of these, so the error names the file, the key and the value,
and nothing is computed from a value that was never checked (no ZeroDivisionError from a head count
of 0, no table sized by a lying layer count).
"""
from __future__ import annotations

import math

from .errors import QllamaError

# far above any real LLaMA (Llama 3.1 405B: dim 16384, 126 layers, 128 heads, 128256 tokens), far
# below what would overflow a size computed from them
LIMITS = {"dim": 1 << 17, "hidden_dim": 1 << 20, "n_layers": 1 << 12, "n_heads": 1 << 12, "head_dim": 1 << 12,
          "vocab_size": 1 << 24, "max_seq_len": 1 << 24}


class Values:
    """Typed access to one config dict: `v.int("hidden_size")`, each error naming source and key."""

    def __init__(self, data, source: str):
        if not isinstance(data, dict):
            raise QllamaError(f"{source}: expected an object of settings, got {type(data).__name__}")
        self.data, self.source = data, source

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def _get(self, key: str, default):
        value = self.data.get(key)
        if value is None:
            if default is None:
                raise QllamaError(f"{self.source}: missing required key {key!r}")
            return default
        return value

    def _bad(self, key: str, value, what: str) -> QllamaError:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        return QllamaError(f"{self.source}: {key} = {shown} is not {what}")

    def int(self, key: str, default: int | None = None, lo: int = 1, hi: int = 1 << 31) -> int:
        value = self._get(key, default)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise self._bad(key, value, f"an integer in [{lo}, {hi}]")
        return value

    def float(self, key: str, default: float | None = None, lo: float = 0.0, hi: float = 1e12) -> float:
        """A finite number in (lo, hi]."""
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not lo < value <= hi:
            raise self._bad(key, value, f"a number in ({lo:g}, {hi:g}]")
        return float(value)

    def str(self, key: str, default: str | None = None) -> str:
        value = self._get(key, default)
        if not isinstance(value, str):
            raise self._bad(key, value, "a string")
        return value

    def bool(self, key: str, default: bool) -> bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise self._bad(key, value, "true or false")
        return value

    def dict(self, key: str) -> "Values":
        """A nested object (empty when absent)."""
        value = self.data.get(key)
        if value is None:
            return Values({}, self.source)
        if not isinstance(value, dict):
            raise self._bad(key, value, "an object")
        return Values(value, self.source)
