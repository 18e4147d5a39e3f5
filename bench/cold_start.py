#!/usr/bin/env python
"""Time to the first generated token with an empty Numba cache (cold) and with a filled one (warm).

    python bench/cold_start.py [MODEL] [--repeats 3] [--modes lazy,prepare,serial]

Each run is a fresh process with its own new cache folder (QLLAMA_CACHE; the model file is read
from where it is): the cold run fills the folder, the warm run is a second process on it. Time is
from `import qllama` to the first token of "Once upon a time" (load + compile or cache loads +
prefill + one sample). Modes, run interleaved (the order reversed every other repeat):
  lazy     the old behaviour: no prepare_kernels, each kernel compiles at its first call, serially
  prepare  prepare_kernels at load: the missing kernels compiled by this process and worker processes
  serial   prepare_kernels with no worker processes (what the workers add, on this machine)
Prints a table of min / median / max per mode, whether the compile message showed, and how much
two processes get done at once on this machine (on a shared VM, two may get no more than one).
MODEL defaults to the default model's GGUF in qllama's cache.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine_info import git_commit, machine_line, version  # bench/ is on sys.path

MODES = ("lazy", "prepare", "serial")
PROMPT = "Once upon a time"


def child(mode: str, model_path: str) -> None:
    """One run, in this process: print {"first_token_s": ..., "load_s": ...} as JSON on stdout."""
    start = time.perf_counter()
    import qllama
    import qllama.model
    from qllama.kernels.warmup import prepare_kernels
    qllama.model.prepare_kernels = lambda model, progress=None: None    # called below, or not at all
    model = qllama.load(model_path)
    if mode != "lazy":
        prepare_kernels(model, workers=0 if mode == "serial" else None)
    loaded = time.perf_counter()
    next(iter(model.generate(PROMPT, max_tokens=1, temperature=0)))
    done = time.perf_counter()
    print(json.dumps({"first_token_s": done - start, "load_s": loaded - start}))


def run(mode: str, model: Path, cache: str) -> dict:
    env = {**os.environ, "QLLAMA_CACHE": cache}
    out = subprocess.run([sys.executable, __file__, "--child", mode, str(model)], env=env, capture_output=True,
                         text=True, timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{out.stderr}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["message"] = "compiling kernels" in out.stderr
    return result


def parallel_throughput(seconds: float = 1.0) -> float:
    """Work two processes do at once over what one does alone (2.0: two real cores)."""
    spin = f"import time\nt = time.perf_counter(); n = 0\nwhile time.perf_counter() - t < {seconds}: n += 1\nprint(n)"
    one = int(subprocess.run([sys.executable, "-c", spin], capture_output=True, text=True).stdout)
    procs = [subprocess.Popen([sys.executable, "-c", spin], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    return sum(int(p.communicate()[0]) for p in procs) / one


def span(values: list[float]) -> str:
    return f"{min(values):.1f} / {statistics.median(values):.1f} / {max(values):.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", default="lazy,prepare,serial")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    from qllama.pull import default_gguf_path
    model = Path(args.model) if args.model else default_gguf_path()
    modes = args.modes.split(",")
    if not set(modes) <= set(MODES):
        parser.error(f"--modes: each one of {', '.join(MODES)}")
    print(f"model: {model}")
    print(f"machine: {machine_line()}; numba {version('numba')}; commit {git_commit()}")
    print(f"two processes at once do {parallel_throughput():.2f}x the work of one")
    results = {m: {"cold": [], "warm": [], "cold_message": [], "warm_message": []} for m in modes}
    for r in range(args.repeats):
        for mode in modes if r % 2 == 0 else modes[::-1]:
            with tempfile.TemporaryDirectory(prefix="qllama-cold-") as cache:
                for state in ("cold", "warm"):
                    result = run(mode, model, cache)
                    results[mode][state].append(result["first_token_s"])
                    results[mode][f"{state}_message"].append(result["message"])
                    print(f"  repeat {r + 1} {mode:7s} {state}: {result['first_token_s']:6.2f} s to the first token"
                          f" (load {result['load_s']:.2f} s){', compile message' if result['message'] else ''}",
                          flush=True)
    print("\n| mode | cold: s to first token (min / median / max) | warm (min / median / max) | message cold / warm |")
    print("|---|---|---|---|")
    for mode, r in results.items():
        shown = f"{sum(r['cold_message'])}/{len(r['cold'])} / {sum(r['warm_message'])}/{len(r['warm'])}"
        print(f"| {mode} | {span(r['cold'])} | {span(r['warm'])} | {shown} |")


if __name__ == "__main__":
    main()
