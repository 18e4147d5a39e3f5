"""Quantization quality: every format, searched scales vs ggml's absmax rounding, on real models.

For stories260K (real float32 weights) and SmolLM2-135M-Instruct (its Q4_1 GGUF dequantized to
float32 is the reference), quantize with each FORMATS entry, then measure on a real English text we
did not write (bench/data/gpl-3.txt, the GNU GPL v3): file size, bits per weight, perplexity, KL
divergence from the float model and top-1 agreement, as `qllama perplexity --reference` does.
Embedding and output head stay q8_g32 in every row, so rows of one format have the same size, except
llama.cpp's k-quant mixes (q4_k_m, q5_k_m, q6_k), which choose every tensor's type as llama.cpp does.
The calibrated row uses a different text (the Apache License 2.0 text from Debian's base-files) than the one
it is measured on.

    python bench/quality.py [--models stories,smollm2] [--formats q4_g32,...] [--smollm2-chars 12000]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

import qllama
from qllama.checkpoint import SourceTensor, open_checkpoint
from qllama.perplexity import perplexity
from qllama.pull import ensure_default_gguf
from qllama.quantize.convert import convert_checkpoint, resolve_format
from qllama.quantize.formats import FORMATS, get_format
from qllama.quantize.kquant_mix import MIXES, KQuantMix

ROOT = Path(__file__).resolve().parents[1]
TEXT = ROOT / "bench" / "data" / "gpl-3.txt"
CALIBRATION = Path("/usr/share/common-licenses/Apache-2.0")
CTX = 512


def float_checkpoint(path):
    """The checkpoint with every tensor decoded to float32: the reference a quantizer starts from."""
    ckpt = open_checkpoint(path)
    tensors = {n: SourceTensor(t.shape, "F32", t.float32(), np.asarray) for n, t in ckpt.tensors.items()}
    return replace(ckpt, tensors=tensors)


def evaluate(name, ckpt, reference, text, configs, out):
    print(f"\n### {name}\n", file=out)
    print("| format | method | bits/weight | file MiB | perplexity | KL divergence | top-1 agreement |", file=out)
    print("|---|---|---|---|---|---|---|", file=out)
    ref = perplexity(reference, text, ctx=CTX)
    n_params = sum(int(np.prod(t.shape)) for t in ckpt.tensors.values())
    print(f"| float32 | reference | 32 | {n_params * 4 / 2**20:.2f} | {ref.ppl:.3f} ± {ref.ppl_se:.3f} | 0 | 1 |", file=out)
    out.flush()
    with tempfile.TemporaryDirectory() as tmp:
        for fmt_name, method in configs:
            path = Path(tmp) / "q.safetensors"
            start = time.monotonic()
            fmt = resolve_format(fmt_name)
            convert_checkpoint(ckpt, path, fmt, None if isinstance(fmt, KQuantMix) else get_format("q8_g32"),
                               calibration=CALIBRATION if method == "search+calibration" else None,
                               force=True, search=method != "absmax")
            seconds = time.monotonic() - start
            r = perplexity(qllama.load(path), text, ctx=CTX, reference=reference)
            size = path.stat().st_size
            print(f"| {fmt_name} | {method} | {8 * size / n_params:.3f} | {size / 2**20:.2f} | {r.ppl:.3f} ± {r.ppl_se:.3f} "
                  f"| {r.kl:.5f} ± {r.kl_se:.5f} | {r.top1:.4f} ± {r.top1_se:.4f} |", file=out)
            print(f"  {name} {fmt_name} {method}: KL {r.kl:.5f} (quantized in {seconds:.1f} s)", file=sys.stderr)
            out.flush()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="stories,smollm2")
    p.add_argument("--formats", default=",".join([f for f in FORMATS if f not in MIXES] + list(MIXES)))
    p.add_argument("--smollm2-chars", type=int, default=12000, help="SmolLM2 is slower: measure on the text's start")
    args = p.parse_args()
    text = TEXT.read_text(encoding="utf-8")
    formats = args.formats.split(",")
    configs = [(f, m) for f in formats for m in ("absmax", "search")]
    configs += [(f, "search+calibration") for f in ("q4_g32", "q4_k_m") if f in formats]
    models = {
        "stories": ("stories260K (float32 weights; llama2.c .bin)", ROOT.parent / "shared/models/stories260K/stories260K.bin", text),
        "smollm2": ("SmolLM2-135M-Instruct (Q4_1 GGUF dequantized as the reference)", None, text[:args.smollm2_chars]),
    }
    for key in args.models.split(","):
        title, path, model_text = models[key]
        path = path or ensure_default_gguf()
        ckpt = float_checkpoint(path)
        evaluate(title, ckpt, qllama.model.Model(ckpt, ctx=CTX), model_text, configs, sys.stdout)


if __name__ == "__main__":
    main()
