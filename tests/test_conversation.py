"""Conversations on the real SmolLM2 (ChatML): each turn runs only its new tokens, the context makes
room by dropping whole old turns, and saved conversations are checked before use.

The expected token counts come from ChatML as documented (`<|im_start|>role\\ncontent<|im_end|>\\n`),
written out here, not from qllama's renderer.
"""
import json

import pytest

import qllama
from qllama.conversation import Conversation
from qllama.errors import QllamaError
from paths import MODELS

QUESTION = "What is the capital of France? Answer in one word."


@pytest.fixture(scope="module")
def model(smollm2_gguf):
    return qllama.load(smollm2_gguf)


def say(conv, text, **kw):
    return "".join(conv.say(text, **{"temperature": 0, "max_tokens": 24, **kw}))


def test_answers_paris_in_its_own_template(model):
    assert "Paris" in say(Conversation(model), QUESTION)


def test_second_turn_runs_only_its_new_tokens(model):
    conv = Conversation(model, system="You are brief.")
    say(conv, QUESTION)
    first = conv.session.n_past
    reply = conv.messages[-1]["content"]
    say(conv, "And of Germany?")
    new_turn = "<|im_end|>\n<|im_start|>user\nAnd of Germany?<|im_end|>\n<|im_start|>assistant\n"
    expected = len(model.tokenizer.encode(new_turn, parse_special=True))
    assert conv.session.last_prefill == expected
    assert conv.session.timings.prefill_tokens == expected < first
    # the session holds exactly the documented ChatML text of the conversation so far
    chatml = ("<|im_start|>system\nYou are brief.<|im_end|>\n"
              f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n{reply}" + new_turn)
    held = conv.session.tokens[:len(conv.session.tokens) - conv.session.timings.decode_tokens]
    assert "".join(model.tokenizer.token_text(t) for t in held) == chatml


def test_a_full_context_drops_the_oldest_turns_and_keeps_the_system_message(model):
    conv = Conversation(model, system="You are brief.", session=model.new_session(ctx=160))
    dropped = 0
    for i in range(6):
        say(conv, f"Question {i}: name a colour.", max_tokens=16)
        dropped += conv.dropped_turns
    assert dropped > 0
    assert conv.messages[0] == {"role": "system", "content": "You are brief."}
    assert not any(m["content"].startswith("Question 0") for m in conv.messages)
    assert conv.messages[-2]["content"] == "Question 5: name a colour."
    assert conv.session.n_past <= 160


def test_a_message_longer_than_the_context_is_refused_and_the_chat_goes_on(model):
    conv = Conversation(model, session=model.new_session(ctx=64))
    with pytest.raises(QllamaError, match="context holds 64"):
        say(conv, "word " * 100)
    assert conv.messages == []
    assert "Paris" in say(conv, QUESTION, max_tokens=8)


def test_clear_forgets(model):
    conv = Conversation(model, system="You are brief.")
    say(conv, QUESTION)
    conv.clear()
    assert conv.messages == [{"role": "system", "content": "You are brief."}] and conv.session.n_past == 0


def test_save_and_load_round_trip(model, tmp_path):
    conv = Conversation(model)
    say(conv, QUESTION)
    conv.save(tmp_path / "c.json")
    other = Conversation(model)
    other.load(tmp_path / "c.json")
    assert other.messages == conv.messages
    say(other, "And of Germany?")           # continues: the whole rendering, prefix matched
    assert other.session.last_prefill == other.session.timings.prefill_tokens > 0


@pytest.mark.parametrize("content, message", [
    ("{not json", "bad JSON"),
    ('{"messages": "hi"}', "expected a list"),
    ('{"messages": [{"role": "wizard", "content": "x"}]}', "role 'wizard'"),
    ('{"messages": [{"role": "user", "content": 3}]}', "string 'role' and 'content'"),
    ('[1, 2]', "expected an object"),
])
def test_malformed_saved_conversations_are_refused_whole(model, tmp_path, content, message):
    conv = Conversation(model, system="kept")
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(QllamaError, match=message) as e:
        conv.load(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    assert conv.messages == [{"role": "system", "content": "kept"}]


def test_unreadable_saved_conversation(model, tmp_path):
    with pytest.raises(QllamaError, match="cannot read"):
        Conversation(model).load(tmp_path / "missing.json")
    (tmp_path / "latin1.json").write_bytes(json.dumps({"messages": []}).encode() + b"\xff")
    with pytest.raises(QllamaError, match="not a saved conversation"):
        Conversation(model).load(tmp_path / "latin1.json")


def test_bos_once_whether_or_not_the_template_writes_it():
    stories = qllama.load(MODELS / "stories260K" / "stories260K.bin")   # SentencePiece, add_bos, <s> = 1
    messages = [{"role": "user", "content": "hi"}]
    for name in ("llama2", "chatml"):       # llama2 writes bos_token itself; chatml does not
        conv = Conversation(stories, template=name)
        ids = conv.format.prompt_ids(messages)
        assert ids[0] == 1 and ids.count(1) == 1, name


def test_a_model_without_a_template_needs_one_named():
    stories = qllama.load(MODELS / "stories260K" / "stories260K.bin")
    with pytest.raises(QllamaError, match="no chat template; name one with --template"):
        Conversation(stories)
