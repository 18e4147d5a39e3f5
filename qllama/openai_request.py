"""OpenAI-style request bodies -> what the scheduler needs, checked field by field.

Every problem is a RequestError: the HTTP status, the offending field and a one-line message, sent
back as OpenAI's error object. Fields follow OpenAI's API (and llama.cpp's server for the extras
top_k, min_p, repeat_penalty); unknown fields are ignored, as OpenAI's clients add their own.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import QllamaError
from .sampling import SamplingParams

MAX_STOP_STRINGS = 4            # OpenAI's limit
ROLES = ("system", "user", "assistant", "developer")


class RequestError(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 code: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.param, self.status, self.code, self.kind = message, param, status, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class Generation:
    ids: list[int]
    max_tokens: int
    stop: list[str]
    params: SamplingParams
    stream: bool
    include_usage: bool


def number(body: dict, name: str, lo: float, hi: float, default=None, integer: bool = False):
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not float(value).is_integer()):
        raise RequestError(f"{name} must be {'an integer' if integer else 'a number'}, got {value!r}", name)
    if not math.isfinite(value) or not lo <= value <= hi:
        raise RequestError(f"{name} must be in [{lo}, {hi}], got {value!r}", name)
    return int(value) if integer else float(value)


def stop_strings(body: dict) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) or len(stop) > MAX_STOP_STRINGS:
        raise RequestError(f"stop must be a string or a list of at most {MAX_STOP_STRINGS} strings", "stop")
    return stop


def sampling(body: dict) -> SamplingParams:
    d = SamplingParams()        # the defaults are SamplingParams', as the CLI's
    try:
        return SamplingParams(
            temperature=number(body, "temperature", 0, 2, d.temperature),
            top_p=number(body, "top_p", 0, 1, d.top_p) or d.top_p,          # OpenAI allows 0: take it as "off"
            top_k=number(body, "top_k", 0, 1 << 20, d.top_k, integer=True),
            min_p=number(body, "min_p", 0, 1, d.min_p),
            repeat_penalty=number(body, "repeat_penalty", 1e-3, 10, d.repeat_penalty),
            presence_penalty=number(body, "presence_penalty", -2, 2, d.presence_penalty),
            frequency_penalty=number(body, "frequency_penalty", -2, 2, d.frequency_penalty),
            seed=number(body, "seed", 0, 2**63 - 1, None, integer=True),
        )
    except QllamaError as e:
        raise RequestError(str(e)) from None


def message_text(content, i: int) -> str:
    """A message's content: a string, or OpenAI's list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise RequestError(f"messages[{i}].content must be a string or a list of text parts", f"messages[{i}].content")


def chat_messages(body: dict) -> list[dict]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages must be a non-empty list", "messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise RequestError(f"messages[{i}] must be an object whose role is one of {', '.join(ROLES)}",
                               f"messages[{i}]")
        role = "system" if m["role"] == "developer" else m["role"]
        out.append({"role": role, "content": message_text(m.get("content"), i)})
    return out


def completion_prompt(body: dict, tokenizer) -> list[int]:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return tokenizer.encode(prompt)
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        if not all(0 <= t < tokenizer.vocab_size for t in prompt):
            raise RequestError("prompt has a token id outside the vocabulary", "prompt")
        return list(prompt)
    raise RequestError("prompt must be a string, a list of one string, or a list of token ids", "prompt")


def generation(body, ids: list[int], ctx: int) -> Generation:
    """The checked fields shared by both endpoints, for a prompt of ids in a context of ctx."""
    if number(body, "n", 1, 1, 1, integer=True) != 1:
        raise RequestError("only n = 1 is supported", "n")
    if not ids:
        raise RequestError("the prompt is empty", "prompt")
    if len(ids) >= ctx:
        raise RequestError(f"the prompt has {len(ids)} tokens, but the context holds {ctx}", "prompt",
                           code="context_length_exceeded")
    room = ctx - len(ids)
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = number(body, name, 1, 1 << 31, None, integer=True)
    if max_tokens is not None and max_tokens > room:
        raise RequestError(f"{name} {max_tokens} does not fit: the prompt has {len(ids)} tokens and the "
                           f"context holds {ctx}", name, code="context_length_exceeded")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError("stream must be true or false", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise RequestError("stream_options must be an object", "stream_options")
    return Generation(ids, max_tokens or room, stop_strings(body), sampling(body), stream,
                      bool(options.get("include_usage")))
