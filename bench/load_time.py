#!/usr/bin/env python
"""Load time and peak memory of qllama.load on model files, the file in the page cache.

    python bench/load_time.py FILE [FILE ...] [--runs 3] [--threads 2]

Each run is a fresh process (so nothing is cached in memory but the page cache) that times
`qllama.load(path, ctx=1024)` and reports its peak RSS (VmHWM: the child's own). One untimed
run first reads the file into the page cache and fills Numba's on-disk cache. Prints a Markdown
table for bench/RESULTS.md: median (min-max) seconds, peak RSS and the file's size.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from machine_info import git_commit, machine_line  # noqa: E402 (bench/ is on sys.path)

MARK = "RESULT "


def child(path: str) -> None:
    import qllama
    start = time.perf_counter()
    model = qllama.load(path, ctx=1024)
    seconds = time.perf_counter() - start
    peak = next(int(line.split()[1]) / 1024 for line in Path("/proc/self/status").read_text().splitlines()
                if line.startswith("VmHWM:"))
    print(MARK + json.dumps({"load_s": seconds, "peak_mib": peak, "weights": len(model.weights)}), flush=True)


def run(path: Path, threads: int) -> dict:
    env = {**os.environ, "NUMBA_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, __file__, "--child", str(path)], capture_output=True, text=True, env=env)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith(MARK)]
    if out.returncode or not lines:
        raise SystemExit(f"error: loading {path} failed:\n{out.stderr[-2000:]}")
    return json.loads(lines[-1][len(MARK):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child)
    if not args.files:
        parser.error("name at least one model file")
    print(f"Command: `python bench/load_time.py {' '.join(sys.argv[1:])}`; {machine_line()}; git {git_commit()}; "
          f"load average {os.getloadavg()[0]:.2f} at start\n")
    print("| file | MiB | load s | peak RSS MiB |\n|---|---:|---|---:|")
    for path in args.files:
        run(path, args.threads)                                 # page cache and Numba cache
        results = [run(path, args.threads) for _ in range(args.runs)]
        s = [r["load_s"] for r in results]
        peak = statistics.median(r["peak_mib"] for r in results)
        print(f"| {path.name} | {path.stat().st_size / 2**20:,.0f} | {statistics.median(s):.2f} "
              f"({min(s):.2f}-{max(s):.2f}) | {peak:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
