"""Generation: prefill the prompt once, then decode token by token; text streamed with stop strings.

`generate_tokens` is a generator of token ids (mlx-lm's shape); `generate_text` turns it into text
pieces, holding back only what could still become a stop string, so a stop string never leaks.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
import time
from dataclasses import fields

import numpy as np

from .errors import QllamaError
from .sampling import SamplingParams, make_picker
from .session import Session, Timings

DEFAULT_MAX_TOKENS = 256


def encode_prompt(session, prompt) -> list[int]:
    if isinstance(prompt, str):
        if session.tokenizer is None:
            raise QllamaError(f"{session.model.checkpoint.path}: the model has no tokenizer; pass token ids")
        return session.tokenizer.encode(prompt)
    return [int(t) for t in prompt]


def as_session(target) -> Session:
    """A Session, or a Model's default session."""
    return target if isinstance(target, Session) else target.session


def generate_tokens(target, prompt, max_tokens: int = DEFAULT_MAX_TOKENS, stop_ids=None,
                    params: SamplingParams | None = None, append: bool = False, cancel=None,
                    **sampling) -> Iterator[int]:
    """Yield sampled token ids after `prompt` (text or ids) until a stop id, max_tokens or the context end.

    target: a Session or a Model (its default session). The prompt is the whole sequence, of which
    only what follows the cached prefix runs; with append=True it comes after what the session holds.
    Sampling options come as a SamplingParams or as its fields by keyword (temperature=0, seed=1, ...).
    cancel: anything with is_set() (a threading.Event): checked before each token; when set,
    generation ends with what it has.
    On return, session.finish_reason is "stop" (a stop id), "length" (max_tokens), "context" (the
    context is full) or "cancelled".
    """
    params = params or SamplingParams(**{f.name: sampling.pop(f.name) for f in fields(SamplingParams) if f.name in sampling})
    if sampling:
        raise TypeError(f"unknown generate() options: {', '.join(sampling)}")
    session = as_session(target)
    ids = encode_prompt(session, prompt)
    if not ids:
        raise QllamaError("the prompt is empty (and the model adds no BOS token)")
    total = len(ids) + (session.n_past if append else 0)
    if total >= session.ctx:
        raise QllamaError(f"the prompt has {total} tokens but the context holds {session.ctx}; "
                          f"shorten it or raise --ctx")
    if stop_ids is None:
        stop_ids = session.tokenizer.stop_ids if session.tokenizer is not None else ()
    pick = make_picker(params)
    timings = session.timings = Timings()
    start = time.perf_counter()
    logits = session.append(ids, cancel) if append else session.prefill(ids, cancel)
    timings.prefill_tokens, timings.prefill_s = session.last_prefill, time.perf_counter() - start
    session.finish_reason = "length" if logits is not None else "cancelled"
    history = session.tokens            # grows as each token runs (the repeat penalty's window)
    for _ in range(max_tokens if logits is not None else 0):
        if cancel is not None and cancel.is_set():
            session.finish_reason = "cancelled"
            return
        start = time.perf_counter()
        token = pick(logits, history)
        timings.decode_s += time.perf_counter() - start
        if token in stop_ids:
            session.finish_reason = "stop"
            return
        if session.n_past >= session.ctx:   # no room to run it: every token yielded is one the session holds
            session.finish_reason = "context"
            return
        timings.decode_tokens += 1
        yield token
        start = time.perf_counter()
        logits = session.forward(np.array([token]), session.n_past)[-1]   # the session now holds it
        timings.decode_s += time.perf_counter() - start


def hold_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of text that is a proper prefix of a stop string."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest


class TextStream:
    """Token ids in, text out: exactly what decoding adds after the context, holding back only what
    could still become one of the stop strings; a stop string and what follows never come out."""

    def __init__(self, tokenizer, context=(), stop: Sequence[str] = ()):
        self.decoder = tokenizer.stream(context=context)
        self.stops = [s for s in stop if s]
        self.pending = ""
        self.stopped = False            # a stop string was found: add() gives nothing more

    def add(self, token: int) -> str:
        """The text now certain to come out (may be "")."""
        if self.stopped:
            return ""
        self.pending += self.decoder.add(token)
        return self._release(final=False)

    def finish(self) -> str:
        """What was held back, at the end of generation."""
        if not self.stopped:
            self.pending += self.decoder.flush()
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            out, self.pending = self.pending[:min(hits)], ""
            return out
        keep = 0 if final else hold_back(self.pending, self.stops)
        out, self.pending = self.pending[:len(self.pending) - keep], self.pending[len(self.pending) - keep:]
        return out


class TextIterator:
    """The text pieces of a generation as they come (each complete text: never half a UTF-8
    character; never a stop string). Once exhausted, finish_reason, prompt_tokens and
    completion_tokens say how it ended. generate: generate_tokens' options."""

    def __init__(self, session, prompt, stop: Sequence[str] = (), **generate):
        self.session = session
        ids = encode_prompt(session, prompt)
        self.prompt_tokens = len(ids)
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self._pieces = self._run(ids, stop, generate)

    def __iter__(self) -> Iterator[str]:
        return self._pieces

    def __next__(self) -> str:
        return next(self._pieces)

    def _run(self, ids, stop, generate) -> Iterator[str]:
        session, text = self.session, None
        tokens = generate_tokens(session, ids, **generate)
        for token in tokens:
            self.completion_tokens += 1
            if text is None:        # the session holds the context now, and not yet this token
                text = TextStream(session.tokenizer, session.tokens, stop)
            piece = text.add(token)
            if piece:
                yield piece
            if text.stopped:
                tokens.close()
                self.finish_reason = "stop"
                return
        rest = text.finish() if text is not None else ""
        if rest:
            yield rest
        self.finish_reason = {"context": "length"}.get(session.finish_reason, session.finish_reason)


def generate_text(target, prompt, stop: Sequence[str] = (), **kwargs) -> TextIterator:
    """Text pieces as they are generated, stopping before any of the `stop` strings. The pieces are
    exactly what decoding the whole sequence adds to the decoded context, so a SentencePiece word
    keeps its leading space after the prompt."""
    return TextIterator(as_session(target), prompt, stop, **kwargs)
