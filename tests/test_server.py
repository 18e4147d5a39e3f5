"""`qllama serve` with the real SmolLM2, through the official `openai` client and raw HTTP.

Oracles: the `openai` package's own parsing of our responses and streams, and what `qllama run`
prints for the same prompt (a separate process on a separate code path: no batching)."""
import concurrent.futures
import http.client
import json
import time
import urllib.error
import urllib.request

import openai
import pytest

from cli_helpers import qllama
from server_helpers import ServerProcess

QUESTION = "What is the capital of France? Answer in one word."
QUESTIONS = ["What is the capital of France?", "Name three fruits.", "Write a haiku about the sea.",
             "What is 2+2?", "Who wrote Hamlet?", "Tell me a joke.", "What colour is the sky?",
             "Say hello in Spanish."]


@pytest.fixture(scope="module")
def server(smollm2_gguf):
    s = ServerProcess(smollm2_gguf, "--parallel", "4")
    yield s
    stderr = s.stop()
    assert "Traceback" not in stderr, stderr


@pytest.fixture(scope="module")
def small(smollm2_gguf):
    """One slot, a 256-token context and an API key."""
    s = ServerProcess(smollm2_gguf, "--parallel", "1", "--ctx", "256", "--api-key", "sesame")
    yield s
    stderr = s.stop()
    assert "Traceback" not in stderr, stderr


def client(server, key="unused"):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=120)


def ask(server, question, **kw):
    r = client(server).chat.completions.create(model="anything", messages=[{"role": "user", "content": question}],
                                               temperature=0, **kw)
    return r.choices[0].message.content


def test_models_lists_the_loaded_model(server, smollm2_gguf):
    models = client(server).models.list().data
    assert [m.id for m in models] == [smollm2_gguf.name]


def test_chat_completion_streamed_equals_whole_equals_qllama_run(server, smollm2_gguf):
    c = client(server)
    whole = c.chat.completions.create(model="x", messages=[{"role": "user", "content": QUESTION}], temperature=0,
                                      max_tokens=16)
    text = whole.choices[0].message.content
    assert "Paris" in text and whole.choices[0].finish_reason == "stop"
    assert whole.usage.completion_tokens > 0 and whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens
    chunks = list(c.chat.completions.create(model="x", messages=[{"role": "user", "content": QUESTION}],
                                            temperature=0, max_tokens=16, stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == text
    assert chunks[-1].choices[0].finish_reason == "stop"
    run = qllama("run", QUESTION, "-m", smollm2_gguf, "--temp", "0", "-n", "16")
    assert run.stdout == text + "\n"


def test_completion_streamed_equals_whole_equals_qllama_run_raw(server, smollm2_gguf):
    c = client(server)
    prompt = "The capital of France is"
    whole = c.completions.create(model="x", prompt=prompt, temperature=0, max_tokens=12)
    text = whole.choices[0].text
    assert whole.choices[0].finish_reason == "length" and whole.usage.completion_tokens == 12
    streamed = "".join(ch.choices[0].text for ch in c.completions.create(model="x", prompt=prompt, temperature=0,
                                                                         max_tokens=12, stream=True))
    assert streamed == text
    run = qllama("run", prompt, "-m", smollm2_gguf, "--raw", "--temp", "0", "-n", "12")
    assert run.stdout == prompt + text + "\n"


def test_stop_strings_never_leak(server):
    c = client(server)
    text = c.completions.create(model="x", prompt="1. Apples\n2.", temperature=0, max_tokens=30).choices[0].text
    cut = c.completions.create(model="x", prompt="1. Apples\n2.", temperature=0, max_tokens=30, stop=["\n"])
    assert cut.choices[0].text == text[:text.index("\n")] and cut.choices[0].finish_reason == "stop"


def test_eight_requests_on_four_slots_each_get_their_own_answer(server):
    alone = [ask(server, q, max_tokens=32) for q in QUESTIONS]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda q: ask(server, q, max_tokens=32), QUESTIONS))
    assert together == alone            # batched decoding changes no sequence's greedy tokens


def test_a_client_that_leaves_mid_stream_frees_its_slot(small):
    c = client(small, "sesame")
    stream = c.completions.create(model="x", prompt="Once upon a time", max_tokens=200, temperature=0.8, stream=True)
    for i, _ in enumerate(stream):
        if i == 2:
            break
    stream.close()                      # the connection goes; the one slot must come free
    start = time.monotonic()
    r = c.completions.create(model="x", prompt="The capital of France is", max_tokens=4, temperature=0)
    assert r.choices[0].text and time.monotonic() - start < 30


def post(server, path, body: bytes, headers=None):
    req = urllib.request.Request(server.url + path, data=body, headers={"Content-Type": "application/json",
                                                                         **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


AUTH = {"Authorization": "Bearer sesame"}


@pytest.mark.parametrize("path, body, status, param", [
    ("/v1/completions", b"{not json", 400, None),
    ("/v1/completions", b"[1, 2]", 400, None),
    ("/v1/completions", b'{"prompt": 5}', 400, "prompt"),
    ("/v1/completions", b'{"prompt": "hi", "temperature": "hot"}', 400, "temperature"),
    ("/v1/completions", b'{"prompt": "hi", "max_tokens": 1000}', 400, "max_tokens"),
    ("/v1/completions", b'{"prompt": "hi", "max_tokens": -1}', 400, "max_tokens"),
    ("/v1/completions", b'{"prompt": "hi", "n": 2}', 400, "n"),
    ("/v1/completions", b'{"prompt": "hi", "stop": [1]}', 400, "stop"),
    ("/v1/completions", json.dumps({"prompt": "word " * 400}).encode(), 400, "prompt"),
    ("/v1/chat/completions", b'{"messages": []}', 400, "messages"),
    ("/v1/chat/completions", b'{"messages": [{"role": "wizard", "content": "x"}]}', 400, "messages[0]"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": 3}]}', 400, "messages[0].content"),
    ("/v1/embeddings", b"{}", 404, None),
])
def test_bad_requests_get_openai_errors(small, path, body, status, param):
    code, reply = post(small, path, body, AUTH)
    assert code == status and reply["error"]["param"] == param and reply["error"]["message"]


def test_the_api_key_is_demanded(small):
    assert post(small, "/v1/completions", b'{"prompt": "hi"}')[0] == 401
    assert post(small, "/v1/completions", b'{"prompt": "hi"}', {"Authorization": "Bearer wrong"})[0] == 401
    with pytest.raises(openai.AuthenticationError):
        client(small, "wrong").models.list()
    assert client(small, "sesame").models.list().data


def test_an_oversized_body_is_refused_before_it_is_read(small):
    conn = http.client.HTTPConnection("127.0.0.1", small.port, timeout=30)
    conn.putrequest("POST", "/v1/completions")
    for name, value in {**AUTH, "Content-Type": "application/json", "Content-Length": str(64 << 20)}.items():
        conn.putheader(name, value)
    conn.endheaders()                   # no body sent: the answer must come from the length alone
    reply = conn.getresponse()
    assert reply.status == 413 and "over" in json.loads(reply.read())["error"]["message"]
    conn.close()
