"""Paths of the real files the corpus starts from, and small byte helpers shared by its modules."""
from __future__ import annotations

import json
import struct
from pathlib import Path

from paths import MODELS

STORIES = MODELS / "stories260K"
GGUF_FILE = STORIES / "stories260K.gguf"
LLAMA2C_FILE = STORIES / "stories260K.bin"
SPM_FILE = STORIES / "tok512.model"
BIG_SPM_FILE = MODELS / "llama-tokenizer" / "tokenizer.model"
HF = Path(__file__).resolve().parents[1] / "fixtures" / "hf"
HF_UNTIED = HF / "llama3_untied_f32"       # config + one model.safetensors, no tokenizer
HF_TOKENIZED = HF / "gqa_tied_f32"         # with tokenizer.json and a chat template
HF_SHARDED = HF / "linear_sharded_f16"
NOT_UTF8 = b'{"x": "caf\xe9"}'


def cut_points(size: int, fixed: list[int], n_spread: int) -> list[int]:
    """Truncation lengths: the fixed ones (structure boundaries) and n_spread spread over the file."""
    spread = [size * i // (n_spread + 1) for i in range(1, n_spread + 1)]
    return sorted({p for p in fixed + spread + [0, size - 1] if 0 <= p < size})


def split_safetensors(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def join_safetensors(header: dict | bytes, body: bytes) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body
