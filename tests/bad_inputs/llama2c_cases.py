"""Malformed llama2.c .bin files (stories260K.bin beside tok512.model): truncations, extra bytes,
and header fields that are zero, negative, huge or inconsistent."""
from __future__ import annotations

import struct

from . import Case
from .sources import LLAMA2C_FILE, SPM_FILE, cut_points

NAME = "bad.bin"
FIELDS = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len")


def case(name: str, make, tokenizer=True, expect=(NAME,)) -> Case:
    return Case(f"bin-{name}", ["info", NAME], expect,
                lambda _s: {NAME: make(), **({"tok512.model": SPM_FILE} if tokenizer else {})})


def with_field(field: str, value: int):
    def make():
        data = bytearray(LLAMA2C_FILE.read_bytes())
        i = FIELDS.index(field) * 4
        data[i:i + 4] = struct.pack("<i", value)
        return bytes(data)
    return make


def cases() -> list[Case]:
    size = LLAMA2C_FILE.stat().st_size
    out = [case(f"cut-{n}", lambda n=n: LLAMA2C_FILE.read_bytes()[:n]) for n in cut_points(size, [4, 27, 28, 32], 8)]
    out.append(case("extra-bytes", lambda: LLAMA2C_FILE.read_bytes() + b"\0" * 4))
    for field in FIELDS:
        for value in (0, -1, 1, 3, 2 ** 31 - 1, -2 ** 31):
            out.append(case(f"{field}-{value}", with_field(field, value)))
    out.append(case("head_dim-odd", with_field("n_heads", 64)))     # dim 64 / 64 heads: head_dim 1
    out.append(case("no-tokenizer", lambda: LLAMA2C_FILE.read_bytes(), tokenizer=False))
    out.append(Case("bin-two-tokenizers", ["info", NAME], (NAME, "--tokenizer"),
                    lambda _s: {NAME: LLAMA2C_FILE, "a.model": SPM_FILE, "b.model": SPM_FILE}))
    out.append(Case("bin-tokenizer-garbage", ["info", NAME], ("tok512.model",),
                    lambda _s: {NAME: LLAMA2C_FILE, "tok512.model": b"\x0a\xff" * 64}))
    return out
