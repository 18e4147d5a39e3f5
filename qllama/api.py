"""The Python API for apps that embed a model: complete, stream, chat, tokenize (see docs/api.md).

`Model` carries these methods. Each generation runs on a session: the model's default one unless a
`session=` is given. A session belongs to one thread at a time; several threads may generate on one
model at once, each in its own session (Model.new_session()): the forward passes take turns on the
model's lock, so no KV cache is shared and no Numba kernel is entered by two threads at once.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

from .chat_format import ChatFormat
from .errors import QllamaError
from .generate import DEFAULT_MAX_TOKENS, TextIterator, as_session
from .sampling import SamplingParams

SAMPLING_FIELDS = {f.name for f in fields(SamplingParams)}


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str      # "stop" (a stop token or string), "length" (max_tokens or the context end), "cancelled"
    prompt_tokens: int
    completion_tokens: int


class TextAPI:
    """What Model offers an app besides logits: text in, text out."""

    def tokenize(self, text: str, add_bos: bool | None = None, special: bool = False) -> list[int]:
        """Text -> token ids (BOS first when the model's tokenizer adds it; special=True parses
        special tokens such as <|im_start|> written in the text)."""
        return self._tokenizer().encode(text, add_bos=add_bos, parse_special=special)

    def detokenize(self, ids) -> str:
        return self._tokenizer().decode(ids)

    def stream(self, prompt, max_tokens: int = DEFAULT_MAX_TOKENS, stop: Sequence[str] = (), cancel=None,
               session=None, **sampling) -> TextIterator:
        """The continuation of prompt (text, or token ids) as text pieces. Sampling options by
        keyword (temperature=0, top_p=0.9, seed=1, ...: qllama.sampling.SamplingParams).
        cancel: a threading.Event (anything with is_set()); setting it, from any thread, ends the
        generation within one token (or one prefill chunk), keeping what was generated."""
        session = session or as_session(self)
        ids = self._tokenizer().encode(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
        return TextIterator(session, ids, stop, max_tokens=max_tokens, params=sampling_params(sampling), cancel=cancel)

    def complete(self, prompt, **options) -> Completion:
        """The continuation of prompt, whole: text, finish reason and token counts (options as stream())."""
        return finished(self.stream(prompt, **options))

    def chat(self, messages: list[dict], stream: bool = False, template: str | None = None, **options):
        """The assistant's reply to messages ([{"role": ..., "content": ...}]) in the model's chat
        template (or `template`, a built-in name or Jinja text): a Completion, or with stream=True a
        TextIterator. The session reuses the longest prefix it already holds (the earlier turns)."""
        chat_format = ChatFormat(self, template)
        options["stop"] = [*chat_format.stop_strings, *options.get("stop", ())]
        pieces = self.stream(chat_format.prompt_ids(messages), **options)
        return pieces if stream else finished(pieces)

    def close(self) -> None:
        """Free the weights and the default session's KV cache; the model cannot run afterwards."""
        self.weights.clear()
        self._session = None
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _tokenizer(self):
        if self.tokenizer is None:
            raise QllamaError(f"{self.checkpoint.path}: the model has no tokenizer; pass token ids")
        return self.tokenizer


def sampling_params(options: dict) -> SamplingParams:
    unknown = set(options) - SAMPLING_FIELDS
    if unknown:
        raise TypeError(f"unknown sampling options: {', '.join(sorted(unknown))}")
    return SamplingParams(**options)


def finished(pieces: TextIterator) -> Completion:
    text = "".join(pieces)
    return Completion(text, pieces.finish_reason, pieces.prompt_tokens, pieces.completion_tokens)
