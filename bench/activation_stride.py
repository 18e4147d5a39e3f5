#!/usr/bin/env python
"""Prompt matmuls with the int8 activation rows at their width and one cache line wider, A/B in one process.

    python bench/activation_stride.py [--types q6_k,q4_k,q4_0] [--widths 2048,4096,5632,11008] [--threads 1]

The kernels take the activations' row stride from the array's shape and read only a row's codes, so
the same compiled kernel runs on both arrays (and must give the same output, checked). For each
type and input width: a random matrix of 512 rows (random valid blocks, as bench/kquant_speed.py),
64 tokens (one token chunk of the prefill kernel), the two strides timed in turn nine times, the
order swapped every time. Prints the median time of each and the median ratio (min-max) of the
pairs: above 1, the wider rows are faster. kernels/layout.py pads the widths where this measured a
gain (multiples of 4096).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

PAD = 64                     # one cache line
ROWS, TOKENS, PAIRS = 512, 64, 9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--types", default="q6_k,q4_k,q4_0")
    parser.add_argument("--widths", default="2048,4096,5632,11008")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import numba
    numba.set_num_threads(args.threads)
    from kquant_speed import random_tensor
    from qllama.linear import QuantLinear
    rng = np.random.default_rng(0)
    print("| type | width | rows as wide as the codes, ms | one cache line wider, ms | ratio min / median / max |")
    print("|---|---:|---:|---:|---|")
    for type_name in args.types.split(","):
        for width in map(int, args.widths.split(",")):
            lin = QuantLinear(random_tensor(type_name, (ROWS, width), rng))
            x = rng.standard_normal((TOKENS, width)).astype(np.float32)
            xq, *rest = lin.kernels.quantize_input(x, lin.fmt)
            tight = np.ascontiguousarray(xq[:, :width])
            wide = np.zeros((TOKENS, width + PAD), np.int8)
            wide[:, :width] = tight
            matmul = getattr(lin.matmul, "prefill", lin.matmul)   # k-quants: the tiled kernel itself
            outs = {}
            for name, codes in (("tight", tight), ("wide", wide)):
                outs[name] = np.empty((TOKENS, lin.out_rows), np.float32)
                matmul(*lin.planes, codes, *rest, outs[name])
            assert np.array_equal(outs["tight"], outs["wide"])
            out = outs["tight"]
            calls = max(3, int(3e8 / (ROWS * width * TOKENS)))
            times = {"tight": [], "wide": []}
            for k in range(PAIRS):
                for name in ("tight", "wide") if k % 2 else ("wide", "tight"):
                    codes = tight if name == "tight" else wide
                    start = time.perf_counter()
                    for _ in range(calls):
                        matmul(*lin.planes, codes, *rest, out)
                    times[name].append((time.perf_counter() - start) / calls)
            ratios = [a / b for a, b in zip(times["tight"], times["wide"])]
            print(f"| {type_name} | {width} | {statistics.median(times['tight']) * 1e3:.2f} | "
                  f"{statistics.median(times['wide']) * 1e3:.2f} | "
                  f"{min(ratios):.3f} / {statistics.median(ratios):.3f} / {max(ratios):.3f} |", flush=True)


if __name__ == "__main__":
    main()
