"""Tokenizers against oracles we did not write.

- llama.cpp's tokenizer test cases for the LLaMA SentencePiece vocab (ggml-vocab-llama-spm.gguf.inp/.out),
  on tokenizer.model and on the vocab-only GGUF, and for Llama 3's byte-level BPE vocab
  (ggml-vocab-llama-bpe.gguf, tokenizer.ggml.pre = llama-bpe);
- Hugging Face transformers' encoding of SmolLM2's GGUF vocab (tests/fixtures/smollm2_tokenizer_cases.json,
  written by tests/fixtures/make_tokenizer_cases.py);
- the SentencePiece library itself (round trips), and the gguf package's own field decoding.
"""
import json
import random
from pathlib import Path

import gguf
import pytest
import sentencepiece as spm

from qllama.errors import QllamaError
from qllama.gguf_vocab import bpe_from_gguf
from qllama.readers.gguf import open_gguf_reader
from qllama.readers.gguf_fields import gguf_metadata
from qllama.tokenizer import Tokenizer, load_tokenizer_file, tokenizer_from_gguf
from paths import MODELS

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SEP = "\n__ggml_vocab_test__\n"  # llama.cpp tests/test-tokenizer-0.cpp splits the .inp file on this

EXTRA_TEXTS = [
    "Hello world", "héllo wörld", "🦙 llamas 🦙🦙", "日本語", "€100 – ½ price", "a\u200db", "x" * 40,
    "Once upon a time, there was a little girl named Lily.", " leading space", "trailing space ",
    "\n\nnewlines\n", "🏳️‍🌈 flag", "mixed 12345 digits 678",
]


def model_file(rel: str) -> Path:
    return MODELS / rel


def gguf_tokenizer(path: Path) -> Tokenizer:
    return tokenizer_from_gguf(gguf_metadata(open_gguf_reader(path)), str(path))


def llama_cpp_cases(vocab: str) -> list[tuple[str, list[int]]]:
    """llama.cpp's tests/test-tokenizer-0 cases for models/<vocab>: (text, ids without BOS)."""
    raw = model_file(vocab + ".inp").read_text(encoding="utf-8")
    assert raw.endswith(SEP)  # every input, the last included, is followed by the separator line
    inputs = raw[:-len(SEP)].split(SEP)
    lines = model_file(vocab + ".out").read_text(encoding="utf-8").split("\n")
    assert lines[-1] == ""
    outputs = [[int(t) for t in line.split()] for line in lines[:-1]]
    assert len(inputs) == len(outputs) == 46
    return list(zip(inputs, outputs))


def llama_cases() -> list[tuple[str, list[int]]]:
    return llama_cpp_cases(CPP_VOCABS["llama_gguf"])


CPP_VOCABS = {"llama_model": "llama-tokenizer/ggml-vocab-llama-spm.gguf",
              "llama_gguf": "llama-tokenizer/ggml-vocab-llama-spm.gguf",
              "llama3": "llama3-vocab/ggml-vocab-llama-bpe.gguf"}


@pytest.fixture(scope="module")
def llama_model():
    return load_tokenizer_file(model_file("llama-tokenizer/tokenizer.model"))


@pytest.fixture(scope="module")
def llama_gguf():
    return gguf_tokenizer(model_file("llama-tokenizer/ggml-vocab-llama-spm.gguf"))


@pytest.fixture(scope="module")
def llama3_meta():
    return gguf_metadata(open_gguf_reader(model_file(CPP_VOCABS["llama3"])))


@pytest.fixture(scope="module")
def llama3(llama3_meta):
    return tokenizer_from_gguf(llama3_meta, CPP_VOCABS["llama3"])


@pytest.fixture(scope="module")
def stories_model():
    return load_tokenizer_file(model_file("stories260K/tok512.model"))


@pytest.fixture(scope="module")
def stories_gguf():
    return gguf_tokenizer(model_file("stories260K/stories260K.gguf"))


@pytest.fixture(scope="module")
def smollm2_meta(smollm2_gguf):
    return gguf_metadata(gguf.GGUFReader(smollm2_gguf))


@pytest.fixture(scope="module")
def smollm2(smollm2_meta, smollm2_gguf):
    return tokenizer_from_gguf(smollm2_meta, str(smollm2_gguf))


@pytest.fixture(scope="module")
def smollm2_cases():
    path = FIXTURES / "smollm2_tokenizer_cases.json"
    if not path.is_file():
        pytest.fail(f"{path} is missing: run tests/fixtures/make_tokenizer_cases.py")
    return json.loads(path.read_text(encoding="utf-8"))


ALL_TOKENIZERS = ["llama_model", "llama_gguf", "llama3", "stories_model", "stories_gguf", "smollm2"]


@pytest.mark.parametrize("name", ["llama_model", "llama_gguf", "llama3"])
def test_llama_cpp_cases(name, request):
    tok = request.getfixturevalue(name)
    wrong = [(text, tok.encode(text, add_bos=False), ids) for text, ids in llama_cpp_cases(CPP_VOCABS[name])
             if tok.encode(text, add_bos=False) != ids]
    assert not wrong, f"{len(wrong)} of 46 llama.cpp cases differ, first: {wrong[0]}"


@pytest.mark.parametrize("name", ["llama_model", "llama_gguf"])
def test_llama_round_trip_matches_sentencepiece(name, request):
    tok = request.getfixturevalue(name)
    sp = spm.SentencePieceProcessor(model_file=str(model_file("llama-tokenizer/tokenizer.model")))
    round_trips = 0
    for text, _ in llama_cases():
        assert tok.decode(tok.encode(text)) == sp.decode(sp.encode(text)), text
        if sp.decode(sp.encode(text)) == text:
            round_trips += 1
            assert tok.decode(tok.encode(text)) == text
    assert round_trips == 46


def test_llama_hello_world_and_settings(llama_model, llama_gguf):
    assert llama_model.encode("Hello world") == [1, 15043, 3186]  # add_bos_token defaults to true
    assert llama_model.encode("Hello world", add_bos=False) == [15043, 3186]
    for tok in (llama_model, llama_gguf):
        assert (tok.kind, tok.vocab_size, tok.bos_id, tok.eos_id, tok.add_bos) == ("sentencepiece", 32000, 1, 2, True)
        assert tok.stop_ids == {2}
        assert tok.token_text(15043) == " Hello" and tok.token_text(13) == "<0x0A>" and tok.token_text(1) == "<s>"
        assert tok.decode([1, 15043, 3186, 2]) == "Hello world"
    with pytest.raises(QllamaError, match="32000"):
        llama_model.token_text(32000)


def test_llama_parse_special(llama_model, llama_gguf):
    for tok in (llama_model, llama_gguf):
        # as llama.cpp: "<s>" parsed to BOS, and the text after a special token gets the space prefix again
        assert tok.encode("<s>Hello</s> world", add_bos=False, parse_special=True) == [1, 15043, 2, 29871, 3186]
        assert 1 not in tok.encode("<s>Hello", add_bos=False)  # plain text by default


def test_llama3_settings_and_round_trip(llama3):
    # llama.cpp's defaults for pre = llama-bpe: BOS added; ids from the file's metadata
    assert (llama3.kind, llama3.vocab_size, llama3.bos_id, llama3.eos_id, llama3.add_bos) == \
        ("bpe", 128256, 128000, 128001, True)
    for text, ids in llama_cpp_cases(CPP_VOCABS["llama3"]):
        assert llama3.encode(text) == [128000] + ids
        assert llama3.decode(llama3.encode(text)) == text  # byte-level BPE: every text comes back


def test_llama3_end_of_turn_tokens_stop(llama3, llama3_meta):
    # Llama 3.0's vocab: <|eot_id|> ends a turn besides EOS <|end_of_text|>; 128008 is still reserved
    assert llama3.stop_ids == {128001, 128009} and llama3.lookup("<|eot_id|>") == 128009
    assert llama3.lookup("<|eom_id|>") is None
    # Llama 3.1 named three reserved tokens, among them <|eom_id|> (end of message, after a tool call)
    tokens = list(llama3_meta["tokenizer.ggml.tokens"])
    tokens[128004], tokens[128008], tokens[128010] = "<|finetune_right_pad_id|>", "<|eom_id|>", "<|python_tag|>"
    llama31 = tokenizer_from_gguf(dict(llama3_meta, **{"tokenizer.ggml.tokens": tokens}), "llama31.gguf")
    assert llama31.stop_ids == {128001, 128008, 128009}


def test_llama3_parse_special(llama3):
    text = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
    ids = llama3.encode(text, add_bos=False, parse_special=True)
    assert ids == [128000, 128006] + llama3.encode("user", add_bos=False) + [128007] + \
        llama3.encode("\n\nHi", add_bos=False) + [128009]
    assert llama3.decode(ids) == "user\n\nHi"          # control tokens decode to nothing
    assert 128009 not in llama3.encode(text)          # plain text unless asked


def test_llama_bpe_splits_contractions_as_llama_cpp():
    # llama.cpp matches '[sS] where Llama 3's tokenizer.json says (?i:'s): U+017F (long s, folds to s)
    # starts no contraction there, so "'ſo" is one piece (llama-vocab.cpp, LLAMA_VOCAB_PRE_TYPE_LLAMA3)
    tokens = [chr(c) for c in range(33, 127)]
    hf, add_bos = bpe_from_gguf({"tokenizer.ggml.tokens": tokens, "tokenizer.ggml.merges": [],
                                 "tokenizer.ggml.pre": "llama-bpe"}, "x.gguf")
    pieces = [p for p, _ in hf.pre_tokenizer.pre_tokenize_str("it's x'ſo I'LL")]
    assert pieces == ["it", "'s", "Ġx", "'Å¿o", "ĠI", "'LL"] and add_bos


def test_smollm2_matches_transformers(smollm2, smollm2_cases):
    for case in smollm2_cases["cases"]:
        text = case["text"]
        assert smollm2.encode(text, add_bos=False, parse_special=case["parse_special"]) == case["ids"], text
        assert smollm2.encode(text, parse_special=case["parse_special"]) == case["ids"]  # add_bos is false
        if not case["parse_special"]:
            assert smollm2.decode(case["ids"]) == text


def test_smollm2_settings(smollm2, smollm2_cases):
    assert (smollm2.kind, smollm2.vocab_size, smollm2.add_bos) == ("bpe", 49152, False)
    assert (smollm2.bos_id, smollm2.eos_id) == (1, 2)
    assert smollm2_cases["im_end_id"] in smollm2.stop_ids and smollm2.eos_id in smollm2.stop_ids
    assert smollm2.token_text(2) == "<|im_end|>" and smollm2.token_text(905) == " world"
    # control tokens are skipped by decode
    assert smollm2.decode(smollm2.encode("<|im_start|>user\nhi<|im_end|>", parse_special=True)) == "user\nhi"


def test_smollm2_unknown_pre_warns(smollm2_meta, smollm2):
    meta = dict(smollm2_meta, **{"tokenizer.ggml.pre": "no-such-pre"})
    with pytest.warns(UserWarning, match="no-such-pre"):
        tok = tokenizer_from_gguf(meta, "x.gguf")
    assert tok.encode("Hello world, it's 2024") == smollm2.encode("Hello world, it's") + tok.encode(" 2024")


def test_stories260k_model_and_gguf_agree(stories_model, stories_gguf):
    # single spaces only: tok512.model sets remove_extra_whitespaces, which llama.cpp (and so the GGUF) ignores
    texts = ["Once upon a time, there was a little girl named Lily.", "She loved to play outside in the park.",
             "Tom said \"hello!\" to his mom.", "zebra 123 ü ☃"]
    for text in texts:
        assert stories_model.encode(text) == stories_gguf.encode(text), text
        assert stories_model.encode(text)[0] == 1
    assert stories_model.encode("Once upon a time")[:3] == [1, 403, 407]  # llama2.c doc/stories260K.md
    assert stories_model.to_bytes()[2] == stories_gguf.to_bytes()[2]


def stream_texts(tok, ids):
    decoder = tok.stream()
    pieces = [decoder.add(i) for i in ids]
    return pieces, decoder.flush()


@pytest.mark.parametrize("name", ALL_TOKENIZERS)
def test_stream_matches_decode(name, request):
    tok = request.getfixturevalue(name)
    texts = [t for t, _ in llama_cases()] + EXTRA_TEXTS
    sequences = [tok.encode(t) for t in texts] + [tok.encode(t, add_bos=False) for t in texts]
    sequences.append(tok.encode("<s>Hi</s> <|im_start|>user\nhi 🦙<|im_end|>", parse_special=True))
    rng = random.Random(0)  # also arbitrary ids: broken UTF-8, control tokens anywhere, lone space pieces
    sequences += [[rng.randrange(tok.vocab_size) for _ in range(40)] for _ in range(20)]
    for ids in sequences:
        pieces, tail = stream_texts(tok, ids)
        full = tok.decode(ids)
        assert "".join(pieces) + tail == full, (ids, pieces, tail)
        if "\ufffd" not in full:
            assert not any("\ufffd" in p for p in pieces), (ids, pieces)


def test_stream_holds_back_partial_characters(llama_model, smollm2):
    ids = llama_model.encode("🦙", add_bos=False)  # byte fallback: ▁ then 4 byte pieces
    assert len(ids) == 5
    assert stream_texts(llama_model, ids) == (["", "", "", "", "🦙"], "")  # leading ▁ dropped, as decode() does
    assert stream_texts(llama_model, [15043] + ids) == (["Hello", " ", "", "", "", "🦙"], "")
    ids = smollm2.encode("a🦙")
    pieces, tail = stream_texts(smollm2, ids)
    assert "".join(pieces) == "a🦙" and all(p in ("", "a", "🦙") for p in pieces)
    assert stream_texts(llama_model, [15043, 243, 162])[1] == llama_model.decode([243, 162]) == "\ufffd\ufffd"


@pytest.mark.parametrize("name", ALL_TOKENIZERS)
def test_to_bytes_round_trip(name, request):
    tok = request.getfixturevalue(name)
    kind, blob, settings = tok.to_bytes()
    assert kind == tok.kind and isinstance(blob, bytes)
    settings = json.loads(json.dumps(settings))  # settings must be JSON-able
    again = Tokenizer.from_bytes(kind, blob, settings)
    assert (again.kind, again.vocab_size, again.bos_id, again.eos_id, again.add_bos, again.stop_ids) == \
        (tok.kind, tok.vocab_size, tok.bos_id, tok.eos_id, tok.add_bos, tok.stop_ids)
    for text in [t for t, _ in llama_cases()] + EXTRA_TEXTS + ["<s>x</s><|im_start|>y<|im_end|>"]:
        for parse_special in (False, True):
            assert again.encode(text, parse_special=parse_special) == tok.encode(text, parse_special=parse_special)


def test_tokenizer_json_with_configs(smollm2, tmp_path):
    kind, blob, _ = smollm2.to_bytes()
    (tmp_path / "tokenizer.json").write_bytes(blob)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>"}, "add_bos_token": False}))
    tok = load_tokenizer_file(tmp_path / "tokenizer.json")
    assert (tok.kind, tok.bos_id, tok.eos_id, tok.add_bos) == ("bpe", 1, 2, False)
    assert 2 in tok.stop_ids and 0 in tok.stop_ids  # <|endoftext|> is an end-of-turn name
    assert tok.encode("Hello world") == smollm2.encode("Hello world")


def test_tokenizer_json_add_bos_defaults_to_post_processor(smollm2, tmp_path):
    from tokenizers import Tokenizer as HFTokenizer, processors
    hf = HFTokenizer.from_str(smollm2.to_bytes()[1].decode("utf-8"))
    hf.post_processor = processors.TemplateProcessing(single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", 0)])
    (tmp_path / "tokenizer.json").write_text(hf.to_str(), encoding="utf-8")
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<|endoftext|>"}))
    tok = load_tokenizer_file(tmp_path / "tokenizer.json")
    assert (tok.bos_id, tok.add_bos) == (0, True)
    assert tok.encode("Hello world") == [0, 19556, 905]


def test_gguf_metadata_matches_gguf_package():
    reader = open_gguf_reader(model_file("llama-tokenizer/ggml-vocab-llama-spm.gguf"))
    meta = gguf_metadata(reader)
    assert set(meta) == set(reader.fields)
    for key, field in reader.fields.items():
        assert meta[key] == field.contents(), key
    assert meta["tokenizer.ggml.model"] == "llama" and len(meta["tokenizer.ggml.tokens"]) == 32000
    assert type(meta["tokenizer.ggml.scores"][5]) is float and type(meta["tokenizer.ggml.token_type"][0]) is int
    assert meta["tokenizer.ggml.add_bos_token"] is True


def test_missing_and_garbage_files(tmp_path):
    for name in ("tokenizer.model", "tokenizer.json"):
        with pytest.raises(QllamaError, match=name):
            load_tokenizer_file(tmp_path / name)
    garbage = tmp_path / "tokenizer.model"
    garbage.write_bytes(b"this is not a sentencepiece model \x00\xff" * 10)
    with pytest.raises(QllamaError, match="tokenizer.model"):
        load_tokenizer_file(garbage)
    bad_json = tmp_path / "tokenizer.json"
    bad_json.write_text("{not json")
    with pytest.raises(QllamaError, match="tokenizer.json"):
        load_tokenizer_file(bad_json)
    with pytest.raises(QllamaError, match="kind"):
        Tokenizer.from_bytes("wordpiece", b"", {})


def test_gguf_with_unknown_tokenizer_model(tmp_path):
    path = tmp_path / "foo-vocab.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model("foo")
    writer.add_token_list(["<unk>", "a"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(QllamaError, match=r"foo-vocab\.gguf.*tokenizer\.ggml\.model.*'foo'"):
        gguf_tokenizer(path)
    with pytest.raises(QllamaError, match="tokenizer.ggml.tokens"):
        tokenizer_from_gguf({"tokenizer.ggml.model": "llama"}, "empty.gguf")
