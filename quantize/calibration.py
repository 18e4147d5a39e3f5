"""Input statistics from calibration text: H = E[x x^T] of every matrix's input.

Runs the float32 reference forward pass over the text in windows and accumulates, for every
matrix, the second moment of its inputs. Its diagonal (the mean squared activation of each input
column) is llama.cpp's imatrix; the whole matrix is what GPTQ needs (quantize/gptq.py).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..checkpoint import Checkpoint
from ..errors import QllamaError

WINDOW = 512
MAX_TOKENS = 16384  # enough for stable statistics; bounded so calibration stays quick


def input_moments(ckpt: Checkpoint, text_path: Path) -> dict[str, np.ndarray]:
    from ..model import Model
    if ckpt.tokenizer is None:
        raise QllamaError(f"{ckpt.path}: no tokenizer, so calibration text cannot be tokenized")
    try:
        text = text_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise QllamaError(f"{text_path}: cannot read calibration text ({e})") from None
    ids = ckpt.tokenizer.encode(text)[:MAX_TOKENS]
    if len(ids) < 2:
        raise QllamaError(f"{text_path}: calibration text is too short ({len(ids)} tokens)")
    model = Model(ckpt, ctx=min(WINDOW, ckpt.args.max_seq_len))
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}

    def observe(name, x):
        x64 = x.astype(np.float64)
        sums[name] = sums.get(name, 0.0) + x64.T @ x64
        counts[name] = counts.get(name, 0) + x.shape[0]

    for start in range(0, len(ids), model.ctx):
        model.forward(ids[start:start + model.ctx], 0, observe=observe)
    return {name: sums[name] / counts[name] for name in sums}
