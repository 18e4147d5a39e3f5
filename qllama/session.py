"""Session: one conversation's state over a model's shared weights.

A Model holds what is loaded once and never changes (weights, tokenizer, template, RoPE tables);
a Session holds what one conversation adds: its KV cache, the tokens the cache holds, and counters.
Many sessions share one Model. A session only ever runs the tokens it has not seen: `append` runs
new tokens after the ones cached, `prefill` finds the longest cached prefix of a token list and
runs the rest. `last_prefill` says how many tokens the last of these calls ran.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .cache import KVCache
from .errors import QllamaError


@dataclass
class Timings:
    """What the last generation cost: for `--verbose` and `/stats`."""
    prefill_tokens: int = 0
    prefill_s: float = 0.0
    decode_tokens: int = 0
    decode_s: float = 0.0

    def report(self) -> str:
        def rate(n, s):
            return f"{n / s:.1f} tokens/s" if s > 0 else "-"
        return (f"prefill: {self.prefill_tokens} tokens in {self.prefill_s:.2f} s ({rate(self.prefill_tokens, self.prefill_s)}); "
                f"decode: {self.decode_tokens} tokens in {self.decode_s:.2f} s ({rate(self.decode_tokens, self.decode_s)})")


class Session:
    """The KV cache and token history of one conversation; `model` lends it weights and kernels."""

    def __init__(self, model, ctx: int | None = None):
        self.model = model
        self.ctx = ctx or model.ctx
        if not 0 < self.ctx <= model.ctx:
            raise QllamaError(f"session context {self.ctx} must be in 1..{model.ctx} (the model's --ctx)")
        self.cache = KVCache(model.args, self.ctx, model.kv_dtype)
        self.tokens: list[int] = []     # the tokens whose keys/values the cache holds, in order
        self.last_prefill = 0           # tokens run by the last prefill() or append()
        self.timings = Timings()        # of the last generation

    @property
    def tokenizer(self):
        return self.model.tokenizer

    @property
    def n_past(self) -> int:
        """Positions of the cache in use."""
        return len(self.tokens)

    def forward(self, tokens, pos: int, last_only: bool = False, observe=None) -> np.ndarray:
        """Run tokens at positions pos.. (the cache holds 0..pos-1; later positions are forgotten)."""
        tokens = np.asarray(tokens, dtype=np.int64)
        vocab = self.model.args.vocab_size
        if len(tokens) and (tokens.min() < 0 or tokens.max() >= vocab):
            bad = int(tokens[(tokens < 0) | (tokens >= vocab)][0])
            raise QllamaError(f"{self.model.checkpoint.path}: token id {bad} is outside the model's vocabulary [0, {vocab})")
        if not 0 <= pos <= len(self.tokens):
            raise QllamaError(f"position {pos} is past the {len(self.tokens)} tokens this session holds")
        if pos + len(tokens) > self.ctx:
            raise QllamaError(f"{pos + len(tokens)} tokens do not fit in the context of {self.ctx} tokens")
        # forgotten first: a run that fails half way leaves rows from pos on half written
        del self.tokens[pos:]                   # in place: a decode step appends, never copies
        logits = self.model.run(self.cache, tokens, pos, last_only, observe)
        self.tokens.extend(tokens.tolist())
        return logits

    def prefill(self, token_ids) -> np.ndarray:
        """Logits after the last of token_ids, running only what follows their longest cached prefix
        (at least the last token, whose logits are needed)."""
        token_ids = [int(t) for t in token_ids]
        common = 0
        limit = min(len(self.tokens), len(token_ids) - 1)
        while common < limit and self.tokens[common] == token_ids[common]:
            common += 1
        self.last_prefill = len(token_ids) - common
        return self.forward(token_ids[common:], common, last_only=True)[-1]

    def append(self, token_ids) -> np.ndarray:
        """Logits after running token_ids behind everything the session holds."""
        token_ids = [int(t) for t in token_ids]
        if not token_ids:
            raise QllamaError("nothing to append")
        self.last_prefill = len(token_ids)
        return self.forward(token_ids, len(self.tokens), last_only=True)[-1]

    def truncate(self, n: int) -> None:
        """Forget every position from n on (the cache rows are simply overwritten later)."""
        del self.tokens[n:]

    def reset(self) -> None:
        self.truncate(0)

    def generate(self, prompt, **kwargs):
        """Tokens (ints) after a prompt (text or ids); see qllama.generate.generate_tokens."""
        from .generate import generate_tokens
        return generate_tokens(self, prompt, **kwargs)
