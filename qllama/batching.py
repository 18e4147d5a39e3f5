"""Continuous batching: up to `slots` requests decode together, their next tokens in ONE forward pass.

Decode is memory-bound (each step reads every weight once), so a step for four sequences costs
little more than a step for one. One thread runs the loop; each turn it
  1. admits waiting requests (first come, first served) into free slots, each slot a Session that
     keeps its last sequence, so a request sharing a prefix with it (a chat's earlier turns) runs
     only the rest, as llama.cpp's server does;
  2. runs ONE prefill chunk of one newcomer (a long prompt never stalls the others for long);
  3. samples a token for every slot whose logits are ready and runs them all in one pass
     (Model.decode_batch). A finished, cancelled or failed request leaves its slot at once.
Each request gets its text through callbacks, called on the loop's thread.
"""
from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .generate import TextStream
from .sampling import SamplingParams, make_picker
from .session import PREFILL_CHUNK


@dataclass
class Request:
    ids: list[int]                          # the whole prompt
    max_tokens: int
    params: SamplingParams
    on_piece: Callable[[str], None]         # each piece of text, as soon as it is complete
    on_done: Callable[["Request"], None]    # once, at the end: finish_reason (or error) is set
    stop: Sequence[str] = ()
    cancel: threading.Event = field(default_factory=threading.Event)
    # how it went
    finish_reason: str | None = None        # "stop", "length" or "cancelled"
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # the loop's state
    session: object = None
    pending: list[int] = field(default_factory=list)   # prompt tokens still to prefill
    logits: np.ndarray | None = None        # the next token's, once the prompt has run
    text: TextStream | None = None
    pick: Callable | None = None


class Scheduler:
    def __init__(self, model, slots: int = 4, ctx: int | None = None):
        self.model = model
        self.free = [model.new_session(ctx) for _ in range(slots)]   # KV memory comes as it is written
        self.ctx = self.free[0].ctx
        self.stop_ids = model.tokenizer.stop_ids if model.tokenizer is not None else frozenset()
        self.waiting: collections.deque[Request] = collections.deque()
        self.active: list[Request] = []
        self.changed = threading.Condition()
        self.closed = False
        self.steps = 0                      # decode passes run (a test counts batching with it)
        self.thread = threading.Thread(target=self._loop, name="qllama-batching", daemon=True)
        self.thread.start()

    def submit(self, request: Request) -> Request:
        request.prompt_tokens = len(request.ids)
        with self.changed:
            self.waiting.append(request)
            self.changed.notify()
        return request

    def wake(self) -> None:
        """Have the loop look again (after a request's cancel was set while it waited)."""
        with self.changed:
            self.changed.notify()

    def close(self) -> None:
        with self.changed:
            self.closed = True
            self.changed.notify()
        self.thread.join()

    # -- the loop ------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self.changed:
                while not self.closed and not self.active and not self.waiting:
                    self.changed.wait()
                if self.closed:
                    return
                self._admit()
            try:
                self._prefill_one_chunk()
                self._decode_step()
            except Exception as e:          # a failed pass ends the requests in it, not the server
                for r in list(self.active):
                    self._finish(r, error=f"{type(e).__name__}: {e}")

    def _admit(self) -> None:
        for r in [r for r in self.waiting if r.cancel.is_set()]:
            self.waiting.remove(r)
            r.finish_reason = "cancelled"
            r.on_done(r)
        while self.waiting and self.free:
            r = self.waiting.popleft()
            r.session = self.free.pop()
            common = 0      # the longest prefix the slot's cache holds, less at least the last token
            limit = min(len(r.session.tokens), len(r.ids) - 1)
            while common < limit and r.session.tokens[common] == r.ids[common]:
                common += 1
            r.session.truncate(common)
            r.pending = r.ids[common:]
            r.pick = make_picker(r.params)
            self.active.append(r)

    def _prefill_one_chunk(self) -> None:
        r = next((r for r in self.active if r.pending), None)
        if r is None:
            return
        if r.cancel.is_set():
            return self._finish(r, "cancelled")
        chunk, r.pending = r.pending[:PREFILL_CHUNK], r.pending[PREFILL_CHUNK:]
        logits = r.session.forward(chunk, r.session.n_past, last_only=True)
        if not r.pending:
            r.logits = logits[-1]
            r.text = TextStream(self.model.tokenizer, r.session.tokens, r.stop)

    def _decode_step(self) -> None:
        running, tokens = [], []
        for r in [r for r in self.active if r.logits is not None]:
            token = self._next_token(r)
            if token is not None:
                running.append(r)
                tokens.append(token)
        if running:
            logits = self.model.decode_batch([r.session for r in running], tokens)
            self.steps += 1
            for r, row in zip(running, logits):
                r.logits = row

    def _next_token(self, r: Request) -> int | None:
        """Sample r's next token and emit its text; None when r is done (and finished)."""
        if r.cancel.is_set():
            return self._finish(r, "cancelled")
        token = r.pick(r.logits, r.session.tokens)
        if token in self.stop_ids:
            return self._finish(r, "stop")
        if r.session.n_past >= r.session.ctx:
            return self._finish(r, "length")
        r.completion_tokens += 1
        piece = r.text.add(token)
        if piece:
            r.on_piece(piece)
        if r.text.stopped:
            return self._finish(r, "stop")
        if r.completion_tokens >= r.max_tokens:
            return self._finish(r, "length")
        return token

    def _finish(self, r: Request, reason: str | None = None, error: str | None = None) -> None:
        if r.text is not None and error is None:
            rest = r.text.finish()
            if rest:
                r.on_piece(rest)
        r.finish_reason, r.error = reason, error
        self.active.remove(r)
        r.logits = None
        if error is not None:
            r.session.reset()           # its cache may be half written
        self.free.append(r.session)
        r.on_done(r)
        return None
