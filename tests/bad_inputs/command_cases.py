"""The same kinds of bad file through every command that opens a model (quantize to both outputs,
serve, bench, perplexity, chat): each refuses it before doing anything, and writes nothing."""
from __future__ import annotations

from . import Case
from .sources import GGUF_FILE, LLAMA2C_FILE
from .weight_cases import gguf_with

TRUNCATED = lambda _s: {"m.gguf": GGUF_FILE.read_bytes()[:600_000]}
NAN = lambda _s: {"m.gguf": gguf_with(float("nan"))}
TEXT = {"t.txt": b"Once upon a time there was a cat. " * 40}


def cases() -> list[Case]:
    out = []
    for label, files in (("truncated", TRUNCATED), ("nan", NAN)):
        out += [
            Case(f"cmd-quantize-{label}", ["quantize", "m.gguf", "o.safetensors", "--format", "q8"], ("m.gguf",), files),
            Case(f"cmd-export-{label}", ["quantize", "m.gguf", "o.gguf", "--format", "q8_0"], ("m.gguf",), files),
            Case(f"cmd-serve-{label}", ["serve", "-m", "m.gguf", "--port", "0"], ("m.gguf",), files),
            Case(f"cmd-bench-{label}", ["bench", "-m", "m.gguf", "--decode-tokens", "1"], ("m.gguf",), files),
            Case(f"cmd-perplexity-{label}", ["perplexity", "t.txt", "-m", "m.gguf"], ("m.gguf",),
                 lambda s, f=files: {**f(s), **TEXT}),
            Case(f"cmd-perplexity-reference-{label}", ["perplexity", "t.txt", "-m", str(LLAMA2C_FILE), "--reference",
                                                       "m.gguf"], ("m.gguf",), lambda s, f=files: {**f(s), **TEXT}),
            Case(f"cmd-chat-{label}", ["chat", "-m", "m.gguf"], ("m.gguf",), files),
        ]
    return out
