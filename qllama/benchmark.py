"""`qllama bench`: prefill and decode speed, bytes read per token, effective bandwidth, peak RSS.

The decode timer starts after the first generated token (llama2.c's rule), and GB/s is the bytes of
weights each token reads times tokens per second (gpt-fast's rule). Token ids are random but fixed,
so runs compare.
"""
from __future__ import annotations

import resource
import time
from dataclasses import dataclass

import numpy as np


@dataclass
class BenchResult:
    load_s: float
    first_token_s: float                 # load + prefill of a short prompt + first token
    prefill_tok_s: dict[int, float]      # prompt length -> tokens/s
    decode_tok_s: float
    bytes_per_token: int
    peak_rss_mib: float

    @property
    def decode_gb_s(self) -> float:
        return self.bytes_per_token * self.decode_tok_s / 1e9

    def report(self) -> str:
        lines = [f"load {self.load_s:.2f} s, load + first token {self.first_token_s:.2f} s"]
        lines += [f"prefill {n:4d} tokens: {v:8.1f} tok/s" for n, v in self.prefill_tok_s.items()]
        lines += [f"decode:              {self.decode_tok_s:8.1f} tok/s, {self.bytes_per_token / 1e6:.1f} MB read "
                  f"per token, {self.decode_gb_s:.2f} GB/s", f"peak RSS {self.peak_rss_mib:.0f} MiB"]
        return "\n".join(lines)


def weight_bytes(model) -> int:
    """Bytes of weights one decode step reads: every matrix and norm once (one embedding row only)."""
    total = 0
    for name, w in model.weights.items():
        if name == "model.embed_tokens.weight" and not model.args.tied_embeddings:
            continue
        total += w.nbytes
    return total


def bench(load, prefill_lengths=(128, 512), n_decode=64, seed=0) -> BenchResult:
    """load: a function returning a fresh Model (timed)."""
    start = time.perf_counter()
    model = load()
    load_s = time.perf_counter() - start
    rng = np.random.default_rng(seed)
    prompt = rng.integers(0, model.args.vocab_size, 8).tolist()
    first = next(iter(model.generate(prompt, max_tokens=1, temperature=0)), None)
    first_token_s = time.perf_counter() - start
    prefill = {}
    for n in prefill_lengths:
        if n >= model.ctx:
            continue
        ids = rng.integers(0, model.args.vocab_size, n)
        model.forward(ids[:8], 0)                       # warm the prefill kernels
        t = time.perf_counter()
        model.forward(ids, 0, last_only=True)
        prefill[n] = n / (time.perf_counter() - t)
    tokens = iter(model.generate(prompt + [first or 0], max_tokens=n_decode + 1, temperature=0, stop_ids=()))
    next(tokens)                                        # timer starts after the first token
    t, count = time.perf_counter(), 0
    for _ in tokens:
        count += 1
    decode = count / (time.perf_counter() - t) if count else 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return BenchResult(load_s, first_token_s, prefill, decode, weight_bytes(model), peak)
