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

from .cache import Span
from .errors import QllamaError

PREFILL_CHUNK = 512     # tokens per pass of a prompt (llama.cpp's default micro-batch)


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
        self.cache = model.new_cache(self.ctx)    # where the model runs: host or GPU memory
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
        self.model.check_ids(tokens)
        if not 0 <= pos <= len(self.tokens):
            raise QllamaError(f"position {pos} is past the {len(self.tokens)} tokens this session holds")
        if pos + len(tokens) > self.ctx:
            raise QllamaError(f"{pos + len(tokens)} tokens do not fit in the context of {self.ctx} tokens")
        # forgotten first: a run that fails half way leaves rows from pos on half written
        del self.tokens[pos:]                   # in place: a decode step appends, never copies
        logits = self.model.run([Span(self.cache, pos, len(tokens))], tokens, last_only, observe)
        self.tokens.extend(tokens.tolist())
        return logits

    def prefill(self, token_ids, cancel=None) -> np.ndarray | None:
        """Logits after the last of token_ids, running only what follows their longest cached prefix
        (at least the last token, whose logits are needed). None if cancelled first (see run_chunks)."""
        token_ids = [int(t) for t in token_ids]
        common = 0
        limit = min(len(self.tokens), len(token_ids) - 1)
        while common < limit and self.tokens[common] == token_ids[common]:
            common += 1
        self.last_prefill = len(token_ids) - common
        return self.run_chunks(token_ids[common:], common, cancel)

    def append(self, token_ids, cancel=None) -> np.ndarray | None:
        """Logits after running token_ids behind everything the session holds (None if cancelled)."""
        token_ids = [int(t) for t in token_ids]
        if not token_ids:
            raise QllamaError("nothing to append")
        self.last_prefill = len(token_ids)
        return self.run_chunks(token_ids, len(self.tokens), cancel)

    def run_chunks(self, token_ids: list[int], pos: int, cancel=None) -> np.ndarray | None:
        """Run token_ids from pos in chunks of PREFILL_CHUNK: a long prompt's scratch stays bounded,
        and cancel (anything with is_set()) is checked between chunks; when it is set, the session
        keeps the chunks already run and None is returned."""
        logits = None
        for start in range(0, len(token_ids), PREFILL_CHUNK):
            if cancel is not None and cancel.is_set():
                return None
            logits = self.forward(token_ids[start:start + PREFILL_CHUNK], pos + start, last_only=True)
        return logits[-1]

    def truncate(self, n: int) -> None:
        """Forget every position from n on (the cache rows are simply overwritten later)."""
        del self.tokens[n:]

    def reset(self) -> None:
        self.truncate(0)

    def generate(self, prompt, **kwargs):
        """Tokens (ints) after a prompt (text or ids); see qllama.generate.generate_tokens."""
        from .generate import generate_tokens
        return generate_tokens(self, prompt, **kwargs)
