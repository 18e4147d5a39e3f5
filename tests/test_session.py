"""Sessions: many conversations over one copy of the weights, each running only what it has not seen.

Oracles: karpathy's documented greedy sample (stories260K) and the tokenizer's decode of the whole
sequence (the streamed text must be exactly what decoding adds after the prompt).
"""
import threading

import numpy as np
import pytest

import qllama
from qllama.errors import QllamaError
from qllama.generate import generate_text
from paths import MODELS
from test_stories260k import KARPATHY_IDS

STORIES_BIN = MODELS / "stories260K" / "stories260K.bin"


@pytest.fixture(scope="module")
def stories():
    return qllama.load(STORIES_BIN)


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf):
    return qllama.load(smollm2_gguf)


def test_sessions_share_weights_and_keep_their_own_caches(stories):
    a, b = stories.new_session(), stories.new_session()
    assert a.model is b.model and a.cache is not b.cache
    story, other = a.generate("Once upon a time", max_tokens=40, temperature=0), b.generate("Lily", max_tokens=40, temperature=0)
    mixed_a, mixed_b = [], []
    for x, y in zip(story, other):        # interleaved token by token: neither disturbs the other
        mixed_a.append(x)
        mixed_b.append(y)
    assert mixed_a == KARPATHY_IDS[5:45]
    alone = list(stories.new_session().generate("Lily", max_tokens=40, temperature=0))
    assert mixed_b == alone


def test_prefill_runs_only_what_follows_the_cached_prefix(stories):
    s = stories.new_session()
    ids = KARPATHY_IDS[:20]
    first = s.prefill(ids)
    assert s.last_prefill == 20 and s.n_past == 20
    again = s.prefill(ids + KARPATHY_IDS[20:23])
    assert s.last_prefill == 3 and s.n_past == 23
    # The new tokens run through the decode attention kernel here and through the prompt's (tiles)
    # in a fresh session: their sums run in other orders (~1e-7), and where the float16 KV cache
    # then rounds a value the other way, that is a unit in its last place, 5e-4 relative
    # (measured: 3.3e-4 at most; 8.6e-6 with a float32 cache). A cache or position bug moves
    # logits by whole units.
    fresh = stories.new_session().prefill(ids + KARPATHY_IDS[20:23])
    np.testing.assert_allclose(again, fresh, rtol=1e-3, atol=1e-3)
    s.prefill(ids)                          # the same prefix: only the last token runs again
    assert s.last_prefill == 1
    np.testing.assert_allclose(s.prefill(ids), first, rtol=1e-3, atol=1e-3)


def test_append_runs_exactly_the_new_tokens(stories):
    s = stories.new_session()
    s.prefill(KARPATHY_IDS[:10])
    logits = s.append(KARPATHY_IDS[10:14])
    assert s.last_prefill == 4 and s.tokens == KARPATHY_IDS[:14]
    assert int(np.argmax(logits)) == KARPATHY_IDS[14]


@pytest.mark.parametrize("fmt", ["q4", "q8"])
def test_one_shot_and_incremental_logits_agree_on_the_fast_path(tmp_path, fmt):
    """Prefill tiles, the decode GEMV and both attention kernels over the same positions. (SmolLM2
    would not do: over 30 layers float rounding flips int8 activation codes, a few percent.)"""
    from qllama.quantize.convert import convert
    convert(STORIES_BIN, tmp_path / "m.safetensors", format=fmt)
    model = qllama.load(tmp_path / "m.safetensors")
    ids = KARPATHY_IDS[:26]
    one_shot = model.new_session().forward(ids, 0)
    s = model.new_session()
    rows = [s.forward(ids[:5], 0)] + [s.forward([t], 5 + i) for i, t in enumerate(ids[5:])]
    incremental = np.concatenate(rows)
    assert np.abs(incremental - one_shot).max() < 1e-5 * np.abs(one_shot).max()


def test_generation_stops_at_the_end_of_a_small_session(stories):
    s = stories.new_session(ctx=12)
    out = list(s.generate("Once upon a time", max_tokens=100, temperature=0))
    assert out == KARPATHY_IDS[5:12] and s.finish_reason == "context" and s.n_past == 12


def test_session_context_cannot_exceed_the_models(stories):
    with pytest.raises(QllamaError, match="session context"):
        stories.new_session(ctx=stories.ctx + 1)


def test_cancel_stops_generation_with_what_it_has(stories):
    cancel, out = threading.Event(), []
    s = stories.new_session()
    for token in s.generate("Once upon a time", max_tokens=40, temperature=0, cancel=cancel):
        out.append(token)
        if len(out) == 3:
            cancel.set()
    assert out == KARPATHY_IDS[5:8] and s.finish_reason == "cancelled"


def test_cancel_before_a_prefill_chunk_runs_nothing_more(stories):
    cancel = threading.Event()
    cancel.set()
    s = stories.new_session()
    assert list(s.generate("Once upon a time", max_tokens=40, temperature=0, cancel=cancel)) == []
    assert s.finish_reason == "cancelled" and s.n_past == 0


@pytest.mark.parametrize("prompt", ["Once", "Once upon a", "Once upon a time, there"])
def test_streamed_text_is_what_decoding_adds_sentencepiece(stories, prompt):
    s = stories.new_session()
    pieces = "".join(generate_text(s, prompt, max_tokens=30, temperature=0))
    tok = stories.tokenizer
    prompt_ids = tok.encode(prompt)
    assert tok.decode(prompt_ids) + pieces == tok.decode(s.tokens)
    assert pieces.startswith(" ")           # the first word keeps its space: "Once upon", not "Onceupon"


@pytest.mark.parametrize("prompt", ["The capital of France is", "Hello", "naïve café:"])
def test_streamed_text_is_what_decoding_adds_bpe(smollm2, prompt):
    s = smollm2.new_session()
    pieces = "".join(generate_text(s, prompt, max_tokens=20, temperature=0))
    tok = smollm2.tokenizer
    assert tok.decode(tok.encode(prompt)) + pieces == tok.decode(s.tokens)
