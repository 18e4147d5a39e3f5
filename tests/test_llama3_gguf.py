"""Llama 3.1 as llama.cpp's converter writes it, against transformers on a tiny random model.

The GGUF keeps Llama 3.1's RoPE scaling only as `rope_freqs.weight` (a divisor per frequency, no
rope.scaling keys). The fixture (fixtures/llama3_gguf/, made by fixtures/make_llama3_gguf.py with
torch and transformers; this test needs neither) holds transformers' inverse frequencies, logits
and greedy generations that end at <|eot_id|> and <|eom_id|>.
"""
import json
from pathlib import Path

import numpy as np
import pytest

import qllama
from cli_helpers import qllama as qllama_cli
from qllama.config import ModelArgs
from qllama.errors import QllamaError
from qllama.readers.gguf import open_gguf_reader
from qllama.readers.gguf_fields import gguf_metadata
from qllama.rope import inverse_frequencies

FIXTURE = Path(__file__).parent / "fixtures" / "llama3_gguf"
GGUF = FIXTURE / "tiny-llama3.1-f16.gguf"
ORACLE = json.loads((FIXTURE / "oracle.json").read_text())
TOKENS = ORACLE["tokens"]


@pytest.fixture(scope="module")
def expected():
    return np.load(FIXTURE / "logits.npy")


@pytest.fixture(scope="module")
def reference():
    return qllama.load(GGUF, reference=True)


@pytest.fixture(scope="module")
def fast():
    return qllama.load(GGUF)


def test_rope_freqs_become_transformers_inverse_frequencies(reference):
    args = reference.args
    assert args.rope_scaling == "freq_factors" and len(args.rope_freq_factors) == args.head_dim // 2
    want = np.array(ORACLE["inv_freq"])
    assert np.allclose(inverse_frequencies(args), want, rtol=1e-6, atol=0)
    # the same scaling from transformers' own config keys gives the same table
    hf = ModelArgs.from_hf_config({"hidden_size": args.dim, "intermediate_size": args.hidden_dim,
                                   "num_hidden_layers": args.n_layers, "num_attention_heads": args.n_heads,
                                   "vocab_size": args.vocab_size, "rope_parameters": ORACLE["rope_parameters"]})
    assert hf.rope_scaling == "llama3" and np.allclose(inverse_frequencies(hf), want, rtol=1e-6, atol=0)
    # and the fixture tells them apart from plain RoPE: 4 of 8 frequencies are scaled
    plain = inverse_frequencies(ModelArgs(**{**vars(args), "rope_scaling": "none", "rope_freq_factors": ()}))
    assert np.sum(~np.isclose(plain, want, rtol=1e-3)) == 4


def test_reference_logits_match_transformers(reference, expected):
    assert np.abs(reference.logits(TOKENS) - expected).max() <= 1e-4   # plain RoPE is off by 3e-2


def test_prefill_then_one_by_one_matches_transformers(reference, expected):
    split = len(TOKENS) // 3
    rows = [reference.forward(TOKENS[:split], 0)]
    rows += [reference.forward([t], split + i) for i, t in enumerate(TOKENS[split:])]
    assert np.abs(np.concatenate(rows) - expected).max() <= 1e-4


def test_fast_path_with_float16_cache_stays_close(fast, expected):
    assert np.abs(fast.logits(TOKENS) - expected).max() <= 2e-2 * np.abs(expected).max()


@pytest.mark.parametrize("path", ["reference", "fast"])
def test_generation_stops_at_end_of_turn_tokens(path, request):
    model = request.getfixturevalue(path)
    tok = model.tokenizer
    ids = {g["stop"]: g["stop_id"] for g in ORACLE["generations"]}
    assert set(ids) == {"<|eot_id|>", "<|eom_id|>"}
    for name, i in ids.items():
        assert tok.lookup(name) == i and i in tok.stop_ids and i != tok.eos_id   # stops by name, as llama.cpp
    for g in ORACLE["generations"]:   # transformers' greedy generate with eos_token_id = both
        assert list(model.generate(g["prompt"], max_tokens=20, temperature=0)) == g["generated"], g["stop"]
        assert model.session.finish_reason == "stop"


def test_vocab_is_llama_bpe(reference):
    tok = reference.tokenizer
    assert (tok.kind, tok.add_bos, tok.bos_id) == ("bpe", True, tok.lookup("<|begin_of_text|>"))
    text = "It's 2024: the llama's wool is soft."
    assert tok.decode(tok.encode(text)) == text and tok.encode(text)[0] == tok.bos_id


def test_qllama_quantize_keeps_the_scaling(tmp_path, reference, expected):
    out = tmp_path / "tiny-llama3.1.q8.safetensors"
    result = qllama_cli("quantize", GGUF, out, "--format", "q8")
    assert result.returncode == 0, result.stderr
    model = qllama.load(out, reference=True)
    assert model.args == reference.args and model.args.rope_scaling == "freq_factors"
    got = model.logits(TOKENS)
    assert np.sqrt(np.mean((got - expected) ** 2) / np.mean(expected ** 2)) < 0.03


def test_rope_freqs_must_fit_head_dim_and_fold_linear_scaling():
    meta = gguf_metadata(open_gguf_reader(GGUF))
    factors = [1.0, 1.0, 1.0, 1.0, 2.5, 8.0, 8.0, 8.0]
    with pytest.raises(QllamaError, match=r"x\.gguf: tensor rope_freqs\.weight has 3 values, expected head_dim / 2 = 8"):
        ModelArgs.from_gguf(meta, "x.gguf", vocab_size=320, tied=False, rope_freqs=factors[:3])
    # llama.cpp applies a linear factor on top of the per-frequency divisors: one divisor each
    linear = dict(meta, **{"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 2.0})
    args = ModelArgs.from_gguf(linear, "x.gguf", vocab_size=320, tied=False, rope_freqs=factors)
    assert args.rope_freq_factors == tuple(2 * f for f in factors) and args.rope_factor == 1.0
    assert ModelArgs.from_json(args.to_json()) == args
    with pytest.raises(QllamaError, match="rope frequency factors"):
        ModelArgs(**{**vars(args), "rope_freq_factors": (1.0, -2.0) * 4})
    with pytest.raises(QllamaError, match="rope frequency factors"):
        ModelArgs(**{**vars(args), "rope_scaling": "none"})


def test_model_args_json_names_only_what_a_model_uses():
    # a file without the table stays readable by a qllama that predates it; one from a newer qllama is refused by name
    plain = qllama.load(Path(__file__).parent / "fixtures" / "hf" / "gqa_tied_f32", reference=True).args
    assert "rope_freq_factors" not in json.loads(plain.to_json())
    assert ModelArgs.from_json(plain.to_json()) == plain
    with pytest.raises(QllamaError, match="'rope_future' is unknown to this qllama.*upgrade"):
        ModelArgs.from_json(json.dumps({**json.loads(plain.to_json()), "rope_future": 1}))
