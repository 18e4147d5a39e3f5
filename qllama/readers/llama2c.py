"""llama2.c `.bin` reader (karpathy's legacy export, version 0).

Layout: 7 int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len; a negative
vocab_size means an unshared classifier follows), then float32 arrays in a fixed order. The order
*is* the format, so the file size must match the header exactly before anything is mapped.
q/k rows are in the interleaved-pair RoPE layout and are permuted to rotate-half.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..checkpoint import Checkpoint, SourceTensor, check_tensors, interleaved_to_rotate_half
from ..config import ModelArgs
from ..errors import QllamaError

HEADER = np.dtype([(k, "<i4") for k in ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len")])


def layout(args: ModelArgs, shared: bool) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of each array in file order; per-layer arrays are stacked over layers."""
    L, d, hd = args.n_layers, args.dim, args.head_dim
    items = [
        ("model.embed_tokens.weight", (args.vocab_size, d)),
        ("input_layernorm", (L, d)), ("self_attn.q_proj", (L, args.q_dim, d)),
        ("self_attn.k_proj", (L, args.kv_dim, d)), ("self_attn.v_proj", (L, args.kv_dim, d)),
        ("self_attn.o_proj", (L, d, args.q_dim)), ("post_attention_layernorm", (L, d)),
        ("mlp.gate_proj", (L, args.hidden_dim, d)), ("mlp.down_proj", (L, d, args.hidden_dim)),
        ("mlp.up_proj", (L, args.hidden_dim, d)), ("model.norm.weight", (d,)),
        ("freq_cis_real", (args.max_seq_len, hd // 2)), ("freq_cis_imag", (args.max_seq_len, hd // 2)),
    ]
    if not shared:
        items.append(("lm_head.weight", (args.vocab_size, d)))
    return items


def find_sentencepiece(path: Path, tokenizer_path):
    from ..tokenizer import load_tokenizer_file
    if tokenizer_path is not None:
        return load_tokenizer_file(Path(tokenizer_path))
    candidates = sorted(path.parent.glob("*.model"))
    if len(candidates) != 1:
        raise QllamaError(f"{path}: found {len(candidates)} SentencePiece .model files beside it; "
                          f"name the tokenizer with --tokenizer")
    return load_tokenizer_file(candidates[0])


def read_llama2c(path: Path, tokenizer_path=None) -> Checkpoint:
    size = path.stat().st_size
    if size < HEADER.itemsize:
        raise QllamaError(f"{path}: too small for a llama2.c header ({size} bytes)")
    h = np.fromfile(path, dtype=HEADER, count=1)[0]
    vocab = int(h["vocab_size"])
    if vocab == 0 or min(int(h[k]) for k in HEADER.names if k != "vocab_size") <= 0:
        raise QllamaError(f"{path}: not a llama2.c checkpoint (header {tuple(int(v) for v in h)})")
    dim, n_heads = int(h["dim"]), int(h["n_heads"])
    if dim % n_heads:
        raise QllamaError(f"{path}: dim {dim} is not a multiple of n_heads {n_heads}: not a llama2.c checkpoint")
    args = ModelArgs.checked(str(path), dim=dim, hidden_dim=int(h["hidden_dim"]), n_layers=int(h["n_layers"]),
                             n_heads=n_heads, n_kv_heads=int(h["n_kv_heads"]), head_dim=dim // n_heads,
                             vocab_size=abs(vocab), norm_eps=1e-5, rope_theta=10000.0, max_seq_len=int(h["seq_len"]),
                             tied_embeddings=vocab > 0)
    items = layout(args, shared=vocab > 0)
    n_floats = sum(int(np.prod(s)) for _, s in items)
    expected = HEADER.itemsize + 4 * n_floats
    if size != expected:
        raise QllamaError(f"{path}: file has {size} bytes but its header implies {expected}: truncated or not llama2.c")
    data = np.memmap(path, dtype="<f4", mode="r", offset=HEADER.itemsize, shape=(n_floats,))
    tensors, offset = {}, 0
    for name, shape in items:
        n = int(np.prod(shape))
        array = data[offset: offset + n].reshape(shape)
        offset += n
        if name.startswith("freq_cis"):
            continue  # recomputed from rope_theta
        if name.startswith("model.") or name.startswith("lm_head"):
            tensors[name] = SourceTensor(shape, "F32", array, np.asarray)
            continue
        for layer in range(args.n_layers):
            rows = None
            if name == "self_attn.q_proj":
                rows = interleaved_to_rotate_half(args.n_heads, args.head_dim)
            elif name == "self_attn.k_proj":
                rows = interleaved_to_rotate_half(args.n_kv_heads, args.head_dim)
            tensors[f"model.layers.{layer}.{name}.weight"] = SourceTensor(shape[1:], "F32", array[layer], np.asarray, rows)
    check_tensors(path, args, {n: t.shape for n, t in tensors.items()})
    return Checkpoint(path, "llama2c", args, tensors, find_sentencepiece(path, tokenizer_path), None,
                      {"source": str(path)})
