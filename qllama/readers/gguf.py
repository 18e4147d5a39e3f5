"""GGUF reader, through the `gguf` package: llama.cpp names -> Hugging Face names, RoPE rows permuted.

GGUF stores q/k rows in the interleaved-pair RoPE layout; we permute them once to rotate-half. Rows
are permuted whole (groups run along the input dimension), so quantized rows stay bit-exact.
`rope_freqs.weight` (llama.cpp's converter writes Llama 3.1+'s llama3 RoPE scaling as this tensor of
per-frequency divisors, and no rope.scaling metadata) is not a weight: it goes into ModelArgs.
"""
from __future__ import annotations

import functools

import math
import mmap
import re
from pathlib import Path

import numpy as np

from ..checkpoint import Checkpoint, SourceTensor, check_tensors, interleaved_to_rotate_half
from ..config import ModelArgs
from ..errors import QllamaError
from .byte_spans import overlapping_pair

GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
BLOCK_NAMES = {
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
BLOCK_RE = re.compile(r"blk\.(\d+)\.(\w+)\.weight")
ROPE_FREQS = "rope_freqs.weight"


def hf_name(path: Path, name: str) -> str:
    if name in GLOBAL_NAMES:
        return GLOBAL_NAMES[name]
    m = BLOCK_RE.fullmatch(name)
    if m and m.group(2) in BLOCK_NAMES:
        return f"model.layers.{m.group(1)}.{BLOCK_NAMES[m.group(2)]}.weight"
    raise QllamaError(f"{path}: unexpected tensor {name}: not a plain LLaMA model")


class TensorProblem(Exception):
    """A tensor the reader refuses, by name (open_gguf_reader adds the file)."""


def _checked_reader():
    """The GGUF reader (gguf_fields.PlainReader) that checks each tensor's type, row length and extent before it maps it:
    the package's own failures there (an unknown type, a partial block, data past the end) do not
    say which tensor. Overrides the package's private _build_tensors (its tensor-info fields:
    name length, name, n_dims, dims, type, offset), kept as it is after the checks."""
    from .gguf_fields import PlainReader

    class CheckedReader(PlainReader):
        def _build_tensors(self, start_offs, fields):
            spans = []
            for field in fields:
                _, name_data, _, dims, raw_type, offset = field.parts
                name = bytes(name_data).decode("utf-8", "replace")
                if int(offset[0]) % int(self.alignment):   # the spec pads every tensor to it; off it, a crafted shift
                    raise TensorProblem(f"tensor {name} starts at data offset {int(offset[0])}, not a multiple "
                                        f"of the file's alignment {int(self.alignment)}")
                begin = int(start_offs + offset[0])
                spans.append((begin, check_tensor(name, int(raw_type[0]), [int(d) for d in dims], begin,
                                                  len(self.data)), name))
            check_no_overlap(spans)
            super()._build_tensors(start_offs, fields)
    return CheckedReader


def check_tensor(name: str, type_id: int, dims: list[int], begin: int, file_size: int) -> int:
    """One tensor's info against the GGML type table and the file: its end, or TensorProblem if it cannot be read."""
    import gguf
    try:
        qtype = gguf.GGMLQuantizationType(type_id)
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    except (ValueError, KeyError):
        raise TensorProblem(f"tensor {name} has unknown GGML type {type_id}") from None
    if not decodable(qtype):
        raise TensorProblem(f"tensor {name} has GGML type {qtype.name}, which qllama cannot decode")
    if any(d < 0 for d in dims) or not dims:
        raise TensorProblem(f"tensor {name} has bad dimensions {dims}")
    if dims[0] % block:
        raise TensorProblem(f"tensor {name} ({qtype.name}) has rows of {dims[0]} weights, not a whole number of "
                            f"{qtype.name} blocks of {block}")
    end = begin + math.prod(dims) // block * type_size
    if end > file_size:
        raise TensorProblem(f"tensor {name} ({qtype.name}) runs past the end of the file (ends at byte {end}, "
                            f"file has {file_size}): truncated file")
    return end


def check_no_overlap(spans: list[tuple[int, int, str]]) -> None:
    """(begin, end, name) byte ranges: tensors sharing bytes would alias one another."""
    pair = overlapping_pair(spans)
    if pair:
        raise TensorProblem(f"tensors {pair[0]} and {pair[1]} overlap in the file")


def open_gguf_reader(path: Path):
    try:
        return _checked_reader()(path)
    except TensorProblem as e:
        raise QllamaError(f"{path}: {e}") from None
    except ValueError as e:
        if "cannot reshape" in str(e):  # the package maps tensor data short of its declared size
            raise QllamaError(f"{path}: tensor data runs past the end of the file: truncated GGUF") from None
        raise QllamaError(f"{path}: malformed GGUF file ({e})") from None
    except Exception as e:  # the package raises many kinds for malformed files; all mean the same to a user
        raise QllamaError(f"{path}: malformed GGUF file ({type(e).__name__}: {e})") from None


def page_release(reader, begin: int, end: int):
    """A function that drops the file pages of bytes begin..end from this process (they stay in
    the OS page cache; a later read maps them again), or None where the mapping does not allow it."""
    mapping = getattr(getattr(reader, "memmap", None), "_mmap", None)      # numpy.memmap's mmap.mmap
    if mapping is None or not hasattr(mmap, "MADV_DONTNEED"):
        return None
    begin -= begin % mmap.PAGESIZE
    return lambda: mapping.madvise(mmap.MADV_DONTNEED, begin, end - begin) if end > begin else None


def decoder(qtype):
    """float32 rows from stored rows of qtype (the gguf package's dequantize for quantized types)."""
    import gguf
    if qtype == gguf.GGMLQuantizationType.F32:
        return lambda raw: raw
    if qtype == gguf.GGMLQuantizationType.F16:
        return lambda raw: raw.astype(np.float32)
    return lambda raw: gguf.quants.dequantize(raw, qtype)


def read_rope_freqs(path: Path, t, qtype) -> list[float]:
    """rope_freqs.weight: one positive float divisor per rotating pair (F32, as llama.cpp writes it)."""
    values = decoder(qtype)(t.data).astype(np.float64).reshape(-1)
    if len(t.shape) != 1 or not np.all(np.isfinite(values) & (values > 0)):
        raise QllamaError(f"{path}: tensor {ROPE_FREQS} must be a vector of positive numbers")
    return values.tolist()


@functools.cache
def decodable(qtype) -> bool:
    """Whether the gguf package dequantizes qtype (it lacks a few, such as Q8_1): one zero block tried."""
    import gguf
    if qtype.name in ("F32", "F16", "BF16", "F64"):
        return True
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    try:
        gguf.quants.dequantize(np.zeros(size, np.uint8), qtype)
    except (NotImplementedError, ValueError, TypeError):
        return False
    return True


def read_gguf(path: Path) -> Checkpoint:
    import gguf
    from ..tokenizer import tokenizer_from_gguf
    from .gguf_fields import gguf_metadata

    reader = open_gguf_reader(path)
    meta = gguf_metadata(reader)
    size = path.stat().st_size
    raw_tensors, rope_freqs = {}, None
    for t in reader.tensors:
        if t.data_offset + int(t.n_bytes) > size:
            raise QllamaError(f"{path}: tensor {t.name} runs past the end of the file "
                              f"(ends at byte {t.data_offset + int(t.n_bytes)}, file has {size}): truncated file")
        try:
            qtype = gguf.GGMLQuantizationType(t.tensor_type)
        except ValueError:
            raise QllamaError(f"{path}: tensor {t.name} has unknown GGML type {int(t.tensor_type)}") from None
        if t.name == ROPE_FREQS:
            rope_freqs = read_rope_freqs(path, t, qtype)
            continue
        raw_tensors[hf_name(path, t.name)] = (t, qtype)
    if "model.embed_tokens.weight" not in raw_tensors:
        raise QllamaError(f"{path}: no token_embd.weight tensor: not a model with weights (a vocab-only GGUF?)")
    tied = "lm_head.weight" not in raw_tensors
    vocab_size = int(raw_tensors["model.embed_tokens.weight"][0].shape[-1])
    args = ModelArgs.from_gguf(meta, str(path), vocab_size=vocab_size, tied=tied, rope_freqs=rope_freqs)
    tensors = {}
    for name, (t, qtype) in raw_tensors.items():
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))  # GGML lists the fastest dimension first
        if len(shape) == 2 and t.data.shape[0] != shape[0]:
            raise QllamaError(f"{path}: tensor {t.name} data does not match its shape {shape}")
        rows = None
        if name.endswith("q_proj.weight"):
            rows = interleaved_to_rotate_half(args.n_heads, args.head_dim)
        elif name.endswith("k_proj.weight"):
            rows = interleaved_to_rotate_half(args.n_kv_heads, args.head_dim)
        tensors[name] = SourceTensor(shape, qtype.name, t.data, decoder(qtype), rows,
                                     release=page_release(reader, t.data_offset, t.data_offset + int(t.n_bytes)))
    check_tensors(path, args, {n: t.shape for n, t in tensors.items()})
    tokenizer = tokenizer_from_gguf(meta, str(path)) if "tokenizer.ggml.model" in meta else None
    template = meta.get("tokenizer.chat_template")
    info = {"source": str(path), "gguf.name": str(meta.get("general.name", ""))}
    return Checkpoint(path, "gguf", args, tensors, tokenizer, template if isinstance(template, str) else None, info,
                      release=page_release(reader, 0, size))
