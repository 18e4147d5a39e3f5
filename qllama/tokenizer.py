"""Tokenizers: text <-> token ids, with streaming decode.

Two backends, never a hand-written BPE (DESIGN.md): the SentencePiece library for SentencePiece
vocabularies (tokenizer.model, or a GGUF `llama` vocab turned into a ModelProto), and Hugging Face
`tokenizers` for tokenizer.json and GGUF `gpt2` (byte-level BPE) vocabs; see gguf_vocab.py.
Special-token parsing follows llama.cpp's tokenize(parse_special=...): control tokens written in
the text become their ids only when asked; each text run after one gets SentencePiece's dummy
prefix again (llama-vocab.cpp, LLAMA_VOCAB_TYPE_SPM). Streaming follows text-generation-inference's
prefix/read offsets (decode a short window twice, emit the difference).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from .errors import QllamaError

KINDS = ("sentencepiece", "bpe")
# end-of-turn tokens llama.cpp treats as end of generation when present (llama-vocab.cpp, special_eot_id)
END_OF_TURN = ("</s>", "<|endoftext|>", "<|end_of_text|>", "<|im_end|>", "<|eot_id|>", "<|eom_id|>",
               "<|end|>", "<end_of_turn>", "<EOT>", "<｜end▁of▁sentence｜>", "<end_of_utterance>")
ANCHOR_CANDIDATES = "aeiostnrlcdmx"


class _SentencePiece:
    """SentencePiece backend. Control and unknown pieces are the ones parse_special matches."""
    kind = "sentencepiece"

    def __init__(self, blob: bytes, source):
        import sentencepiece as spm
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(blob)
            self.n_vocab = self.sp.get_piece_size()
        except Exception as e:  # the library raises RuntimeError/OSError for bad protos
            raise QllamaError(f"{source}: not a valid SentencePiece model ({str(e).strip() or type(e).__name__})") from None
        if self.n_vocab == 0:
            raise QllamaError(f"{source}: not a valid SentencePiece model (no pieces)")
        self.blob = bytes(blob)
        sp = self.sp
        self.special = {sp.id_to_piece(i): i for i in range(self.n_vocab)
                        if (sp.is_control(i) or sp.is_unknown(i)) and sp.id_to_piece(i)}
        alts = sorted(self.special, key=len, reverse=True)  # longest first, like llama.cpp's partition
        self.special_re = re.compile("|".join(map(re.escape, alts))) if alts else None

    def encode(self, text: str, parse_special: bool) -> list[int]:
        if not parse_special or self.special_re is None:
            return self.sp.encode(text)
        ids, pos = [], 0
        for m in self.special_re.finditer(text):
            if m.start() > pos:
                ids += self.sp.encode(text[pos:m.start()])  # a fresh run: dummy prefix again, as llama.cpp
            ids.append(self.special[m.group()])
            pos = m.end()
        if pos < len(text):
            ids += self.sp.encode(text[pos:])
        return ids

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode(ids)  # control pieces decode to ""

    def token_text(self, i: int) -> str:
        piece = self.sp.id_to_piece(i)
        return piece if self.sp.is_control(i) or self.sp.is_byte(i) else piece.replace("\u2581", " ")

    def lookup(self, text: str) -> int | None:
        i = self.sp.piece_to_id(text)
        return i if self.sp.id_to_piece(i) == text else None  # unknown text maps to unk_id

    def is_plain(self, i: int) -> bool:
        sp = self.sp
        return not (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i) or sp.is_unused(i))


class _HuggingFace:
    """Hugging Face `tokenizers` backend. `plain` never matches special added tokens in text."""
    kind = "bpe"

    def __init__(self, blob: bytes, source):
        from tokenizers import Tokenizer as HFTokenizer
        try:
            self.plain = HFTokenizer.from_str(bytes(blob).decode("utf-8"))
        except Exception as e:  # tokenizers raises plain Exception on bad JSON or schema
            raise QllamaError(f"{source}: not a valid tokenizer.json ({str(e).splitlines()[0] if str(e) else e!r})") from None
        self.plain.encode_special_tokens = True  # special tokens in the text stay text
        self.parsing = None                        # a twin that matches them; built on first use
        self.blob = bytes(blob)
        self.n_vocab = self.plain.get_vocab_size(with_added_tokens=True)
        self.special_ids = {i for i, t in self.plain.get_added_tokens_decoder().items() if t.special}

    def encode(self, text: str, parse_special: bool) -> list[int]:
        tok = self.plain
        if parse_special:
            if self.parsing is None:
                from tokenizers import Tokenizer as HFTokenizer
                twin = HFTokenizer.from_str(self.blob.decode("utf-8"))
                twin.encode_special_tokens = False
                self.parsing = twin
            tok = self.parsing
        return tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.plain.decode(ids, skip_special_tokens=True)

    def token_text(self, i: int) -> str:
        return self.plain.decode([i], skip_special_tokens=False)

    def lookup(self, text: str) -> int | None:
        return self.plain.token_to_id(text)

    def is_plain(self, i: int) -> bool:
        return i not in self.special_ids


class Tokenizer:
    """Text <-> ids for one model: `kind` is "sentencepiece" or "bpe" (Hugging Face tokenizers)."""

    def __init__(self, backend, bos_id, eos_id, add_bos, stop_ids=()):
        self._backend = backend
        self.kind: str = backend.kind
        self.vocab_size: int = backend.n_vocab
        self.bos_id: int | None = self._checked_id(bos_id)
        self.eos_id: int | None = self._checked_id(eos_id)
        self.add_bos: bool = bool(add_bos) and self.bos_id is not None
        stops = {self._checked_id(i) for i in stop_ids} | {self.eos_id}
        stops |= {backend.lookup(name) for name in END_OF_TURN}
        self.stop_ids: frozenset[int] = frozenset(i for i in stops if i is not None)
        self._skip = {i for i in (self.bos_id, self.eos_id) if i is not None}
        self._anchor = self._find_anchor()

    def _checked_id(self, i) -> int | None:
        return int(i) if isinstance(i, int) and not isinstance(i, bool) and 0 <= i < self.vocab_size else None

    def _find_anchor(self) -> int | None:
        """A plain one-letter token, decoded ahead of a stream window so no leading-space rule applies."""
        for c in ANCHOR_CANDIDATES:
            i = self._backend.lookup(c)
            if i is not None and self._backend.is_plain(i) and self._backend.decode([i]) == c:
                return i
        return None

    def encode(self, text: str, add_bos: bool | None = None, parse_special: bool = False) -> list[int]:
        """Text -> ids; BOS first when add_bos (default: the model's add_bos_token)."""
        ids = list(self._backend.encode(text, parse_special))
        if (self.add_bos if add_bos is None else add_bos) and self.bos_id is not None:
            ids.insert(0, self.bos_id)
        return ids

    def decode(self, ids) -> str:
        """Ids -> text, skipping BOS/EOS/control tokens (and ids outside the vocab, e.g. padded rows)."""
        return self._backend.decode([int(i) for i in ids if 0 <= int(i) < self.vocab_size and int(i) not in self._skip])

    def lookup(self, text: str) -> int | None:
        """The id of the one token whose text this is (e.g. "<|im_end|>"), or None."""
        return self._backend.lookup(text)

    def decode_after(self, context, ids) -> str:
        """The text ids add after context: decode(context + ids) less decode(context)."""
        before, whole = self.decode(context), self.decode(list(context) + list(ids))
        return whole[len(before):] if whole.startswith(before) else self.decode(ids)

    def token_text(self, id) -> str:
        """One token as text for display: spaces as spaces, specials and byte pieces by name."""
        i = int(id)
        if not 0 <= i < self.vocab_size:
            raise QllamaError(f"token id {i} is outside the vocabulary (size {self.vocab_size})")
        return self._backend.token_text(i)

    def stream(self, context=()) -> "StreamDecoder":
        """A decoder of the ids that follow `context` (ids already shown as text)."""
        return StreamDecoder(self, context)

    def to_bytes(self) -> tuple[str, bytes, dict]:
        """(kind, blob, settings) to embed in a model file; `Tokenizer.from_bytes` inverts it."""
        settings = {"bos_id": self.bos_id, "eos_id": self.eos_id, "add_bos": self.add_bos,
                    "stop_ids": sorted(self.stop_ids)}
        return self.kind, self._backend.blob, settings

    @classmethod
    def from_bytes(cls, kind, blob, settings) -> "Tokenizer":
        if kind not in KINDS:
            raise QllamaError(f"tokenizer kind {kind!r} is not one of {', '.join(KINDS)}")
        if not isinstance(settings, dict):
            raise QllamaError(f"tokenizer settings must be a dict, not {type(settings).__name__}")
        backend = (_SentencePiece if kind == "sentencepiece" else _HuggingFace)(blob, f"embedded {kind} tokenizer")
        return cls(backend, settings.get("bos_id"), settings.get("eos_id"), settings.get("add_bos", False),
                   settings.get("stop_ids") or ())


class StreamDecoder:
    """Token ids in, text out as soon as it is complete; the pieces add up to decode(all ids).

    Each add() decodes a short window twice (without and with the new ids) and emits the growth,
    holding back while the text ends in U+FFFD (a partial UTF-8 character). Until some text is out,
    the window starts at token 0, so SentencePiece's leading-space rule applies as in decode();
    after that the window starts at the last clean boundary behind an anchor token, which uses up
    the rule as the earlier text did.
    """

    def __init__(self, tokenizer: Tokenizer, context=()):
        self._tok = tokenizer
        self._ids: list[int] = [int(i) for i in context]
        self._prefix = 0         # window start: a character boundary
        self._read = len(self._ids)   # ids up to here are emitted (the context counts as emitted)
        self._anchored = False   # window decoded behind the anchor token
        self._emitted: list[str] = [tokenizer.decode(self._ids)] if self._ids else []

    def _text(self, ids: list[int]) -> str:
        return self._tok.decode([self._tok._anchor] + ids if self._anchored else ids)

    def _step(self, final: bool) -> str:
        prev = self._text(self._ids[self._prefix:self._read])
        new = self._text(self._ids[self._prefix:])
        if not new.startswith(prev):  # a decoder that rewrites earlier text: fall back to a full decode
            prev, new = "".join(self._emitted), self._tok.decode(self._ids)
        if not new.startswith(prev) or len(new) <= len(prev) or (new.endswith("\ufffd") and not final):
            return ""
        out = new[len(prev):]
        if self._emitted and self._tok._anchor is not None:
            self._anchored, self._prefix = True, self._read
        self._read = len(self._ids)
        self._emitted.append(out)
        return out

    def add(self, token_id) -> str:
        """Feed one id; returns the newly completed text (may be "")."""
        self._ids.append(int(token_id))
        return self._step(final=False)

    def flush(self) -> str:
        """The text still held back (a trailing partial character decodes as U+FFFD, as decode() does)."""
        return self._step(final=True)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise QllamaError(f"{path}: cannot read JSON ({e})") from None
    if not isinstance(data, dict):
        raise QllamaError(f"{path}: expected a JSON object")
    return data


def _token_name(value) -> str | None:
    """A bos/eos entry of tokenizer_config.json: a string or an AddedToken dict with "content"."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def load_tokenizer_file(path: Path, config_dir: Path | None = None) -> Tokenizer:
    """tokenizer.model (SentencePiece) or tokenizer.json (Hugging Face), with the HF configs beside it."""
    path = Path(path)
    config_dir = Path(config_dir) if config_dir is not None else path.parent
    try:
        blob = path.read_bytes()
    except OSError as e:
        raise QllamaError(f"{path}: cannot read tokenizer file ({e.strerror or e})") from None
    is_json = path.suffix == ".json"
    backend = (_HuggingFace if is_json else _SentencePiece)(blob, path)

    config = _read_json(config_dir / "tokenizer_config.json")
    special_map = _read_json(config_dir / "special_tokens_map.json")
    if is_json:  # the post-processor's choice is the HF default when the config says nothing
        plain = backend.plain.encode("a", add_special_tokens=False).ids
        with_specials = backend.plain.encode("a", add_special_tokens=True).ids
        # the token the post-processor puts in front, if any (e.g. Llama's <s>)
        added_first = with_specials[0] if with_specials[1:1 + len(plain)] == plain != with_specials else None
        bos, eos = added_first, None
    else:
        bos = backend.sp.bos_id() if backend.sp.bos_id() >= 0 else None
        eos = backend.sp.eos_id() if backend.sp.eos_id() >= 0 else None
        added_first = None
    found = {"bos": bos, "eos": eos}
    for source in (special_map, config):  # tokenizer_config.json wins
        for name in found:
            text = _token_name(source.get(f"{name}_token"))
            if text and backend.lookup(text) is not None:
                found[name] = backend.lookup(text)
    bos, eos = found["bos"], found["eos"]
    if "add_bos_token" in config:
        add_bos = bool(config["add_bos_token"])
    else:
        add_bos = (added_first is not None and added_first == bos) if is_json else True
    generation = _read_json(config_dir / "generation_config.json").get("eos_token_id")
    stops = generation if isinstance(generation, list) else [generation]
    return Tokenizer(backend, bos, eos, add_bos, [i for i in stops if isinstance(i, int)])


def tokenizer_from_gguf(meta: dict, path: str) -> Tokenizer:
    """The tokenizer a GGUF file describes in its `tokenizer.ggml.*` metadata (see gguf_vocab.py)."""
    from .gguf_vocab import bpe_from_gguf, spm_proto_from_gguf

    model = meta.get("tokenizer.ggml.model")
    if model == "llama":
        backend = _SentencePiece(spm_proto_from_gguf(meta, path), path)
        bos, eos, add_bos = 1, 2, True  # llama.cpp's defaults for an SPM vocab
    elif model == "gpt2":
        hf, add_bos = bpe_from_gguf(meta, path)
        backend = _HuggingFace(hf.to_str().encode("utf-8"), path)
        bos, eos = 11, 11  # llama.cpp's (odd) defaults for a BPE vocab without ids
    else:
        raise QllamaError(f"{path}: tokenizer.ggml.model = {model!r} is not supported (expected 'llama' or 'gpt2')")
    bos = meta.get("tokenizer.ggml.bos_token_id", bos)
    eos = meta.get("tokenizer.ggml.eos_token_id", eos)
    add_bos = meta.get("tokenizer.ggml.add_bos_token", add_bos)
    stops = [meta.get(f"tokenizer.ggml.{k}_token_id") for k in ("eot", "eom")]
    return Tokenizer(backend, bos, eos, add_bos, [i for i in stops if isinstance(i, int)])
