"""Streaming GGUF output for llama.cpp, written by the gguf package's GGUFWriter.

GGUF puts every tensor's name, type and size in its header, and they are known before quantizing,
so tensors go to the file one at a time as convert makes them (peak memory: one tensor). From
qllama's layout to llama.cpp's:
- names: Hugging Face -> llama.cpp, the GGUF reader's table inverted;
- q/k rows: rotate-half -> GGUF's interleaved-pair RoPE layout, the reader's permutation inverted;
- planes -> ggml blocks: at group 32, q8/q4/q4a are Q8_0/Q4_0/Q4_1 byte for byte (formats.py), and
  q2_k .. q6_k are Q2_K .. Q6_K (kquants.py): each format's planes join back field by field;
- a matrix whose rows are not whole blocks of 32 (stories260K's 172-wide down_proj) has no ggml
  quant type: its quantized values are stored as F32, exactly (llama.cpp's own quantize uses F16);
- llama3 RoPE scaling: the rope_freqs.weight tensor of per-pair divisors, as convert_hf_to_gguf.py.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import gguf
import numpy as np

from ..checkpoint import rotate_half_to_interleaved
from ..config import ModelArgs
from ..readers.gguf import BLOCK_NAMES, GLOBAL_NAMES
from ..rope import inverse_frequencies
from .formats import QuantFormat
from .gguf_metadata import Field
from .planes import join_ggml_blocks
from .tensor import QuantizedTensor

QT = gguf.GGMLQuantizationType
GGML_GLOBAL = {hf: name for name, hf in GLOBAL_NAMES.items()}
GGML_BLOCK = {hf: name for name, hf in BLOCK_NAMES.items()}


def ggml_name(name: str) -> str:
    """model.layers.3.self_attn.q_proj.weight -> blk.3.attn_q.weight; model.norm.weight -> output_norm.weight."""
    if name in GGML_GLOBAL:
        return GGML_GLOBAL[name]
    _, _, layer, rest = name.split(".", 3)
    return f"blk.{layer}.{GGML_BLOCK[rest.removesuffix('.weight')]}.weight"


def ggml_type(fmt: QuantFormat | None, shape: tuple[int, ...]) -> gguf.GGMLQuantizationType:
    """F32 for norms and for rows that are not whole ggml blocks; else the format's own ggml type."""
    if fmt is None or shape[-1] % fmt.group_size:
        return QT.F32
    return QT[fmt.ggml_type]


def ggml_blocks(q: QuantizedTensor) -> np.ndarray:
    """Planes -> uint8 (out, n_blocks * block bytes): ggml's blocks, row after row."""
    fmt, out = q.fmt, q.shape[0]
    blocks = join_ggml_blocks(q.planes, q.n_groups, fmt.planes, fmt.ggml_fields)
    return blocks.reshape(out, q.n_groups * fmt.bytes_per_group)


def rope_divisors(args: ModelArgs) -> np.ndarray | None:
    """llama3 scaling as llama.cpp applies it: each pair's frequency divided by a factor (rope_freqs)."""
    if args.rope_scaling != "llama3":
        return None
    plain = inverse_frequencies(replace(args, rope_scaling="none"))
    return (plain / inverse_frequencies(args)).astype(np.float32)


class GGUFOutput:
    """Write one GGUF: header, metadata and tensor table at once, then `write` each tensor in order."""

    def __init__(self, path: Path, fields: list[Field], args: ModelArgs,
                 tensors: dict[str, tuple[tuple[int, ...], QuantFormat | None]]):
        """tensors: Hugging Face name -> (shape, qllama format or None for float32), in write order."""
        self.args, self.types, self.order = args, {}, iter(tensors)
        self.writer = w = gguf.GGUFWriter(None, "llama")
        for f in fields:
            w.add_key_value(f.key, f.value, f.type, f.sub_type)
        for name, (shape, fmt) in tensors.items():
            qtype = self.types[name] = ggml_type(fmt, shape)
            block, size = gguf.GGML_QUANT_SIZES[qtype]
            nbytes = int(np.prod(shape)) // block * size
            if qtype == QT.F32:
                w.add_tensor_info(ggml_name(name), shape, np.dtype(np.float32), nbytes, raw_dtype=qtype)
            else:  # a quant type is given as its rows of block bytes; GGUFWriter turns that into weights
                w.add_tensor_info(ggml_name(name), (*shape[:-1], shape[-1] // block * size), np.dtype(np.uint8),
                                  nbytes, raw_dtype=qtype)
        # quantized matrices stored as F32 because their rows are not whole ggml blocks
        self.dequantized = [n for n, (_, fmt) in tensors.items() if fmt is not None and self.types[n] == QT.F32]
        self.rope = rope_divisors(args)
        if self.rope is not None:
            w.add_tensor_info("rope_freqs.weight", self.rope.shape, self.rope.dtype, self.rope.nbytes, raw_dtype=QT.F32)
        w.open_output_file(Path(path))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()

    def write(self, name: str, value: np.ndarray | QuantizedTensor) -> None:
        """A float32 array or quantized planes, in qllama's layout, for the next tensor of the table."""
        expected = next(self.order, None)
        if name != expected:
            raise RuntimeError(f"GGUF writer expected tensor {expected}, got {name}")
        if isinstance(value, QuantizedTensor):
            value = value.dequantize() if self.types[name] == QT.F32 else ggml_blocks(value)
        self.writer.write_tensor_data(np.ascontiguousarray(self.interleave(name, value)))

    def interleave(self, name: str, rows: np.ndarray) -> np.ndarray:
        """q/k rows back to GGUF's interleaved-pair RoPE layout; whole rows move, so blocks stay intact."""
        heads = {"q_proj": self.args.n_heads, "k_proj": self.args.n_kv_heads}.get(name.split(".")[-2])
        return rows if heads is None else rows[rotate_half_to_interleaved(heads, self.args.head_dim)]

    def close(self) -> None:
        if next(self.order, None) is not None:
            raise RuntimeError("not every tensor was written")
        if self.rope is not None:
            self.writer.write_tensor_data(self.rope)
        self.writer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.writer.close()  # on an error too: the file handle goes; atomic_output removes the file
