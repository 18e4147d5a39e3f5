"""The metadata of an exported GGUF: the keys llama.cpp reads to build a llama model and its vocab.

llama.* hyperparameters from ModelArgs, general.*, and the tokenizer in tokenizer.ggml.* keys as
llama.cpp's convert_hf_to_gguf.py writes them: a GGUF source's own keys, verbatim; a SentencePiece
model as "llama" (pieces, scores and types from its proto, whose type numbers GGUF shares); a
byte-level BPE tokenizer.json as "gpt2" (tokens, types, merges, and tokenizer.ggml.pre when the
pre-tokenizer is one qllama knows). References: convert_hf_to_gguf.py (_set_vocab_sentencepiece,
get_vocab_base, _set_vocab_gpt2), src/llama-vocab.cpp (llama_vocab::impl::load).
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import gguf

from ..checkpoint import Checkpoint
from ..config import ModelArgs
from ..errors import QllamaError
from ..gguf_vocab import CONTROL, NORMAL, PRE_TOKENIZERS, UNUSED, USER_DEFINED
from .kquant_mix import KQuantMix

VT = gguf.GGUFValueType
# the names llama.cpp gives the pre-tokenizers qllama knows, by their split regexes; each is a name
# whose llama.cpp settings (ignore_merges, clean_spaces) decode as qllama's tokenizers do
LLAMA_CPP_PRE = {tuple(PRE_TOKENIZERS[name][0]): name for name in ("gpt-2", "smollm", "llama-bpe", "qwen2")}
# Llama 3's tokenizer.json writes its split with (?i:...) contractions, where llama.cpp's own regex
# (PRE_TOKENIZERS) spells them out: the same pre-tokenizer by name
LLAMA_CPP_PRE[("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
               "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",)] = "llama-bpe"
GPT2_REGEX = PRE_TOKENIZERS["gpt-2"][0][0]   # what a tokenizers ByteLevel(use_regex=True) splits on
DIGITS_REGEX = PRE_TOKENIZERS["smollm"][0][0]
OWN_GENERAL = ("general.architecture", "general.file_type", "general.quantization_version", "general.alignment")


@dataclass(frozen=True)
class Field:
    key: str
    value: object
    type: gguf.GGUFValueType
    sub_type: gguf.GGUFValueType | None = None   # element type of an array


def file_type(fmt) -> gguf.LlamaFileType:
    """general.file_type as llama.cpp's quantizer writes it: a k-quant mix's own (MOSTLY_Q4_K_M); a
    plain format's ggml type (MOSTLY_Q4_0), or for a plain k-quant the file type whose matrices
    are all of that type but the head (MOSTLY_Q4_K_S, MOSTLY_Q5_K_S, MOSTLY_Q6_K)."""
    if isinstance(fmt, KQuantMix):
        return gguf.LlamaFileType[fmt.file_type]
    types = gguf.LlamaFileType.__members__
    name = f"MOSTLY_{fmt.ggml_type}"
    return types[name] if name in types else types[f"{name}_S"]


def model_fields(args: ModelArgs, name: str, fmt) -> list[Field]:
    """general.* and llama.*: what llama.cpp's llama architecture reads (llama-model.cpp, load_hparams)."""
    u32, f32 = VT.UINT32, VT.FLOAT32
    fields = [
        Field("general.name", name, VT.STRING),
        Field("general.file_type", int(file_type(fmt)), u32),
        Field("general.quantization_version", gguf.GGML_QUANT_VERSION, u32),
        Field("llama.vocab_size", args.vocab_size, u32),
        Field("llama.context_length", args.max_seq_len, u32),
        Field("llama.embedding_length", args.dim, u32),
        Field("llama.block_count", args.n_layers, u32),
        Field("llama.feed_forward_length", args.hidden_dim, u32),
        Field("llama.rope.dimension_count", args.head_dim, u32),
        Field("llama.rope.freq_base", args.rope_theta, f32),
        Field("llama.attention.head_count", args.n_heads, u32),
        Field("llama.attention.head_count_kv", args.n_kv_heads, u32),
        Field("llama.attention.layer_norm_rms_epsilon", args.norm_eps, f32),
    ]
    if args.head_dim != args.dim // args.n_heads:  # llama.cpp assumes dim / n_heads unless told
        fields += [Field("llama.attention.key_length", args.head_dim, u32),
                   Field("llama.attention.value_length", args.head_dim, u32)]
    if args.rope_scaling == "linear":
        fields += [Field("llama.rope.scaling.type", "linear", VT.STRING),
                   Field("llama.rope.scaling.factor", args.rope_factor, f32)]
    return fields  # llama3 scaling travels as the rope_freqs.weight tensor (gguf_writer.py)


def source_fields(ckpt: Checkpoint) -> list[Field]:
    """A GGUF source's tokenizer.* keys and descriptive general.* keys, with their own types."""
    if ckpt.kind != "gguf":
        return []
    from ..readers.gguf import open_gguf_reader
    from ..readers.gguf_fields import field_value
    reader = open_gguf_reader(ckpt.path)
    fields = []
    for key, field in reader.fields.items():
        keep = key.startswith("tokenizer.") or (key.startswith("general.") and key not in OWN_GENERAL)
        if keep and field.types and len(field.types) <= 2:  # arrays of arrays: none in a vocab
            sub = field.types[-1] if field.types[0] == VT.ARRAY else None
            fields.append(Field(key, field_value(reader, field), field.types[0], sub))
    return fields


def tokenizer_fields(ckpt: Checkpoint) -> list[Field]:
    """tokenizer.ggml.* and tokenizer.chat_template for llama.cpp, from the checkpoint's tokenizer."""
    tok = ckpt.tokenizer
    if tok is None:
        raise QllamaError(f"{ckpt.path}: no tokenizer found, and llama.cpp needs one in the .gguf; "
                          "name it with --tokenizer")
    kind, blob, _ = tok.to_bytes()
    fields = (sentencepiece_fields if kind == "sentencepiece" else bpe_fields)(blob, ckpt)
    if tok.bos_id is not None:
        fields.append(Field("tokenizer.ggml.bos_token_id", tok.bos_id, VT.UINT32))
    if tok.eos_id is not None:
        fields.append(Field("tokenizer.ggml.eos_token_id", tok.eos_id, VT.UINT32))
    fields += [Field("tokenizer.ggml.add_bos_token", tok.add_bos, VT.BOOL),
               Field("tokenizer.ggml.add_eos_token", False, VT.BOOL)]
    if ckpt.chat_template:
        fields.append(Field("tokenizer.chat_template", ckpt.chat_template, VT.STRING))
    return fields


def vocab_fields(model: str, tokens: list[str], types: list[int], vocab_size: int, source) -> list[Field]:
    """tokens and types padded to the embedding's rows, as convert_hf_to_gguf pads ([PAD<i>], unused):
    llama.cpp sizes the embedding by the token count."""
    if len(tokens) > vocab_size:
        raise QllamaError(f"{source}: the tokenizer has {len(tokens)} tokens, the model's embedding only "
                          f"{vocab_size} rows")
    pad = range(len(tokens), vocab_size)
    return [Field("tokenizer.ggml.model", model, VT.STRING),
            Field("tokenizer.ggml.tokens", tokens + [f"[PAD{i}]" for i in pad], VT.ARRAY, VT.STRING),
            Field("tokenizer.ggml.token_type", types + [UNUSED] * len(pad), VT.ARRAY, VT.INT32)]


def sentencepiece_fields(blob: bytes, ckpt: Checkpoint) -> list[Field]:
    from sentencepiece import sentencepiece_model_pb2 as pb
    proto = pb.ModelProto()
    proto.ParseFromString(blob)
    pieces = proto.pieces
    n_pad = ckpt.args.vocab_size - len(pieces)
    fields = vocab_fields("llama", [p.piece for p in pieces], [p.type for p in pieces], ckpt.args.vocab_size, ckpt.path)
    fields += [Field("tokenizer.ggml.scores", [p.score for p in pieces] + [-10000.0] * n_pad, VT.ARRAY, VT.FLOAT32),
               Field("tokenizer.ggml.unknown_token_id", proto.trainer_spec.unk_id, VT.UINT32),
               Field("tokenizer.ggml.add_space_prefix", proto.normalizer_spec.add_dummy_prefix, VT.BOOL),
               Field("tokenizer.ggml.remove_extra_whitespaces", proto.normalizer_spec.remove_extra_whitespaces,
                     VT.BOOL)]
    return fields


def _parts(spec) -> list[dict]:
    """A tokenizer.json pre_tokenizer or decoder as the flat list of its steps."""
    if not isinstance(spec, dict):
        return []
    return [p for s in spec.get("pretokenizers", spec.get("decoders", [])) for p in _parts(s)] \
        if spec.get("type") == "Sequence" else [spec]


def pre_tokenizer_name(pre) -> str | None:
    """llama.cpp's name for a tokenizer.json pre_tokenizer qllama knows, by its split regexes; else None."""
    regexes = []
    for step in _parts(pre):
        kind = step.get("type")
        if kind == "ByteLevel" and not step.get("add_prefix_space", False):
            regexes += [GPT2_REGEX] if step.get("use_regex", True) else []
        elif kind == "Digits" and step.get("individual_digits"):
            regexes.append(DIGITS_REGEX)
        elif kind == "Split" and "Regex" in step.get("pattern", {}) and step.get("behavior") == "Isolated" \
                and not step.get("invert"):
            regexes.append(step["pattern"]["Regex"])
        else:
            return None
    return LLAMA_CPP_PRE.get(tuple(regexes))


def bpe_fields(blob: bytes, ckpt: Checkpoint) -> list[Field]:
    """A byte-level BPE tokenizer.json -> llama.cpp's "gpt2" vocab (convert_hf_to_gguf get_vocab_base)."""
    data = json.loads(blob)
    model = data.get("model") or {}
    if model.get("type") != "BPE" or not any(p.get("type") == "ByteLevel" for p in _parts(data.get("decoder"))):
        raise QllamaError(f"{ckpt.path}: the tokenizer.json is not a byte-level BPE, which llama.cpp's gpt2 vocab "
                          "needs; put the model's SentencePiece tokenizer.model beside it")
    text = {i: t for t, i in model["vocab"].items()}
    added = {t["id"]: t for t in data.get("added_tokens", [])}
    text.update({i: t["content"] for i, t in added.items()})
    n = max(text) + 1
    tokens = [text.get(i, f"[PAD{i}]") for i in range(n)]
    types = [UNUSED if i not in text else NORMAL if i not in added
             else CONTROL if added[i].get("special") else USER_DEFINED for i in range(n)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    fields = vocab_fields("gpt2", tokens, types, ckpt.args.vocab_size, ckpt.path)
    fields.append(Field("tokenizer.ggml.merges", merges, VT.ARRAY, VT.STRING))
    pre = pre_tokenizer_name(data.get("pre_tokenizer"))
    if pre is None:
        warnings.warn(f"{ckpt.path}: the tokenizer's pre-tokenizer is not one qllama knows; llama.cpp will use its "
                      "default, which may split text differently", stacklevel=2)
    else:
        fields.append(Field("tokenizer.ggml.pre", pre, VT.STRING))
    return fields


def gguf_fields(ckpt: Checkpoint, fmt) -> list[Field]:
    """Every metadata key of the exported file, in writing order. A GGUF source's tokenizer keys are
    kept as they are (llama.cpp made them), and so are its descriptive general.* keys."""
    own = source_fields(ckpt)
    path = Path(ckpt.path).resolve()
    name = next((f.value for f in own if f.key == "general.name"), path.name if path.is_dir() else path.stem)
    fields = model_fields(ckpt.args, str(name), fmt)
    own_vocab = [f for f in own if f.key.startswith("tokenizer.")]
    fields += own_vocab if any(f.key == "tokenizer.ggml.model" for f in own_vocab) else tokenizer_fields(ckpt)
    seen = {f.key for f in fields}
    return fields + [f for f in own if f.key not in seen]
