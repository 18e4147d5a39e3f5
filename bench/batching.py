#!/usr/bin/env python
"""Aggregate decode tokens/s with 1, 2, 4 and 8 streams decoded together (qllama serve's batching).

    python bench/batching.py [--shape smollm2|tinyllama] [--streams 1,2,4,8] [--tokens 32] [--runs 3]

Each stream is a session holding a short prompt; a step runs one token of every stream in ONE
forward pass (Model.decode_batch, what the server's scheduler calls). Aggregate tokens/s is
streams x steps / time. The stream counts run interleaved, in reversed order every other run, and
the table gives min / median / max and the ratio to one stream, so a noisy machine shifts them
together. tinyllama is a random-weight TinyLlama-shape Q4_0 GGUF written by bench/vs_llamacpp.py's
generator (about 600 MB, reused from --workdir).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from machine_info import git_commit, machine_line  # bench/ is on sys.path
from vs_llamacpp import model_file


def decode_rate(model, n_streams: int, n_tokens: int, rng) -> float:
    sessions = [model.new_session(ctx=256) for _ in range(n_streams)]
    for s in sessions:
        s.prefill(rng.integers(0, model.args.vocab_size, 16).tolist())
    tokens = rng.integers(0, model.args.vocab_size, n_streams)
    model.decode_batch(sessions, tokens)                # warm: threads awake, kernels loaded
    start = time.perf_counter()
    for _ in range(n_tokens):
        logits = model.decode_batch(sessions, tokens)
        tokens = logits.argmax(axis=1)
    return n_streams * n_tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="smollm2", choices=["smollm2", "tinyllama"])
    parser.add_argument("--streams", default="1,2,4,8")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp"))
    args = parser.parse_args()
    import qllama
    path = model_file(args.shape, "q4_0", args.workdir)
    model = qllama.load(path)
    counts = [int(n) for n in args.streams.split(",")]
    rng = np.random.default_rng(0)
    rates = {n: [] for n in counts}
    for run in range(args.runs):
        for n in counts if run % 2 == 0 else reversed(counts):
            rates[n].append(decode_rate(model, n, args.tokens, rng))
            print(f"  run {run + 1}: {n} streams {rates[n][-1]:8.1f} tok/s", file=sys.stderr, flush=True)
    base = statistics.median(rates[counts[0]])
    print(f"`python bench/batching.py --shape {args.shape}`; {machine_line()}; commit {git_commit()}")
    print(f"model {path.name}, {args.tokens} decode steps per measurement, {args.runs} runs\n")
    print("| streams | aggregate decode tok/s (min / median / max) | x one stream (median) |")
    print("|---:|---|---:|")
    for n in counts:
        r = sorted(rates[n])
        print(f"| {n} | {r[0]:.1f} / {statistics.median(r):.1f} / {r[-1]:.1f} | {statistics.median(r) / base:.2f}x |")


if __name__ == "__main__":
    main()
