#!/usr/bin/env python
"""Prefill attention alone, at real models' shapes: this tree's kernel against another git revision's,
in one process, interleaved (the machines here are shared and noisy: only the ratio carries over).

    python bench/attention_speed.py --against REV [--repeats 7]

The other revision's kernels/attention.py is read with `git show` into a temporary package (its
imports pointed at this tree's exp, jit and vector_ir, which it must still match). Times are the
best of --repeats calls on a float16 cache; GFLOP/s counts only the causal multiply-adds
(2 x 2 x head_dim per query head and visible key).
"""
from __future__ import annotations

import argparse
import importlib
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
# (name, tokens, position of the first, query heads, KV heads, head_dim)
SHAPES = [("TinyLlama, 512-token prompt", 512, 0, 32, 4, 64),
          ("Llama-2-7B, 512-token prompt", 512, 0, 32, 32, 128),
          ("Llama-2-7B, 64 tokens after 512", 64, 512, 32, 32, 128),
          ("Llama-3-8B, 512-token prompt", 512, 0, 32, 8, 128)]


def other_revision(rev: str, folder: Path):
    source = subprocess.run(["git", "show", f"{rev}:kernels/attention.py"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout
    source = re.sub(r"^from \.(\w+) import", r"from qllama.kernels.\1 import", source, flags=re.M)
    (folder / "attention_other.py").write_text(source)
    sys.path.insert(0, str(folder))
    return importlib.import_module("attention_other")


def best_time(fn, args, repeats: int) -> float:
    fn(*args)                                   # compiled (or loaded) first
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", required=True, help="git revision whose kernel to compare with (e.g. 50d083f)")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    from qllama.kernels import attention as this
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        other = other_revision(args.against, Path(tmp))
        print(f"| shape | {args.against} ms | this tree ms | this tree GFLOP/s | speed-up |")
        print("|---|---:|---:|---:|---:|")
        for name, n, pos, heads, kv_heads, hd in SHAPES:
            q = rng.standard_normal((n, heads, hd)).astype(np.float32)
            keys, values = (rng.standard_normal((pos + n, kv_heads, hd)).astype(np.float16).view(np.uint16)
                            for _ in range(2))
            out = np.empty((n, heads * hd), np.float32)
            t_other, t_this = [], []
            for _ in range(2):                  # interleaved
                t_other.append(best_time(other.attention, (q, keys, values, pos, out), args.repeats))
                t_this.append(best_time(this.attention, (q, keys, values, pos, out), args.repeats))
            a, b = min(t_other), min(t_this)
            flops = 4 * hd * heads * sum(pos + i + 1 for i in range(n))
            print(f"| {name} | {a * 1e3:.1f} | {b * 1e3:.1f} | {flops / b / 1e9:.0f} | {a / b:.2f}x |")


if __name__ == "__main__":
    main()
