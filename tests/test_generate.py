"""Generation on stories260K: stop strings never leak, seeds repeat, limits hold, prefixes are reused."""
import pytest

import qllama
from qllama.errors import QllamaError
from qllama.generate import generate_text, hold_back
from paths import MODELS
from test_stories260k import KARPATHY_IDS, KARPATHY_TEXT

PROMPT = "Once upon a time"
CONTINUATION = KARPATHY_TEXT[len(PROMPT):]


@pytest.fixture(scope="module")
def model():
    return qllama.load(MODELS / "stories260K" / "stories260K.bin")


def text(model, **kw):
    return "".join(generate_text(model, PROMPT, **{"temperature": 0, "max_tokens": 40, **kw}))


def test_greedy_text_streams_karpathys_story(model):
    assert text(model) == CONTINUATION


@pytest.mark.parametrize("stop", ["Lily", "girl named", "park. One", ", red", "e"])
def test_stop_string_never_leaks(model, stop):
    out = text(model, stop=[stop])
    assert out == CONTINUATION[:CONTINUATION.index(stop)]


def test_stop_string_not_generated_changes_nothing(model):
    assert text(model, stop=["dragon"]) == CONTINUATION


def test_pieces_never_hold_a_stop_prefix_longer_than_needed(model):
    pieces = list(generate_text(model, PROMPT, temperature=0, max_tokens=40, stop=["zzz"]))
    assert "".join(pieces) == CONTINUATION and len(pieces) > 10


def test_hold_back():
    assert hold_back("the pa", ["park"]) == 2
    assert hold_back("the park", ["parks"]) == 4
    assert hold_back("abc", ["xyz"]) == 0


def test_max_tokens(model):
    assert len(list(model.generate(PROMPT, max_tokens=7, temperature=0))) == 7


def test_same_seed_same_text_other_seed_other_text(model):
    a, b, c = (text(model, temperature=1.0, seed=s) for s in (3, 3, 4))
    assert a == b and a != c


def test_stop_id_ends_generation_without_being_yielded(model):
    out = list(model.generate(PROMPT, max_tokens=40, temperature=0, stop_ids={426}))  # 426 is "."
    assert out == KARPATHY_IDS[5:KARPATHY_IDS.index(426)]


def test_prompt_longer_than_context_is_refused():
    small = qllama.load(MODELS / "stories260K" / "stories260K.bin", ctx=8)
    with pytest.raises(QllamaError, match="context"):
        list(small.generate("Once upon a time there was a little girl named Lily", max_tokens=1))


def test_generation_stops_at_context_end():
    small = qllama.load(MODELS / "stories260K" / "stories260K.bin", ctx=12)
    assert len(list(small.generate(PROMPT, max_tokens=100, temperature=0))) == 12 - 5


def test_cached_prefix_is_reused_with_identical_results(model):
    first = text(model)
    assert model.n_past > 5
    again = text(model)                     # same prompt: the cached prefix is reused
    assert again == first == CONTINUATION
