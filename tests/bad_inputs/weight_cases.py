"""Files whose structure is sound but whose weights are not finite: `info` (which reads no weights)
accepts them, and `run` must refuse them at load, naming the file and the tensor."""
from __future__ import annotations

import struct

import numpy as np

import gguf_bytes as gb

from . import Case
from .sources import GGUF_FILE, HF_UNTIED, join_safetensors, split_safetensors

NORM = "model.norm.weight"
RUN = ["run", "Once", "--raw", "-n", "1", "-m"]


def gguf_with(value: float) -> bytes:
    g = gb.read(GGUF_FILE)
    norm = next(t for t in g.tensors if t.name == "output_norm.weight")
    norm.data = struct.pack("<f", value) + norm.data[4:]
    return gb.to_bytes(g)


def hf_with(value: float) -> bytes:
    header, body = split_safetensors((HF_UNTIED / "model.safetensors").read_bytes())
    begin = header[NORM]["data_offsets"][0]
    return join_safetensors(header, body[:begin] + np.float32(value).tobytes() + body[begin + 4:])


def cases() -> list[Case]:
    out = []
    for label, value in (("nan", float("nan")), ("inf", float("inf"))):
        out.append(Case(f"weights-gguf-{label}", RUN + ["m.gguf"], ("m.gguf", "model.norm.weight"),
                        lambda _s, v=value: {"m.gguf": gguf_with(v)}))
        out.append(Case(f"weights-hf-{label}", RUN + ["model", "--tokenizer", "t.json"], ("model", NORM),
                        lambda _s, v=value: {"model/config.json": HF_UNTIED / "config.json",
                                             "model/model.safetensors": hf_with(v),
                                             "t.json": HF_UNTIED.parent / "gqa_tied_f32" / "tokenizer.json"}))
    return out
