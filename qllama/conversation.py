"""Conversation: chat messages over one Session, rendered with the model's chat template.

Each turn runs only the tokens the session has not seen, as llama.cpp's chat does
(common_chat_format_single): the template renders the conversation with the new message, and
when that text begins with the text the session already holds (the last prompt and the reply as
generated) only the rest is tokenized and appended. When it does not (a template that rewrites
earlier turns, an edited history), the whole rendering is tokenized and the session reuses its
longest matching prefix; either way the model sees what the template renders.

When the context would overflow, the oldest turns go (the system message stays) and the shortened
conversation is prefilled again, reusing the cached system prompt. We chose this over llama.cpp's
context shift (drop half the cached tokens behind a kept prefix, re-rotate the keys) because the
model then always sees a well-formed rendering of whole turns, never a turn cut in half; the cost
is one prefill of what remains, only when the context is full.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from .chat_format import ChatFormat
from .errors import QllamaError
from .generate import DEFAULT_MAX_TOKENS, generate_text
from .session import Session

ROLES = ("system", "user", "assistant")


def check_messages(messages, source: str = "messages") -> list[dict]:
    """A list of {"role", "content"} dicts with known roles and string contents, or a QllamaError."""
    if not isinstance(messages, list):
        raise QllamaError(f"{source}: expected a list of messages, got {type(messages).__name__}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise QllamaError(f"{source}: message {i} is not an object with string 'role' and 'content'")
        if m["role"] not in ROLES:
            raise QllamaError(f"{source}: message {i} has role {m['role']!r}, expected one of {', '.join(ROLES)}")
        out.append({"role": m["role"], "content": m["content"]})
    return out


class Conversation:
    """Messages and the session that holds them; `say(text)` streams the reply's text pieces."""

    def __init__(self, model, template: str | None = None, system: str | None = None,
                 session: Session | None = None):
        self.model = model
        self.format = ChatFormat(model, template)
        self.tokenizer = model.tokenizer
        self.session = session or model.new_session()
        self.messages: list[dict] = []
        self.held_text = ""     # the text whose tokens the session holds (rendered prompt + reply)
        self.dropped_turns = 0  # by the last say(), to make room
        if system:
            self.messages.append({"role": "system", "content": system})

    def prompt_ids(self, messages: list[dict]) -> tuple[list[int], bool]:
        """The ids to run for `messages` and whether they go after what the session holds (True) or
        are the whole conversation, matched against the session's cached prefix (False)."""
        text = self.format.render(messages)
        if self.held_text and self.session.n_past and text.startswith(self.held_text):
            return self.format.encode(text[len(self.held_text):], first=False), True
        return self.format.encode(text, first=True), False

    def make_room(self, messages: list[dict], reserve: int) -> tuple[list[dict], list[int], bool]:
        """Drop the oldest turns (never the system message or the newest message) until the prompt
        and `reserve` reply tokens fit the session's context."""
        self.dropped_turns = 0
        while True:
            ids, append = self.prompt_ids(messages)
            if (self.session.n_past if append else 0) + len(ids) + reserve <= self.session.ctx:
                return messages, ids, append
            first = 1 if messages[0]["role"] == "system" else 0
            if len(messages) - first <= 1:
                raise QllamaError(f"the message needs {len(ids)} tokens, with {reserve} kept for the reply, but the "
                                  f"context holds {self.session.ctx}; shorten it or raise --ctx")
            end = first + 1     # a turn: one message and the replies that follow it, up to the next user message
            while end < len(messages) - 1 and messages[end]["role"] != "user":
                end += 1
            messages = messages[:first] + messages[end:]
            self.held_text = ""     # the cache no longer matches a prefix of the rendering
            self.dropped_turns += 1

    def say(self, text: str, max_tokens: int = DEFAULT_MAX_TOKENS, stop=(), **options) -> Iterator[str]:
        """Add a user message and return the stream of the reply's text pieces. Room is made (and
        `dropped_turns` set) at once, before the stream starts; the reply joins the messages however
        the stream ends (finished, interrupted or cancelled), as the text of the tokens the session ran."""
        reserve = max(1, min(max_tokens, self.session.ctx // 4))
        messages, ids, append = self.make_room(self.messages + [{"role": "user", "content": text}], reserve)
        self.messages = messages
        return self._reply(ids, append, self.format.render(messages), max_tokens=max_tokens,
                           stop=[*self.format.stop_strings, *stop], **options)

    def _reply(self, ids: list[int], append: bool, prompt_text: str, **generate) -> Iterator[str]:
        n_prompt = len(ids) + (self.session.n_past if append else 0)
        try:
            yield from generate_text(self.session, ids, append=append, **generate)
        finally:
            tokens = self.session.tokens
            if len(tokens) < n_prompt:      # stopped before the prompt ran: as if never said
                self.messages.pop()
                self.held_text = ""
            else:   # the session holds the prompt and every reply token it ran: the reply is their text
                reply = self.tokenizer.decode_after(tokens[:n_prompt], tokens[n_prompt:])
                self.messages.append({"role": "assistant", "content": reply})
                self.held_text = prompt_text + reply

    def clear(self) -> None:
        """Forget the conversation (the system message stays)."""
        self.messages = [m for m in self.messages if m["role"] == "system"]
        self.held_text = ""
        self.session.reset()

    def set_system(self, text: str) -> None:
        self.messages = [m for m in self.messages if m["role"] != "system"]
        if text:
            self.messages.insert(0, {"role": "system", "content": text})

    def save(self, path) -> None:
        path = Path(path)
        try:
            path.write_text(json.dumps({"messages": self.messages}, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        except OSError as e:
            raise QllamaError(f"{path}: cannot write ({e.strerror or e})") from None

    def load(self, path) -> None:
        """Replace the messages with a saved conversation (checked whole before anything changes)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise QllamaError(f"{path}: cannot read ({e.strerror or e})") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise QllamaError(f"{path}: not a saved conversation (bad JSON: {e})") from None
        if not isinstance(data, dict) or "messages" not in data:
            raise QllamaError(f"{path}: not a saved conversation (expected an object with 'messages')")
        self.messages = check_messages(data["messages"], str(path))
        self.held_text = ""     # the next turn renders it all and reuses whatever prefix matches
