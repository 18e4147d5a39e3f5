"""Generation: prefill the prompt once, then decode token by token; text streamed with stop strings.

`generate_tokens` is a generator of token ids (mlx-lm's shape); `generate_text` turns it into text
pieces, holding back only what could still become a stop string, so a stop string never leaks.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import fields

import numpy as np

from .errors import QllamaError
from .sampling import SamplingParams, apply_repeat_penalty, make_sampler

DEFAULT_MAX_TOKENS = 256


def encode_prompt(model, prompt) -> list[int]:
    if isinstance(prompt, str):
        if model.tokenizer is None:
            raise QllamaError(f"{model.checkpoint.path}: the model has no tokenizer; pass token ids")
        return model.tokenizer.encode(prompt)
    return [int(t) for t in prompt]


def generate_tokens(model, prompt, max_tokens: int = DEFAULT_MAX_TOKENS, stop_ids=None,
                    params: SamplingParams | None = None, **sampling) -> Iterator[int]:
    """Yield sampled token ids after `prompt` (text or ids) until a stop id, max_tokens or the context end.

    Sampling options come as a SamplingParams or as its fields by keyword (temperature=0, seed=1, ...).
    """
    params = params or SamplingParams(**{f.name: sampling.pop(f.name) for f in fields(SamplingParams) if f.name in sampling})
    if sampling:
        raise TypeError(f"unknown generate() options: {', '.join(sampling)}")
    ids = encode_prompt(model, prompt)
    if not ids:
        raise QllamaError("the prompt is empty (and the model adds no BOS token)")
    if len(ids) >= model.ctx:
        raise QllamaError(f"the prompt has {len(ids)} tokens but the context holds {model.ctx}; "
                          f"shorten it or raise --ctx")
    if stop_ids is None:
        stop_ids = model.tokenizer.stop_ids if model.tokenizer is not None else ()
    sample = make_sampler(params)
    history = list(ids)
    logits = model.prefill(ids)
    for _ in range(max_tokens):
        logits = apply_repeat_penalty(logits, history[-params.repeat_last_n:], params.repeat_penalty)
        token = sample(logits)
        if token in stop_ids:
            return
        yield token
        history.append(token)
        if len(history) >= model.ctx:
            return  # context full: stop rather than run past it
        logits = model.forward(np.array([token]), len(history) - 1)[-1]


def hold_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of text that is a proper prefix of a stop string."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest


def generate_text(model, prompt, stop: Sequence[str] = (), **kwargs) -> Iterator[str]:
    """Yield text pieces as they are generated; stops before any of the `stop` strings."""
    stream = model.tokenizer.stream()
    pending = ""
    stops = [s for s in stop if s]
    for token in generate_tokens(model, prompt, **kwargs):
        pending += stream.add(token)
        hits = [i for i in (pending.find(s) for s in stops) if i >= 0]
        if hits:
            if min(hits):
                yield pending[:min(hits)]
            return
        keep = hold_back(pending, stops)
        if len(pending) > keep:
            yield pending[:len(pending) - keep]
            pending = pending[len(pending) - keep:]
    pending += stream.flush()
    hits = [i for i in (pending.find(s) for s in stops) if i >= 0]
    pending = pending[:min(hits)] if hits else pending
    if pending:
        yield pending
