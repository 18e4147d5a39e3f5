#!/usr/bin/env python
"""Where a forward pass spends its time: each kind of matrix, attention, and everything else.

    python bench/profile_forward.py [MODEL] [--prompt 512] [--decode 64] [--threads 2]

MODEL is anything `qllama run -m` takes (default: the default model). Every matrix and each step
between them (attention, RMSNorm, RoPE, SwiGLU's gate) are wrapped in a timer (perf_counter around
the call: the kernels return only when their threads are done); "other" is the rest of the forward
pass (embedding lookup, residual adds, the cache update, Python). Prints milliseconds per token and shares for a prefill of
--prompt tokens and for --decode single-token steps after it, and the matrices' effective GB/s in
decode (their bytes times calls per second).
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from collections import defaultdict

import numpy as np


def kind(name: str) -> str:
    for part in ("qkv_proj", "gate_up_proj", "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        if part in name:
            return part
    return "output head"


class Timed:
    """A matrix whose calls add their time (and bytes) to a shared table."""

    def __init__(self, inner, label, table):
        self.inner, self.label, self.table = inner, label, table

    def __call__(self, x):
        t = time.perf_counter()
        out = self.inner(x)
        self.table[self.label][0] += time.perf_counter() - t
        self.table[self.label][1] += self.inner.nbytes
        return out

    def __getattr__(self, attr):            # rows(), shape, nbytes ... pass through
        return getattr(self.inner, attr)


def profile(model, run) -> tuple[float, dict]:
    table = defaultdict(lambda: [0.0, 0])
    weights = model.weights
    model.weights = {n: Timed(w, kind(n), table) if callable(w) and hasattr(w, "rows") else w for n, w in weights.items()}
    ops = model.ops

    def timed(label, fn):
        def call(*args):
            t = time.perf_counter()
            out = fn(*args)
            table[label][0] += time.perf_counter() - t
            return out
        return call
    model.ops = dataclasses.replace(ops, **{f.name: timed("attention" if f.name == "attend" else f.name,
                                                          getattr(ops, f.name)) for f in dataclasses.fields(ops)})
    try:
        t = time.perf_counter()
        run()
        total = time.perf_counter() - t
    finally:
        model.weights, model.ops = weights, ops
    return total, dict(table)


def report(title: str, total: float, table: dict, tokens: int, decode: bool) -> None:
    print(f"\n{title}: {total / tokens * 1e3:.2f} ms/token ({tokens / total:.1f} tok/s)")
    print("| part | ms/token | share |" + (" GB/s |" if decode else ""))
    print("|---|---:|---:|" + ("---:|" if decode else ""))
    other = total - sum(v[0] for v in table.values())
    for label, (seconds, nbytes) in sorted(table.items(), key=lambda kv: -kv[1][0]) + [("other", (other, 0))]:
        row = f"| {label} | {seconds / tokens * 1e3:.3f} | {seconds / total:.1%} |"
        if decode:
            row += f" {nbytes / seconds / 1e9:.1f} |" if nbytes else " |"
        print(row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?")
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--decode", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import numba
    numba.set_num_threads(args.threads)
    import qllama
    from qllama.pull import resolve_model
    model = qllama.load(resolve_model(args.model), ctx=args.prompt + args.decode + 8)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, model.args.vocab_size, args.prompt)
    model.forward(ids[:8], 0)                             # compile / warm
    model.forward(ids[:1], 8)
    total, table = profile(model, lambda: model.forward(ids, 0, last_only=True))
    report(f"prefill of {args.prompt} tokens", total, table, args.prompt, decode=False)
    steps = rng.integers(0, model.args.vocab_size, args.decode)

    def decode():
        for i, token in enumerate(steps):
            model.forward(np.array([token]), args.prompt + i, last_only=True)
    total, table = profile(model, decode)
    report(f"decode of {args.decode} tokens after it", total, table, args.decode, decode=True)


if __name__ == "__main__":
    main()
