"""A checkpoint on disk -> ModelArgs + tensors under Hugging Face names + tokenizer + chat template.

`open_checkpoint` recognises the source (Hugging Face folder, GGUF, llama2.c .bin, qllama file) and
hands it to its reader. Tensors stay memory-mapped in their stored encoding until `float32()` asks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .config import ModelArgs
from .errors import QllamaError


@dataclass
class SourceTensor:
    """One tensor as stored: `raw` in the source's encoding, `decode` widens it to float32."""
    shape: tuple[int, ...]          # numpy order, (out, in) for matrices
    dtype: str                      # "F32", "F16", "BF16", or a GGML type name such as "Q4_1"
    raw: np.ndarray                 # memory-mapped stored data, one row per output row for matrices
    decode: Callable[[np.ndarray], np.ndarray]
    rows: np.ndarray | None = None  # row order to apply (interleaved RoPE -> rotate-half), or None
    release: Callable[[], None] | None = None  # drops its mapped pages after a streaming pass
    quantized: object | None = None  # qllama files: the QuantizedTensor (planes) behind `raw`

    def float32(self) -> np.ndarray:
        raw = self.raw if self.rows is None else self.raw[self.rows]
        return np.ascontiguousarray(self.decode(raw), dtype=np.float32).reshape(self.shape)

    def done(self) -> None:
        if self.release is not None:
            self.release()


@dataclass
class Checkpoint:
    path: Path
    kind: str                               # "hf", "gguf", "llama2c" or "qllama"
    args: ModelArgs
    tensors: dict[str, SourceTensor]        # Hugging Face names
    tokenizer: object | None                # qllama.tokenizer.Tokenizer
    chat_template: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)  # extra facts for `qllama info`
    release: Callable[[], None] | None = None  # drops every mapped page of the source from this process


def expected_shapes(args: ModelArgs) -> dict[str, tuple[int, ...]]:
    """Every tensor a LLaMA model of these args has, under its Hugging Face name."""
    shapes = {"model.embed_tokens.weight": (args.vocab_size, args.dim), "model.norm.weight": (args.dim,)}
    if not args.tied_embeddings:
        shapes["lm_head.weight"] = (args.vocab_size, args.dim)
    for i in range(args.n_layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (args.dim,),
            p + "self_attn.q_proj.weight": (args.q_dim, args.dim),
            p + "self_attn.k_proj.weight": (args.kv_dim, args.dim),
            p + "self_attn.v_proj.weight": (args.kv_dim, args.dim),
            p + "self_attn.o_proj.weight": (args.dim, args.q_dim),
            p + "post_attention_layernorm.weight": (args.dim,),
            p + "mlp.gate_proj.weight": (args.hidden_dim, args.dim),
            p + "mlp.up_proj.weight": (args.hidden_dim, args.dim),
            p + "mlp.down_proj.weight": (args.dim, args.hidden_dim),
        })
    return shapes


def check_tensors(path: Path, args: ModelArgs, shapes: dict[str, tuple[int, ...]]) -> None:
    """Equal key sets and exact shapes, or one loud line naming the first difference."""
    if args.n_layers > len(shapes):     # a lying layer count: refuse it before building names for every layer
        raise QllamaError(f"{path}: the model claims {args.n_layers} layers but the file holds only {len(shapes)} "
                          f"tensors")
    expected = expected_shapes(args)
    missing = sorted(set(expected) - set(shapes))
    if missing:
        raise QllamaError(f"{path}: missing tensor {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    unexpected = sorted(set(shapes) - set(expected))
    if unexpected:
        raise QllamaError(f"{path}: unexpected tensor {unexpected[0]}: not a plain LLaMA model")
    for name, shape in expected.items():
        if tuple(shapes[name]) != shape:
            raise QllamaError(f"{path}: tensor {name} has shape {tuple(shapes[name])}, expected {shape}")


def interleaved_to_rotate_half(n_heads: int, head_dim: int) -> np.ndarray:
    """Row order that turns q/k rows from the interleaved-pair RoPE layout (GGUF, llama2.c) into
    Hugging Face's rotate-half layout: new row (h, s, i) takes old row h*head_dim + 2*i + s."""
    h, s, i = np.meshgrid(np.arange(n_heads), np.arange(2), np.arange(head_dim // 2), indexing="ij")
    return (h * head_dim + 2 * i + s).reshape(-1)


def rotate_half_to_interleaved(n_heads: int, head_dim: int) -> np.ndarray:
    """The inverse row order, for writing GGUF: rows[interleaved_to_rotate_half(...)] is the identity."""
    return np.argsort(interleaved_to_rotate_half(n_heads, head_dim))


def open_checkpoint(path, tokenizer_path=None) -> Checkpoint:
    """Open any supported checkpoint; the kind is told by what the path holds, not by its name."""
    path = Path(path).expanduser()
    if not path.exists():
        raise QllamaError(f"{path}: no such file or folder")
    if path.is_dir():
        from .readers.hf import read_hf_folder
        ckpt = read_hf_folder(path, tokenizer_path)
    elif not path.is_file():      # a FIFO or a device would block or never end
        raise QllamaError(f"{path}: not a regular file or folder")
    else:
        ckpt = read_file(path, tokenizer_path)
    if tokenizer_path is not None and ckpt.kind in ("gguf", "qllama"):   # the user's tokenizer wins
        from .tokenizer import load_tokenizer_file
        ckpt.tokenizer = load_tokenizer_file(Path(tokenizer_path))
    check_vocab(ckpt, tokenizer_path)
    return ckpt


def check_vocab(ckpt: Checkpoint, tokenizer_path) -> None:
    """The tokenizer must fit the embedding: more tokens than rows would index past it, and fewer
    (outside Hugging Face folders, whose embeddings are often padded) would leave ids that decode
    to nothing, as llama.cpp also refuses."""
    tok = ckpt.tokenizer
    if tok is None:
        return
    source = tokenizer_path or ckpt.path
    rows = ckpt.args.vocab_size
    if tok.vocab_size > rows or (tok.vocab_size < rows and ckpt.kind != "hf"):
        raise QllamaError(f"{source}: the tokenizer has {tok.vocab_size} tokens but {ckpt.path.name}'s embedding has "
                          f"{rows} rows")


def read_file(path: Path, tokenizer_path) -> Checkpoint:
    """A model in one file, told by its first bytes (GGUF) or else its suffix."""
    try:
        with open(path, "rb") as f:
            magic = f.read(8)
    except OSError as e:
        raise QllamaError(f"{path}: cannot read ({e.strerror})") from None
    if magic[:4] == b"GGUF":
        from .readers.gguf import read_gguf
        return read_gguf(path)
    if path.suffix == ".gguf":
        raise QllamaError(f"{path}: not a GGUF file (magic {magic[:4]!r}, expected b'GGUF')")
    if path.suffix == ".safetensors":
        from .readers.qllama_file import read_qllama_file
        return read_qllama_file(path)
    if path.suffix == ".bin":
        from .readers.llama2c import read_llama2c
        return read_llama2c(path, tokenizer_path)
    raise QllamaError(f"{path}: not a model qllama can read (expected a Hugging Face folder, .gguf, "
                      f"qllama .safetensors or llama2.c .bin)")
