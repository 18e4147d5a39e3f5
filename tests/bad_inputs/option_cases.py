"""Option values people mistype, on the good stories260K model: NaN and out-of-range numbers,
huge contexts, missing or unreadable files, a FIFO, prompts and text files that are not UTF-8."""
from __future__ import annotations

from . import Case
from .sources import GGUF_FILE, LLAMA2C_FILE, NOT_UTF8

MODEL = str(LLAMA2C_FILE)


def run_case(name: str, options: list[str], expect: tuple[str, ...], files=None, prompt="Once") -> Case:
    return Case(f"opt-{name}", ["run", prompt, "-m", MODEL, *options], expect, lambda _s: dict(files or {}))


def cases() -> list[Case]:
    bad_numbers = {
        "--temperature": ["nan", "-1", "inf", "x"], "--top-p": ["nan", "0", "1.5"], "--min-p": ["nan", "-0.1"],
        "--top-k": ["-1", "1.5"], "--repeat-penalty": ["nan", "0", "inf"], "--repeat-last-n": ["-1"],
        "--seed": ["-1", str(1 << 70), "x"], "--max-tokens": ["-5"], "--ctx": ["0", "-1", "1000000000", "nan"],
        "--threads": ["0"], "--kv-cache": ["f8"],
    }
    out = [run_case(f"{option[2:]}-{value}", [option, value], (option,))
           for option, values in bad_numbers.items() for value in values]
    out += [
        run_case("tokenizer-missing", ["--tokenizer", "nope.model"], ("nope.model",)),
        run_case("tokenizer-a-folder", ["--tokenizer", "."], ("--tokenizer",)),
        run_case("tokenizer-not-utf8-json", ["--tokenizer", "t.json"], ("t.json",), {"t.json": NOT_UTF8}),
        run_case("template-not-utf8", ["--template", "t.jinja"], ("t.jinja",), {"t.jinja": b"{{ '\xe9' }}"}),
        run_case("template-broken-jinja", ["--template", "t.jinja"], ("t.jinja",), {"t.jinja": b"{% for %}"}),
        run_case("template-unknown-name", ["--template", "nope"], ("nope",)),
        run_case("prompt-not-utf8", [], ("PROMPT",), prompt="caf\udce9"),
        run_case("prompt-too-long", ["--ctx", "4"], ("context",), prompt="Once upon a time there was a cat"),
        run_case("system-with-raw", ["--raw", "--system", "be nice"], ("--system",)),
        Case("opt-model-missing", ["run", "Once", "-m", "nope.gguf"], ("nope.gguf",), lambda _s: {}),
        Case("opt-model-dev-zero", ["info", "/dev/zero"], ("/dev/zero",), lambda _s: {}),
        Case("opt-model-unknown-suffix", ["info", "m.pt"], ("m.pt",), lambda _s: {"m.pt": b"\x80\x04K."}),
        Case("opt-model-empty-gguf", ["info", "m.gguf"], ("m.gguf",), lambda _s: {"m.gguf": b""}),
        Case("opt-gguf-tokenizer-missing", ["run", "Once", "-m", str(GGUF_FILE), "--tokenizer", "nope.model"],
             ("nope.model",), lambda _s: {}),
        Case("opt-perplexity-text-missing", ["perplexity", "nope.txt", "-m", MODEL], ("nope.txt",), lambda _s: {}),
        Case("opt-perplexity-text-not-utf8", ["perplexity", "t.txt", "-m", MODEL], ("t.txt",),
             lambda _s: {"t.txt": b"caf\xe9 " * 100}),
        Case("opt-perplexity-text-empty", ["perplexity", "t.txt", "-m", MODEL], ("t.txt",), lambda _s: {"t.txt": b""}),
        Case("opt-perplexity-text-a-folder", ["perplexity", ".", "-m", MODEL], (".",), lambda _s: {}),
        Case("opt-quantize-calibration-empty", ["quantize", MODEL, "o.safetensors", "--format", "q8",
                                                "--calibration", "c.txt"], ("c.txt",), lambda _s: {"c.txt": b""}),
        Case("opt-perplexity-ctx-1", ["perplexity", "t.txt", "-m", MODEL, "--ctx", "1"], ("--ctx",),
             lambda _s: {"t.txt": b"Once upon a time. " * 50}),
        Case("opt-quantize-format-unknown", ["quantize", MODEL, "out.safetensors", "--format", "q3"], ("q3",),
             lambda _s: {}),
        Case("opt-quantize-group-size", ["quantize", MODEL, "out.safetensors", "--format", "q4", "--group-size", "7"],
             ("--group-size",), lambda _s: {}),
        Case("opt-quantize-output-exists", ["quantize", MODEL, "out.safetensors", "--format", "q8"],
             ("out.safetensors",), lambda _s: {"out.safetensors": b"keep me"}),
        Case("opt-quantize-over-its-input", ["quantize", "m.gguf", "./m.gguf", "--format", "q8_0", "--force"],
             ("m.gguf", "source"), lambda _s: {"m.gguf": GGUF_FILE}),
        Case("opt-quantize-output-suffix", ["quantize", "in.bin", "in.bin", "--format", "q8", "--force"],
             ("in.bin", "suffix"), lambda _s: {"in.bin": LLAMA2C_FILE, "tok512.model": LLAMA2C_FILE.parent / "tok512.model"}),
        Case("opt-quantize-output-folder-missing", ["quantize", MODEL, "no/such/out.safetensors", "--format", "q8"],
             ("no/such",), lambda _s: {}),
        Case("opt-quantize-calibration-missing", ["quantize", MODEL, "o.safetensors", "--format", "q8",
                                                  "--calibration", "nope.txt"], ("nope.txt",), lambda _s: {}),
        Case("opt-quantize-calibration-not-utf8", ["quantize", MODEL, "o.safetensors", "--format", "q8",
                                                   "--calibration", "c.txt"], ("c.txt",),
             lambda _s: {"c.txt": b"caf\xe9 " * 100}),
        Case("opt-quantize-embeddings-format", ["quantize", MODEL, "o.safetensors", "--format", "q8",
                                                "--embeddings-format", "zz"], ("zz",), lambda _s: {}),
        Case("opt-serve-port", ["serve", "-m", MODEL, "--port", "70000"], ("--port",), lambda _s: {}),
        Case("opt-serve-parallel", ["serve", "-m", MODEL, "--parallel", "0"], ("--parallel",), lambda _s: {}),
    ]
    return out
