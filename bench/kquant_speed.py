#!/usr/bin/env python
"""Decode GEMV bandwidth and prefill GEMM speed of the k-quant kernels against Q4_0, A/B in one process.

    python bench/kquant_speed.py [--shapes tinyllama,llama7b] [--types q4_0,q4_k,q6_k] [--repeats 5] [--threads 2]

For each shape, enough random matrices of each type (random valid ggml blocks, converted to planes
as a GGUF tensor is) that one pass over them is far larger than the caches; a decode step is one
GEMV per matrix, the matrices cycled, and GB/s is the bytes the format stores over the time. Types
are measured in turn, the order rotated every repeat (the machine is shared: interleave, repeat,
report ranges, and each type's ratio to the first type's measurement of the same repeat, taken
next to it in time). Prefill: one 128-token GEMM on one matrix, GFLOP/s. Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

SHAPES = {"tinyllama": (5632, 2048), "llama7b": (11008, 4096)}    # (out, in): the gate/up projections
PASS_BYTES = 256 << 20          # one decode pass reads at least this much


def random_tensor(type_name: str, shape: tuple[int, int], rng):
    """Planes of random valid blocks of a table type (finite fp16 scales, random codes)."""
    import gguf
    from qllama.quantize.formats import BY_GGML_TYPE
    from qllama.quantize.planes import join_ggml_blocks, split_ggml_blocks
    from qllama.quantize.tensor import from_ggml_blocks
    fmt = BY_GGML_TYPE[type_name.upper()]
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name.upper()]]
    n = shape[0] * shape[1] // block
    raw = rng.integers(0, 256, size=(n, size), dtype=np.uint8)
    planes = split_ggml_blocks(raw, n, 1, fmt.planes, fmt.ggml_fields)
    for name in ("scales", "mins"):
        if name in planes:
            planes[name][:] = (rng.random(planes[name].shape) * 1e-3).astype(np.float16)
    return from_ggml_blocks(join_ggml_blocks(planes, 1, fmt.planes, fmt.ggml_fields).reshape(shape[0], -1), shape, fmt)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="tinyllama,llama7b")
    parser.add_argument("--types", default="q4_0,q4_k,q6_k")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prefill-tokens", type=int, default=128)
    args = parser.parse_args()
    import numba
    numba.set_num_threads(args.threads)
    from qllama.linear import QuantLinear
    rng = np.random.default_rng(0)
    types = args.types.split(",")
    base = types[0]
    print(f"| shape (out x in) | type | bits/weight | decode GB/s min / median / max | decode GB/s / {base}'s in the same "
          f"repeat | prefill GFLOP/s min / median / max | prefill / {base}'s |")
    print("|---|---|---:|---|---|---|---|")
    for shape_name in args.shapes.split(","):
        shape = SHAPES[shape_name]
        mats = {}
        for t in types:
            q = random_tensor(t, shape, rng)
            count = max(2, -(-PASS_BYTES // q.nbytes))
            mats[t] = [QuantLinear(q)] + [QuantLinear(random_tensor(t, shape, rng)) for _ in range(count - 1)]
        x1 = rng.standard_normal((1, shape[1])).astype(np.float32)
        xp = rng.standard_normal((args.prefill_tokens, shape[1])).astype(np.float32)
        for t in types:                                  # compile and touch every page once
            for m in mats[t]:
                m(x1)
            mats[t][0](xp)
        gbs, gflops = {t: [] for t in types}, {t: [] for t in types}
        for r in range(args.repeats):
            order = types[r % len(types):] + types[:r % len(types)]
            for t in order:
                start = time.perf_counter()
                for m in mats[t]:
                    m(x1)
                gbs[t].append(sum(m.nbytes for m in mats[t]) / (time.perf_counter() - start) / 1e9)
                start = time.perf_counter()
                mats[t][0](xp)
                gflops[t].append(2 * shape[0] * shape[1] * args.prefill_tokens / (time.perf_counter() - start) / 1e9)
        def spread(values, fmt):
            v = sorted(values)
            return " / ".join(format(x, fmt) for x in (v[0], statistics.median(v), v[-1]))
        for t in types:
            bpw = 8 * mats[t][0].nbytes / (shape[0] * shape[1])
            ratio_d = [a / b for a, b in zip(gbs[t], gbs[base])]
            ratio_p = [a / b for a, b in zip(gflops[t], gflops[base])]
            print(f"| {shape_name} {shape[0]} x {shape[1]} | {t} | {bpw:.4g} | {spread(gbs[t], '.1f')} | "
                  f"{spread(ratio_d, '.2f')} | {spread(gflops[t], '.0f')} | {spread(ratio_p, '.2f')} |", flush=True)
        del mats


if __name__ == "__main__":
    main()
