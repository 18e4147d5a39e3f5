"""A GGUF vocabulary (llama.cpp's `tokenizer.ggml.*` metadata) -> a real tokenizer library's model.

`tokenizer.ggml.model == "llama"`: llama.cpp's SPM vocab (BPE with per-piece scores) becomes a
SentencePiece BPE ModelProto: pieces, scores and piece types copied one to one (GGUF token types
use SentencePiece's numbering), byte fallback, dummy prefix, spaces escaped to U+2581.
`== "gpt2"`: byte-level BPE becomes a Hugging Face `tokenizers` BPE with the file's merges, the
pre-tokenizer regexes llama.cpp uses for `tokenizer.ggml.pre`, and ByteLevel decoding.
References: llama.cpp src/llama-vocab.cpp (defaults, pre-tokenizer regexes, token types);
transformers integrations/gguf (the same conversion, for comparison).
"""
from __future__ import annotations

import warnings

from .errors import QllamaError

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# llama.cpp's pre-tokenizer regexes (llama-vocab.cpp, llm_tokenizer_bpe), applied in order.
GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
# Llama 3's and Qwen2's tokenizer.json say (?i:'s|'t|...); llama.cpp adapted it to ASCII case pairs, so
# "'ſo" (U+017F folds to s) stays one piece there, as it does here
CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
LLAMA3_SPLIT = (CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
               r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# pre name -> (regexes, ignore_merges, llama.cpp's default add_bos)
_GPT2 = ([GPT2_SPLIT], False, False)
_DIGITS_GPT2 = ([r"\p{N}", GPT2_SPLIT], False, False)
_LLAMA3 = ([LLAMA3_SPLIT], True, True)
_QWEN2 = ([QWEN2_SPLIT], False, False)
PRE_TOKENIZERS = {
    "default": _GPT2, "gpt2": _GPT2, "gpt-2": _GPT2, "phi-2": _GPT2, "mpt": _GPT2, "olmo": _GPT2,
    "smollm": _DIGITS_GPT2, "starcoder": _DIGITS_GPT2, "refact": _DIGITS_GPT2, "command-r": _DIGITS_GPT2,
    "codeshell": _DIGITS_GPT2, "exaone": _DIGITS_GPT2, "minerva-7b": _DIGITS_GPT2,
    "llama3": _LLAMA3, "llama-v3": _LLAMA3, "llama-bpe": _LLAMA3, "falcon3": _LLAMA3,
    "falcon-h1": _LLAMA3, "pixtral": _LLAMA3, "dbrx": ([LLAMA3_SPLIT], False, False),
    "smaug-bpe": ([LLAMA3_SPLIT], False, False),
    "qwen2": _QWEN2, "deepseek-r1-qwen": _QWEN2, "stablelm2": _QWEN2, "megrez": _QWEN2,
}


def _tokens(meta: dict, path: str) -> list[str]:
    tokens = meta.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list) or not tokens:
        raise QllamaError(f"{path}: tokenizer.ggml.tokens is missing or empty")
    if not all(isinstance(t, str) for t in tokens):
        raise QllamaError(f"{path}: tokenizer.ggml.tokens must be an array of strings")
    return tokens


def _array(meta: dict, key: str, n: int, path: str, default) -> list:
    values = meta.get(key)
    if values is None:
        return [default] * n
    if not isinstance(values, list) or len(values) != n:
        raise QllamaError(f"{path}: {key} has {len(values) if isinstance(values, list) else 'no'} entries, "
                          f"tokenizer.ggml.tokens has {n}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):  # all numeric arrays
        raise QllamaError(f"{path}: {key} must be an array of numbers")
    return values


def spm_proto_from_gguf(meta: dict, path: str) -> bytes:
    """A `llama` GGUF vocab -> serialized SentencePiece ModelProto (BPE with scores, as llama.cpp runs it)."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    tokens = _tokens(meta, path)
    n = len(tokens)
    scores = _array(meta, "tokenizer.ggml.scores", n, path, 0.0)
    if "tokenizer.ggml.token_type" in meta:
        types = _array(meta, "tokenizer.ggml.token_type", n, path, NORMAL)
    else:  # old files: infer the types SentencePiece needs
        unk = meta.get("tokenizer.ggml.unknown_token_id", 0)
        types = [UNKNOWN if i == unk else BYTE if len(t) == 6 and t.startswith("<0x") and t.endswith(">")
                 else NORMAL for i, t in enumerate(tokens)]

    proto = pb.ModelProto()
    for i, (text, score, kind) in enumerate(zip(tokens, scores, types)):
        piece = proto.pieces.add()
        piece.piece = text or f"[EMPTY_{i}]"  # SentencePiece rejects empty pieces; llama.cpp renames them too
        piece.score = float(score)
        piece.type = kind if kind in (NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE) else NORMAL
    unk_ids = [i for i, t in enumerate(types) if t == UNKNOWN]
    if len(unk_ids) != 1:
        raise QllamaError(f"{path}: tokenizer.ggml.token_type marks {len(unk_ids)} unknown tokens; "
                          "a llama vocab needs exactly one")
    byte_pieces = {tokens[i] for i, t in enumerate(types) if t == BYTE}

    spec = proto.trainer_spec
    spec.model_type = pb.TrainerSpec.BPE
    spec.vocab_size = n
    spec.byte_fallback = all(f"<0x{b:02X}>" in byte_pieces for b in range(256))
    spec.unk_id, spec.unk_piece = unk_ids[0], tokens[unk_ids[0]]
    for name in ("bos", "eos"):
        tid = meta.get(f"tokenizer.ggml.{name}_token_id")
        ok = isinstance(tid, int) and 0 <= tid < n
        setattr(spec, f"{name}_id", tid if ok else -1)
        if ok:
            setattr(spec, f"{name}_piece", tokens[tid])
    spec.pad_id = -1

    norm = proto.normalizer_spec
    norm.name = "identity"
    norm.add_dummy_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
    norm.remove_extra_whitespaces = bool(meta.get("tokenizer.ggml.remove_extra_whitespaces", False))
    norm.escape_whitespaces = True  # " " -> U+2581, as the original llama tokenizer.model does
    return proto.SerializeToString()


def bpe_from_gguf(meta: dict, path: str):
    """A `gpt2` GGUF vocab -> (tokenizers.Tokenizer, llama.cpp's default add_bos for its pre-tokenizer)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    tokens = _tokens(meta, path)
    types = _array(meta, "tokenizer.ggml.token_type", len(tokens), path, NORMAL)
    merges = meta.get("tokenizer.ggml.merges")
    if not isinstance(merges, list):
        raise QllamaError(f"{path}: tokenizer.ggml.merges is missing (a gpt2 vocab needs its merges)")
    pairs = []
    for m in merges:
        cut = m.find(" ", 1)  # as llama.cpp splits: the first space after the first character
        if cut < 0:
            raise QllamaError(f"{path}: tokenizer.ggml.merges entry {m!r} is not 'left right'")
        pairs.append((m[:cut], m[cut + 1:]))

    pre = meta.get("tokenizer.ggml.pre")
    if pre not in PRE_TOKENIZERS:
        warnings.warn(f"{path}: tokenizer.ggml.pre = {pre!r} is not known to qllama; using GPT-2's pre-tokenizer",
                      stacklevel=3)
    splits, ignore_merges, add_bos = PRE_TOKENIZERS.get(pre, _GPT2)

    vocab = {text: i for i, text in enumerate(tokens)}
    try:
        tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs, ignore_merges=ignore_merges))
    except Exception as e:  # tokenizers raises plain Exception for a merge naming an unknown token
        raise QllamaError(f"{path}: tokenizer.ggml.merges do not fit tokenizer.ggml.tokens ({e})") from None
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in splits]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    # control/unknown tokens are special (matched only when parsing specials); user-defined always match
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, k in zip(tokens, types) if k in (CONTROL, UNKNOWN)])
    tok.add_tokens([AddedToken(t, special=False, normalized=False)
                    for t, k in zip(tokens, types) if k == USER_DEFINED])
    return tok, add_bos
