"""Tiny random LLaMA GGUFs in k-quants and other GGML types, written with the gguf package.

The package cannot quantize to k-quants, but random codes and random sub-block scales are valid
k-quant data: blocks are random bytes with finite fp16 super-block scales. Types the package can
quantize (Q4_0, Q5_0, ...) are quantized from Gaussian weights; the rest (IQ4_XS, IQ2_XXS, ...)
are random bytes with their fp16 fields set. No tokenizer: the tests pass token ids.
"""
from __future__ import annotations

import gguf
import numpy as np

from qllama.quantize.formats import BY_GGML_TYPE
from qllama.quantize.planes import join_ggml_blocks, split_ggml_blocks

DIM, HIDDEN, LAYERS, HEADS, KV_HEADS, VOCAB = 256, 512, 2, 4, 2, 300
# like llama.cpp's Q4_K_M: Q6_K for v, down and the output head, Q4_K elsewhere
Q4_K_M = {"attn_q": "Q4_K", "attn_k": "Q4_K", "attn_v": "Q6_K", "attn_output": "Q4_K", "ffn_gate": "Q4_K",
          "ffn_up": "Q4_K", "ffn_down": "Q6_K", "token_embd": "Q4_K", "output": "Q6_K"}
# byte offsets of the fp16 fields of types written as random bytes (ggml-common.h's blocks)
FP16_FIELDS = {"IQ4_XS": (0,), "IQ4_NL": (0,), "IQ2_XXS": (0,), "IQ3_XXS": (0,)}


def shapes(dim=DIM, hidden=HIDDEN, layers=LAYERS, vocab=VOCAB) -> dict[str, tuple[int, int]]:
    """GGUF tensor name -> (rows, row length) of the matrices; every row a multiple of 256."""
    DIM, HIDDEN = dim, hidden  # noqa: N806
    s = {"token_embd": (vocab, DIM), "output": (vocab, DIM)}
    for i in range(layers):
        s.update({f"blk.{i}.attn_q": (DIM, DIM), f"blk.{i}.attn_k": (DIM // 2, DIM),   # kv heads: half
                  f"blk.{i}.attn_v": (DIM // 2, DIM), f"blk.{i}.attn_output": (DIM, DIM),
                  f"blk.{i}.ffn_gate": (HIDDEN, DIM), f"blk.{i}.ffn_up": (HIDDEN, DIM),
                  f"blk.{i}.ffn_down": (DIM, HIDDEN)})
    return s


def random_blocks(type_name: str, rows: int, cols: int, rng) -> np.ndarray:
    """(rows, bytes per row) uint8 of valid blocks of type_name, weights of roughly 0.03-0.1."""
    qtype = gguf.GGMLQuantizationType[type_name]
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    n = rows * cols // block
    fmt = BY_GGML_TYPE.get(type_name)
    if fmt is not None and fmt.kind == "k-quant":
        raw = rng.integers(0, 256, size=(n, size), dtype=np.uint8)
        planes = split_ggml_blocks(raw, n, 1, fmt.planes, fmt.ggml_fields)
        # Q4_K/Q5_K: dmin ~ the mean of d * sc * q over dmin's m, so weights centre near zero
        codes_mean = ((1 << fmt.bits) - 1) / 2 * 31.5
        d = np.abs(rng.normal(1.0, 0.2, n)).astype(np.float32) * (1e-4 if fmt.has_mins else 5e-4) * 16 / (1 << fmt.bits)
        planes["scales"][:] = d.astype(np.float16)[:, None]
        if fmt.has_mins:
            planes["mins"][:] = (d * codes_mean / 31.5).astype(np.float16)[:, None]
        return join_ggml_blocks(planes, 1, fmt.planes, fmt.ggml_fields).reshape(rows, -1)
    try:
        return gguf.quants.quantize(rng.standard_normal((rows, cols)).astype(np.float32) * 0.05, qtype)
    except NotImplementedError:     # the gguf package cannot quantize this type (the IQ family):
        raw = rng.integers(0, 256, size=(n, size), dtype=np.uint8)
        for offset in FP16_FIELDS[type_name]:      # random codes under small finite fp16 scales
            raw[:, offset:offset + 2] = (rng.random((n, 1)) * 2e-3).astype(np.float16).view(np.uint8)
        return raw.reshape(rows, -1)


def write_model(path, types: dict[str, str] | None = None, seed: int = 0, last: str | None = None,
                dim=DIM, hidden=HIDDEN, layers=LAYERS, vocab=VOCAB) -> None:
    """A random LLaMA GGUF: types maps a tensor kind (attn_q, ffn_down, token_embd, ...) to a GGML
    type name (default Q4_K_M's); norms are F32. last: the GGUF name of a tensor to write last.
    dim, hidden, layers, vocab: a larger model for benches (heads of 64)."""
    types = {**Q4_K_M, **(types or {})}
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(256)
    heads = dim // 64
    w.add_embedding_length(dim)
    w.add_feed_forward_length(hidden)
    w.add_block_count(layers)
    w.add_head_count(heads)
    w.add_head_count_kv(heads // 2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(64)
    norms = ["output_norm"] + [f"blk.{i}.{n}" for i in range(layers) for n in ("attn_norm", "ffn_norm")]
    for name in norms:
        w.add_tensor(f"{name}.weight", (1 + 0.1 * rng.standard_normal(dim)).astype(np.float32))
    matrices = shapes(dim, hidden, layers, vocab)
    names = sorted(matrices, key=lambda name: name == last)
    for name in names:
        rows, cols = matrices[name]
        type_name = types[name.split(".")[-1]]
        w.add_tensor(f"{name}.weight", random_blocks(type_name, rows, cols, rng),
                     raw_dtype=gguf.GGMLQuantizationType[type_name])
    if last is not None:        # the writer keeps the order tensors were added in
        assert names[-1] == last
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
