"""llama.cpp's k-quant file types (Q4_K_M, Q5_K_M, Q6_K): which type each tensor gets.

Facts from llama.cpp's src/llama-quant.cpp (llama_tensor_get_type, tensor_type_fallback), checked
against its own quantizer by tests/fixtures/kquant_mix.json (tests/fixtures/make_kquant_mix.py):
- every matrix takes the file type's base type (Q4_K, Q5_K, Q6_K), the token embedding too;
- the output head, and the token embedding when it doubles as the head (tied), take Q6_K, or Q8_0
  when its rows are not whole super-blocks of 256;
- Q4_K_M and Q5_K_M: attn_v and ffn_down take Q6_K on the "use more bits" layers: the first and
  last eighth, and every third layer between (counted by layer number);
- a matrix whose rows are not whole super-blocks falls back: Q4_K -> Q5_0, Q5_K -> Q5_1,
  Q6_K -> Q8_0, and to F16 when its rows are not whole blocks of 32 either.
qllama has no Q5_0, Q5_1 or F16 format, so `qllama_format` maps a type to the table format with
the fewest bits per weight at or above it whose blocks fit the row and that llama.cpp also reads:
Q5_0 and Q5_1 become q8_0 (Q8_0); F16 stays float (F32), as a row of no whole blocks has no ggml
quant type.
"""
from __future__ import annotations

from dataclasses import dataclass

import gguf

from .formats import FORMATS, BY_GGML_TYPE

SUPER_BLOCK = 256
FALLBACK = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}


@dataclass(frozen=True)
class KQuantMix:
    name: str            # the --format name
    base: str            # ggml type of most matrices
    file_type: str       # gguf.LlamaFileType member: general.file_type of the .gguf
    more_bits: bool      # attn_v and ffn_down in Q6_K on the use_more_bits layers

    @property
    def kind(self) -> str:
        return "k-quant mix"

    @property
    def bits_per_weight(self) -> float:
        """Of the base type (the mix adds a little)."""
        return FORMATS[self.base.lower()].bits_per_weight


MIXES = {m.name: m for m in (KQuantMix("q4_k_m", "Q4_K", "MOSTLY_Q4_K_M", True),
                             KQuantMix("q5_k_m", "Q5_K", "MOSTLY_Q5_K_M", True),
                             KQuantMix("q6_k", "Q6_K", "MOSTLY_Q6_K", False))}


def use_more_bits(layer: int, n_layers: int) -> bool:
    return layer < n_layers // 8 or layer >= 7 * n_layers // 8 or (layer - n_layers // 8) % 3 == 2


def ggml_types(mix: KQuantMix, shapes: dict[str, tuple[int, ...]], n_layers: int) -> dict[str, str]:
    """llama.cpp's name -> (rows, row length) of every tensor -> its ggml type name ("F32" for vectors)."""
    tied = "output.weight" not in shapes
    types = {}
    for name, shape in shapes.items():
        if len(shape) < 2:
            types[name] = "F32"
            continue
        role, layer = name, -1
        if name.startswith("blk."):
            layer, role = int(name.split(".")[1]), name.split(".")[2]
        n_in = shape[-1]
        if name == "output.weight" or (tied and name == "token_embd.weight"):
            qtype = "Q8_0" if n_in % SUPER_BLOCK else "Q6_K"
        else:
            qtype = mix.base
            if mix.more_bits and role in ("attn_v", "ffn_down") and use_more_bits(layer, n_layers):
                qtype = "Q6_K"
        types[name] = fallback(qtype, n_in)
    return types


def fallback(qtype: str, n_in: int) -> str:
    """tensor_type_fallback: the type a row of n_in weights takes instead of qtype."""
    if qtype in FALLBACK and n_in % SUPER_BLOCK:
        qtype = FALLBACK[qtype]
    block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]][0]
    return "F16" if n_in % block else qtype


def qllama_format(qtype: str, n_in: int):
    """A ggml type -> the table format that stores it (None: float32), see the module docstring."""
    if qtype in ("F32", "F16"):
        return None
    if qtype in BY_GGML_TYPE:
        return BY_GGML_TYPE[qtype]
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]]
    bits = 8 * size / block
    fits = [f for f in FORMATS.values() if f.ggml_type and n_in % f.group_size == 0 and f.bits_per_weight >= bits]
    return min(fits, key=lambda f: f.bits_per_weight) if fits else None
