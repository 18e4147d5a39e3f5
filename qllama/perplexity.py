"""Perplexity of a model on a text, and its KL divergence from a reference model.

Follows llama.cpp's perplexity tool (tools/perplexity/perplexity.cpp, `perplexity()` and
`kl_divergence()`), so numbers are comparable:
- the text is read as the file's bytes less one trailing newline (common/arg.cpp `-f`), and
  tokenized once, whole, with the model's tokenizer (BOS first when the tokenizer adds one);
- it is cut into non-overlapping windows of `ctx` tokens; each window runs from position 0 with
  an empty cache, its first token replaced by BOS when the tokenizer adds BOS;
- only the second half of each window is scored (`first = n_ctx/2`): the logits at positions
  first..n-2 predict the tokens at first+1..n-1, so every scored token has at least ctx/2
  tokens of context and a full window scores ctx - ctx/2 - 1 tokens;
- perplexity = exp(mean NLL), its standard error ppl * SE(mean NLL); KL(p_ref || p_model) per
  scored position and the share of positions whose argmax tokens agree, each with the standard
  error of its mean (`mean_and_uncertainty`, and sqrt(p(1-p)/(n-1)) for the agreement).
Two differences, both on purpose: llama.cpp drops a final partial window and asks for at least
2*ctx tokens; here one window is enough, and a final partial window is scored too when it reaches
past the context half (at least ctx/2 + 2 tokens; shorter, it is dropped), with the same rule
(positions from ctx/2 on). And llama.cpp keeps the reference's log-probabilities as 16-bit
numbers and skips p < e^-16; here both log-softmaxes are exact, in float64.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import QllamaError
from .progress import show_count

DEFAULT_CTX = 512  # llama.cpp's perplexity default (-c 512); less when the model's context is shorter


@dataclass(frozen=True)
class PerplexityResult:
    ppl: float                      # exp(mean NLL) of the model over the scored tokens
    ppl_se: float                   # its standard error, ppl * SE(mean NLL)
    n_tokens: int                   # scored tokens (positions)
    n_windows: int                  # windows run
    ctx: int                        # window length in tokens
    ref_ppl: float | None = None    # the reference model's perplexity on the same tokens
    ref_ppl_se: float | None = None
    kl: float | None = None         # mean KL(p_ref || p_model) per position, in nats
    kl_se: float | None = None
    top1: float | None = None       # share of positions where both models' argmax tokens agree
    top1_se: float | None = None


def read_text(path) -> str:
    """A UTF-8 text file's text, less one trailing newline (as llama.cpp's -f); QllamaError if unusable."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise QllamaError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise QllamaError(f"{path}: is a folder, not a text file") from None
    except OSError as e:
        raise QllamaError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise QllamaError(f"{path}: not UTF-8 text (bad byte at offset {e.start})") from None
    if not text.strip():
        raise QllamaError(f"{path}: the text file is empty")
    return text[:-1] if text.endswith("\n") else text


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """(n, vocab) logits -> float64 log-probabilities, stable (max subtracted first)."""
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def split_windows(tokens: list[int], ctx: int, bos_id: int | None) -> list[np.ndarray]:
    """Non-overlapping windows of ctx tokens, each starting with bos_id when given (llama.cpp's chunks).

    A final partial window is kept when it scores at least one token (ctx//2 + 2 tokens or more).
    """
    first = ctx // 2
    windows = []
    for start in range(0, len(tokens), ctx):
        window = np.array(tokens[start:start + ctx], dtype=np.int64)
        if len(window) < first + 2:
            break  # only the final window can be this short
        if bos_id is not None:
            window[0] = bos_id
        windows.append(window)
    return windows


def window_logprobs(model, window: np.ndarray, first: int) -> np.ndarray:
    """float64 log-probs (n - 1 - first, vocab) at positions first..n-2 of one window run from position 0."""
    return log_softmax(model.logits(window)[first:len(window) - 1])


def mean_se(x: np.ndarray) -> tuple[float, float]:
    """Mean and the standard error of the mean (nan for fewer than 2 values)."""
    n = len(x)
    se = float(x.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return float(x.mean()), se


def _check_pair(model, reference, text: str, tokens: list[int], ctx: int) -> None:
    if reference.args.vocab_size != model.args.vocab_size:
        raise QllamaError(f"the models do not share a vocabulary: {model.args.vocab_size} tokens "
                          f"vs {reference.args.vocab_size} in the reference")
    if reference.tokenizer is None or reference.tokenizer.encode(text) != tokens:
        raise QllamaError("the models do not share a tokenizer: the reference tokenizes the text differently")
    if ctx > reference.ctx:
        raise QllamaError(f"--ctx {ctx} is larger than the reference model's context of {reference.ctx} tokens")


def perplexity(model, text: str, ctx: int | None = None, reference=None,
               progress: Callable[[int, int], None] | None = None) -> PerplexityResult:
    """Perplexity of `model` on `text` in windows of ctx tokens (default 512, at most the model's context).

    With `reference` (a Model sharing the tokenizer, e.g. the unquantized one), also the mean
    KL(p_ref || p_model) per scored position and the share of positions whose argmax tokens agree.
    `progress(i, n)` is called after window i of n. Windowing and scoring: see the module docstring.
    """
    tok = model.tokenizer
    if tok is None:
        raise QllamaError(f"{model.checkpoint.path}: no tokenizer found; name one with --tokenizer")
    ctx = ctx or min(DEFAULT_CTX, model.ctx)
    if ctx < 3:
        raise QllamaError(f"--ctx {ctx} is too small: a window needs at least 3 tokens (its first half is context)")
    if ctx > model.ctx:
        raise QllamaError(f"--ctx {ctx} is larger than the model's context of {model.ctx} tokens")
    tokens = tok.encode(text)
    if len(tokens) < ctx:
        hint = f"use --ctx {len(tokens)} or less" if len(tokens) >= 3 else "use a longer text"
        raise QllamaError(f"the text has {len(tokens)} tokens, fewer than one window of {ctx}; {hint}")
    if reference is not None:
        _check_pair(model, reference, text, tokens, ctx)

    first = ctx // 2
    windows = split_windows(tokens, ctx, tok.bos_id if tok.add_bos else None)
    nll, ref_nll, kl, agree = [], [], [], []
    for i, window in enumerate(windows):
        targets = window[first + 1:]                        # the tokens the scored positions predict
        rows = np.arange(len(targets))
        logp = window_logprobs(model, window, first)        # (len(targets), vocab)
        nll.append(-logp[rows, targets])
        if reference is not None:
            ref_logp = window_logprobs(reference, window, first)
            ref_nll.append(-ref_logp[rows, targets])
            kl.append((np.exp(ref_logp) * (ref_logp - logp)).sum(axis=-1))
            agree.append(logp.argmax(axis=-1) == ref_logp.argmax(axis=-1))
        if progress is not None:
            progress(i + 1, len(windows))

    mean_nll, se_nll = mean_se(np.concatenate(nll))
    ppl = math.exp(mean_nll)
    result = PerplexityResult(ppl, ppl * se_nll, sum(map(len, nll)), len(windows), ctx)
    if reference is None:
        return result
    mean_ref, se_ref = mean_se(np.concatenate(ref_nll))
    mean_kl, se_kl = mean_se(np.concatenate(kl))
    n = result.n_tokens
    top1 = float(np.concatenate(agree).mean())
    top1_se = math.sqrt(top1 * (1 - top1) / (n - 1)) if n > 1 else math.nan
    return PerplexityResult(ppl, ppl * se_nll, n, len(windows), ctx, math.exp(mean_ref), math.exp(mean_ref) * se_ref,
                            mean_kl, se_kl, top1, top1_se)


def print_progress(i: int, n: int) -> None:
    """`window i/n` on stderr: rewritten in place on a terminal, the last one only in a log."""
    show_count("window", i, n)


def format_report(r: PerplexityResult) -> str:
    """A few lines for people: perplexity ± SE, what was scored, and the comparison with a reference."""
    lines = [f"perplexity:      {r.ppl:.4f} ± {r.ppl_se:.4f}",
             f"scored:          {r.n_tokens:,} tokens in {r.n_windows} windows of {r.ctx} "
             f"(the first {r.ctx // 2} tokens of each are context)"]
    if r.kl is not None:
        lines += [f"reference ppl:   {r.ref_ppl:.4f} ± {r.ref_ppl_se:.4f}",
                  f"KL(ref||model):  {r.kl:.6f} ± {r.kl_se:.6f} nats per token",
                  f"same top token:  {100 * r.top1:.3f} ± {100 * r.top1_se:.3f} %"]
    return "\n".join(lines)
