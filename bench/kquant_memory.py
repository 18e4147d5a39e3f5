#!/usr/bin/env python
"""Peak RSS of loading a GGUF and running a short prompt, against file size + KV cache + 200 MB.

    python bench/kquant_memory.py [--types Q4_K_M,Q5_0,IQ4_XS] [--layers 4]

Writes a random LLaMA GGUF of TinyLlama's widths (dim 2048, hidden 5632, vocab 32000; --layers
layers) per type (Q4_K_M: its Q4_K/Q6_K mix; any other name: every matrix in that type, random
valid blocks), then in a fresh process loads it (context 256) and runs 8 tokens; prints the child's
peak RSS (VmHWM) and the bound.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import kquant_gguf  # noqa: E402

CHILD = """
import sys, numpy as np, qllama
m = qllama.load(sys.argv[1], ctx=256)
m.logits(np.arange(8) + 5)
kv = sum(a.nbytes for a in m.session.cache.__dict__.values() if hasattr(a, 'nbytes'))
# VmHWM: this process's own peak (ru_maxrss would carry the parent's RSS at fork over the exec)
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(hwm, kv)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--types", default="Q4_K_M,Q5_0,IQ4_XS")
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args()
    kquant_gguf.FP16_FIELDS.setdefault("Q5_0", (0,))      # random bytes: gguf's quantizer is slow at this size
    with tempfile.TemporaryDirectory() as tmp:
        print("| types | file MiB | peak RSS MiB | file + KV + 200 MiB |")
        print("|---|---:|---:|---:|")
        for name in args.types.split(","):
            path = Path(tmp) / f"{name}.gguf"
            types = None if name == "Q4_K_M" else {k: name for k in kquant_gguf.Q4_K_M}
            if name == "Q5_0":
                orig = kquant_gguf.gguf.quants.quantize
                kquant_gguf.gguf.quants.quantize = lambda *a: (_ for _ in ()).throw(NotImplementedError())
            kquant_gguf.write_model(path, types, dim=2048, hidden=5632, layers=args.layers, vocab=32000)
            if name == "Q5_0":
                kquant_gguf.gguf.quants.quantize = orig
            out = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, check=True)
            rss_kib, kv = map(int, out.stdout.split())
            size = path.stat().st_size
            print(f"| {name} | {size / 2**20:.0f} | {rss_kib / 1024:.0f} | {(size + kv) / 2**20 + 200:.0f} |", flush=True)
            path.unlink()


if __name__ == "__main__":
    main()
