"""Byte-level mutations (seeded, so every run builds the same files) of the structured part of each
real file: GGUF metadata and tensor infos, safetensors headers, the llama2.c header, SentencePiece
and tokenizer.json files. A mutated file may still be valid, so these cases may succeed; what they
must never do is crash, hang, balloon or touch a file."""
from __future__ import annotations

import random

import gguf

from . import Case, Sources
from .sources import GGUF_FILE, HF_TOKENIZED, HF_UNTIED, LLAMA2C_FILE, SPM_FILE

N_PER_KIND = 30


def mutate(data: bytes, region: int, rng: random.Random) -> bytes:
    """1-4 edits inside data[:region]: a byte set at random, to 0 or 0xff, one inserted or one deleted."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(region)
        kind = rng.randrange(4)
        if kind == 0:
            out[i] = rng.randrange(256)
        elif kind == 1:
            out[i] = rng.choice((0, 0xFF))
        elif kind == 2:
            out.insert(i, rng.randrange(256))
        else:
            del out[i]
    return bytes(out)


def header_end(data: bytes) -> int:
    return 8 + int.from_bytes(data[:8], "little")


def kind_cases(kind: str, argv: list[str], files, target: str, region, names: str) -> list[Case]:
    """files(sources) -> the case folder's good files; target is the one mutated; region(bytes) its extent;
    names: what an error must name."""
    def make(seed):
        def build(s: Sources):
            out = files(s)
            data = out[target].read_bytes() if hasattr(out[target], "read_bytes") else out[target]
            out[target] = mutate(data, region(data), random.Random(f"{kind}-{seed}"))
            return out
        return build
    return [Case(f"mut-{kind}-{seed}", argv, (names,), make(seed), must_fail=False) for seed in range(N_PER_KIND)]


def cases() -> list[Case]:
    gguf_region = gguf.GGUFReader(GGUF_FILE).data_offset
    hf = lambda src: lambda _s: {f"model/{p.name}": p for p in src.iterdir()}
    return (
        kind_cases("gguf", ["info", "m.gguf"], lambda _s: {"m.gguf": GGUF_FILE}, "m.gguf", lambda d: gguf_region, "m.gguf")
        + kind_cases("safetensors", ["info", "model"], hf(HF_UNTIED), "model/model.safetensors", header_end, "model")
        + kind_cases("qllama", ["info", "m.safetensors"], lambda s: {"m.safetensors": s.qllama_file}, "m.safetensors",
                     header_end, "m.safetensors")
        + kind_cases("llama2c", ["info", "m.bin"], lambda _s: {"m.bin": LLAMA2C_FILE, "t.model": SPM_FILE}, "m.bin",
                     lambda d: 28, "m.bin")
        + kind_cases("spm", ["info", "m.bin", "--tokenizer", "t.model"],
                     lambda _s: {"m.bin": LLAMA2C_FILE, "t.model": SPM_FILE}, "t.model", len, "t.model")
        + kind_cases("tokenizer-json", ["info", "model"], hf(HF_TOKENIZED), "model/tokenizer.json", len, "model")
    )
