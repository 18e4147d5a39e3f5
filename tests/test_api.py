"""The Python API an app embeds (docs/api.md): complete, stream, chat, tokenize, cancel, threads."""
import threading
import time

import pytest

import qllama
from qllama.errors import QllamaError
from paths import MODELS
from test_stories260k import KARPATHY_TEXT

QUESTION = "What is the capital of France? Answer in one word."


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf):
    return qllama.load(smollm2_gguf)


def test_complete_and_stream_on_karpathys_story():
    with qllama.load(MODELS / "stories260K" / "stories260K.bin") as model:
        done = model.complete("Once upon a time", max_tokens=40, temperature=0)
        assert "Once upon a time" + done.text == KARPATHY_TEXT
        assert (done.finish_reason, done.prompt_tokens, done.completion_tokens) == ("length", 5, 40)
        pieces = model.stream("Once upon a time", max_tokens=40, temperature=0, stop=["Lily"])
        assert "".join(pieces) == KARPATHY_TEXT[len("Once upon a time"):KARPATHY_TEXT.index("Lily")]
        assert pieces.finish_reason == "stop"
    with pytest.raises(QllamaError, match="closed"):
        model.complete("Once", max_tokens=1)


def test_chat_in_the_models_template(smollm2):
    reply = smollm2.chat([{"role": "user", "content": QUESTION}], temperature=0, max_tokens=16)
    assert "Paris" in reply.text and reply.finish_reason == "stop"
    streamed = smollm2.chat([{"role": "user", "content": QUESTION}], stream=True, temperature=0, max_tokens=16)
    assert "".join(streamed) == reply.text


def test_tokenize_and_detokenize(smollm2):
    ids = smollm2.tokenize("<|im_start|>user", special=True)
    assert ids[0] == smollm2.tokenizer.lookup("<|im_start|>") and smollm2.detokenize(ids) == "user"
    assert smollm2.tokenize("<|im_start|>") != ids[:1]      # not parsed unless asked


def test_unknown_sampling_option_is_refused(smollm2):
    with pytest.raises(TypeError, match="tempurature"):
        smollm2.complete("hi", tempurature=0)


def test_threads_generate_at_once_each_in_its_own_session(smollm2):
    prompts = ["Once upon a time", "The capital of France is", "def fibonacci(n):", "Dear diary,"]
    alone = [smollm2.complete(p, max_tokens=24, temperature=0, session=smollm2.new_session()).text for p in prompts]
    results = [None] * len(prompts)

    def work(i):
        results[i] = smollm2.complete(prompts[i], max_tokens=24, temperature=0, session=smollm2.new_session()).text
    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == alone


def cancelled_after(model, prompt, delay, **options):
    cancel = threading.Event()
    threading.Timer(delay, cancel.set).start()
    start = time.perf_counter()
    pieces = model.stream(prompt, cancel=cancel, session=model.new_session(), **options)
    text = "".join(pieces)
    return pieces, text, time.perf_counter() - start


def test_cancel_from_another_thread_during_decode(smollm2):
    cancel = threading.Event()
    pieces = smollm2.stream("Once upon a time", max_tokens=100000, temperature=0.8, seed=1, cancel=cancel,
                            session=smollm2.new_session())

    def watch():                            # another thread cancels once five tokens are out
        while pieces.completion_tokens < 5:
            time.sleep(0.001)
        cancel.set()
    watcher = threading.Thread(target=watch)
    watcher.start()
    text = "".join(pieces)
    watcher.join()
    assert pieces.finish_reason == "cancelled" and text
    assert 5 <= pieces.completion_tokens <= 6           # within one token of the cancel


def test_cancel_from_another_thread_during_prefill(smollm2):
    long_prompt = "The quick brown fox jumps over the lazy dog. " * 300     # ~3000 tokens: six prefill chunks
    pieces, text, seconds = cancelled_after(smollm2, long_prompt, 0.05, max_tokens=10, temperature=0)
    assert pieces.finish_reason == "cancelled" and pieces.completion_tokens == 0 and text == ""
    assert pieces.session.n_past < len(smollm2.tokenize(long_prompt))      # stopped between chunks
