"""qllama's reference logits against Hugging Face transformers' on random tiny LlamaForCausalLM models.

The fixtures (config, weights, tokens, transformers' logits) are made by fixtures/make_hf_models.py,
which needs torch and transformers; this test needs neither.
"""
import json
from pathlib import Path

import numpy as np
import pytest

import qllama

FIXTURES = Path(__file__).parent / "fixtures" / "hf"
VARIANTS = ["gqa_tied_f32", "llama3_untied_f32", "linear_sharded_f16", "headdim_bf16", "legacy_config_f32"]


def oracle(variant):
    folder = FIXTURES / variant
    return folder, json.loads((folder / "tokens.json").read_text()), np.load(folder / "logits.npy")


@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_match_transformers(variant):
    folder, tokens, expected = oracle(variant)
    model = qllama.load(folder, reference=True)
    got = model.logits(tokens)
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-4


@pytest.mark.parametrize("variant", VARIANTS)
def test_prefill_then_one_by_one_matches_transformers(variant):
    folder, tokens, expected = oracle(variant)
    model = qllama.load(folder, reference=True)
    split = len(tokens) // 3
    rows = [model.forward(tokens[:split], 0)]
    rows += [model.forward([t], split + i) for i, t in enumerate(tokens[split:])]
    assert np.abs(np.concatenate(rows) - expected).max() <= 1e-4


def test_config_variants_are_read_as_written():
    args = {v: qllama.load(FIXTURES / v).args for v in VARIANTS}
    assert (args["gqa_tied_f32"].n_kv_heads, args["gqa_tied_f32"].tied_embeddings) == (2, True)
    assert args["llama3_untied_f32"].rope_scaling == "llama3" and args["llama3_untied_f32"].rope_factor == 8.0
    assert args["legacy_config_f32"].rope_scaling == "linear" and args["legacy_config_f32"].rope_theta == 25000.0
    assert args["headdim_bf16"].head_dim == 32 and args["headdim_bf16"].q_dim == 128


def test_tokenizer_json_encodes_like_transformers():
    cases = json.loads((FIXTURES / "gqa_tied_f32" / "tokenizer_cases.json").read_text())
    tok = qllama.load(FIXTURES / "gqa_tied_f32").tokenizer
    assert tok.kind == "bpe" and tok.add_bos and tok.bos_id == 0
    for case in cases:  # transformers parses special tokens written in the text, as parse_special=True does
        assert tok.encode(case["text"], add_bos=False, parse_special=True) == case["ids"], case["text"]
        assert tok.encode(case["text"], parse_special=True) == case["ids_with_special_tokens"], case["text"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_default_fast_path_with_float16_cache_stays_close(variant):
    folder, tokens, expected = oracle(variant)
    got = qllama.load(folder).logits(tokens)                 # float16 KV cache: ~1e-3 relative rounding
    assert np.abs(got - expected).max() <= 2e-2 * np.abs(expected).max()
