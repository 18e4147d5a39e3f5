"""`qllama quantize SOURCE OUT.gguf`: a GGUF for llama.cpp, read back with qllama and the gguf package.

llama.cpp itself is the oracle of bench/export_check.py (CI cannot build it); here the outside
references are files llama.cpp's own tools made (stories260K.gguf's vocabulary, SmolLM2's GGUF)
and transformers' tokenizations of the BPE fixture.
"""
import json
import math
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import gguf
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import qllama
from cli_helpers import assert_one_line_error, qllama as qllama_cli
from paths import MODELS
from qllama.checkpoint import open_checkpoint
from qllama.quantize.convert import convert
from qllama.readers.gguf_fields import gguf_metadata

STORIES = MODELS / "stories260K"
FIXTURES = Path(__file__).parent / "fixtures" / "hf"
QT = gguf.GGMLQuantizationType
# what llama.cpp's llama architecture and vocab loader read (llama-model.cpp, llama-vocab.cpp)
REQUIRED_KEYS = [
    "general.architecture", "general.name", "general.file_type", "llama.vocab_size", "llama.context_length",
    "llama.embedding_length", "llama.block_count", "llama.feed_forward_length", "llama.rope.dimension_count",
    "llama.rope.freq_base", "llama.attention.head_count", "llama.attention.head_count_kv",
    "llama.attention.layer_norm_rms_epsilon", "tokenizer.ggml.model", "tokenizer.ggml.tokens",
    "tokenizer.ggml.token_type", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.add_bos_token",
]


def both(source, tmp_path, fmt, **options):
    """The same quantization written as .safetensors and as .gguf."""
    paths = tmp_path / "q.safetensors", tmp_path / "q.gguf"
    for path in paths:
        convert(source, path, format=fmt, **options)
    return paths


def read_gguf(path):
    reader = gguf.GGUFReader(path)
    tensors = {t.name: (t.tensor_type.name, [int(d) for d in t.shape]) for t in reader.tensors}
    return gguf_metadata(reader), tensors, reader


def assert_same_model(safetensors, gguf_file, prompt_ids, fast: bool, matrices: bool = True):
    """Every matrix bit for bit (when asked), and the same logits and greedy tokens through qllama."""
    if matrices:
        a, b = open_checkpoint(safetensors), open_checkpoint(gguf_file)
        assert a.tensors.keys() == b.tensors.keys()
        for name, t in a.tensors.items():
            assert np.array_equal(t.float32(), b.tensors[name].float32()), name
    ma, mb = (qllama.load(p, reference=not fast) for p in (safetensors, gguf_file))
    assert np.array_equal(ma.logits(prompt_ids), mb.logits(prompt_ids))
    greedy = [list(m.generate(prompt_ids, max_tokens=16, temperature=0)) for m in (ma, mb)]
    assert greedy[0] == greedy[1]


@pytest.mark.parametrize("fmt, ggml_type", [("q4_0", "Q4_0"), ("q8_0", "Q8_0")])
def test_stories260k_gguf_is_the_safetensors_model(tmp_path, fmt, ggml_type):
    with pytest.warns(UserWarning, match="rows of 172"):
        st, out = both(STORIES / "stories260K.bin", tmp_path, fmt)
    # the quantized values of the 172-wide down_proj go in as F32: the reference path sees the same weights
    assert_same_model(st, out, qllama.load(st).tokenizer.encode("Once upon a time"), fast=False)

    meta, tensors, _ = read_gguf(out)
    assert [k for k in REQUIRED_KEYS if k not in meta] == []
    assert meta["general.file_type"] == gguf.LlamaFileType[f"MOSTLY_{ggml_type}"]
    assert tensors["token_embd.weight"] == ("Q8_0", [64, 512])
    assert tensors["blk.4.attn_k.weight"] == (ggml_type, [64, 32])
    assert tensors["blk.0.ffn_gate.weight"] == (ggml_type, [64, 172])
    assert tensors["blk.0.ffn_down.weight"] == ("F32", [172, 64])
    assert tensors["output_norm.weight"] == ("F32", [64])
    assert "output.weight" not in tensors and len(tensors) == 2 + 5 * 9          # tied: llama.cpp reuses token_embd
    # the SentencePiece vocabulary as llama.cpp's own converter wrote it into stories260K.gguf
    theirs = gguf_metadata(gguf.GGUFReader(STORIES / "stories260K.gguf"))
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type",
                "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id",
                "llama.attention.head_count_kv", "llama.rope.dimension_count", "llama.feed_forward_length"):
        assert meta[key] == theirs[key], key


@pytest.fixture(scope="module")
def smollm2_exports(smollm2_gguf, tmp_path_factory):
    return both(smollm2_gguf, tmp_path_factory.mktemp("smollm2"), "q4_1")


def test_smollm2_gguf_keeps_every_block_and_key_of_its_source(smollm2_gguf, smollm2_exports):
    meta, tensors, reader = read_gguf(smollm2_exports[1])
    source_meta, source_tensors, source = read_gguf(smollm2_gguf)
    assert tensors == source_tensors                                       # names, ggml types, shapes
    data = {t.name: t.data for t in source.tensors}
    for t in reader.tensors:                                               # Q/K rows back in GGUF's RoPE order
        assert np.array_equal(t.data, data[t.name]), t.name
    assert meta == source_meta                                             # tokenizer.ggml.* (merges, pre) too
    types = {k: [v.name for v in f.types] for k, f in source.fields.items()}
    assert {k: [v.name for v in f.types] for k, f in reader.fields.items()} == types


def test_smollm2_gguf_runs_as_its_safetensors_twin(smollm2_exports):
    st, out = smollm2_exports
    ids = qllama.load(st).tokenizer.encode("The capital of France is")
    # the matrices are the source's blocks (the test above; test_quantize.py checks the .safetensors side)
    assert_same_model(st, out, ids, fast=True, matrices=False)


def test_bpe_tokenizer_json_becomes_a_gpt2_vocab(tmp_path):
    folder = FIXTURES / "gqa_tied_f32"
    with pytest.warns(UserWarning, match="rows of 172"):
        st, out = both(folder, tmp_path, "q8_0")
    meta, tensors, _ = read_gguf(out)
    spec = json.loads((folder / "tokenizer.json").read_text())
    vocab = {**spec["model"]["vocab"], **{t["content"]: t["id"] for t in spec["added_tokens"]}}
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    assert meta["tokenizer.ggml.tokens"] == sorted(vocab, key=vocab.get)
    assert meta["tokenizer.ggml.merges"] == [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    assert meta["tokenizer.ggml.token_type"][:3] == [3, 3, 1]                # <s>, </s> are control tokens
    assert (meta["tokenizer.ggml.bos_token_id"], meta["tokenizer.ggml.eos_token_id"]) == (0, 1)
    assert meta["tokenizer.ggml.add_bos_token"] is True and "<|im_start|>" in meta["tokenizer.chat_template"]
    assert meta["llama.attention.head_count_kv"] == 2 and meta["llama.rope.freq_base"] == 500000.0
    # transformers' AutoTokenizer ids for the fixture's cases, through the vocab read back from the GGUF
    tok = qllama.load(out).tokenizer
    for case in json.loads((folder / "tokenizer_cases.json").read_text()):  # transformers parses specials
        assert tok.encode(case["text"], add_bos=False, parse_special=True) == case["ids"], case["text"]
        assert tok.encode(case["text"], parse_special=True) == case["ids_with_special_tokens"], case["text"]
    assert_same_model(st, out, list(range(0, 320, 7)), fast=False)


def test_llama3_rope_scaling_travels_as_rope_freqs(tmp_path):
    folder = FIXTURES / "llama3_untied_f32"
    out = tmp_path / "l3.gguf"
    with pytest.warns(UserWarning, match="rows of 172"):
        convert(folder, out, format="q8_0", tokenizer=FIXTURES / "gqa_tied_f32" / "tokenizer.json")
    meta, tensors, reader = read_gguf(out)
    assert tensors["rope_freqs.weight"] == ("F32", [8]) and "output.weight" in tensors
    cfg = json.loads((folder / "config.json").read_text())["rope_parameters"]
    # convert_hf_to_gguf.py's LlamaModel.generate_extra_tensors, transcribed
    base, dim, factor = cfg["rope_theta"], 16, cfg["factor"]
    low, high, old = cfg["low_freq_factor"], cfg["high_freq_factor"], cfg["original_max_position_embeddings"]
    expected = []
    for freq in 1.0 / base ** (np.arange(0, dim, 2) / dim):
        wavelen = 2 * math.pi / freq
        smooth = (old / wavelen - low) / (high - low)
        expected.append(1 if wavelen < old / high else factor if wavelen > old / low else 1 / ((1 - smooth) / factor + smooth))
    got = next(t.data for t in reader.tensors if t.name == "rope_freqs.weight")
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert "llama.rope.scaling.type" not in meta


@pytest.mark.parametrize("args, fragments", [
    (["--format", "q4_g64"], ["--format q4_g64", "no llama.cpp", "q4_0", ".safetensors"]),
    (["--format", "q4a", "--group-size", "128"], ["q4a_g128", "q4_1"]),
    (["--format", "q8_0", "--embeddings-format", "q8_g128"], ["--embeddings-format q8_g128", "q8_0"]),
])
def test_formats_without_a_ggml_type_are_refused(tmp_path, args, fragments):
    out = tmp_path / "o.gguf"
    assert_one_line_error(qllama_cli("quantize", STORIES / "stories260K.bin", out, *args), *fragments)
    assert list(tmp_path.iterdir()) == []


def test_other_suffixes_are_refused(tmp_path):
    out = tmp_path / "o.bin"
    assert_one_line_error(qllama_cli("quantize", STORIES / "stories260K.bin", out, "--format", "q4"),
                          "o.bin", ".safetensors", ".gguf", "'.bin'")
    assert list(tmp_path.iterdir()) == []


def test_failure_midway_leaves_no_gguf(tmp_path):
    folder = tmp_path / "nan_model"
    shutil.copytree(FIXTURES / "gqa_tied_f32", folder)
    tensors = load_file(folder / "model.safetensors")
    tensors["model.layers.1.mlp.up_proj.weight"][3, 5] = np.nan
    save_file(tensors, folder / "model.safetensors")
    out = tmp_path / "o.gguf"
    assert_one_line_error(qllama_cli("quantize", folder, out, "--format", "q4_0"), "model.layers.1.mlp.up_proj.weight")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan_model"]


def test_ctrl_c_midway_leaves_no_gguf(smollm2_gguf, tmp_path):
    out = tmp_path / "o.gguf"
    proc = subprocess.Popen([sys.executable, "-m", "qllama.cli", "quantize", str(smollm2_gguf), str(out), "--format",
                             "q4_1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".o.gguf.*.partial")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "quantize ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("pre_tokenizer, name", [
    ({"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}, "gpt-2"),
    ({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True},
                                            {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}]},
     "smollm"),                                                          # SmolLM2's tokenizer.json
    ({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?"
                                               "[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
         "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
     "llama-bpe"),                                                       # Llama 3's tokenizer.json
    ({"type": "ByteLevel", "add_prefix_space": True, "use_regex": True}, None),   # a leading space llama.cpp lacks
    ({"type": "Metaspace", "replacement": "\u2581"}, None),
])
def test_pre_tokenizer_names(pre_tokenizer, name):
    from qllama.quantize.gguf_metadata import pre_tokenizer_name
    assert pre_tokenizer_name(pre_tokenizer) == name
