"""Hugging Face folders with bad config.json values (wrong type, range, null, lists, huge, negative,
a rope_scaling of the wrong shape), files that are not UTF-8 or not JSON, and mismatched tokenizers."""
from __future__ import annotations

import json
from dataclasses import replace

from . import Case
from .sources import BIG_SPM_FILE, HF_TOKENIZED, HF_UNTIED, NOT_UTF8

CONFIG = json.loads((HF_UNTIED / "config.json").read_text())
REQUIRED = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
OPTIONAL = ("num_key_value_heads", "head_dim", "rms_norm_eps", "max_position_embeddings", "rope_theta")
BAD_NUMBERS = {"zero": 0, "negative": -1, "string": "64", "list": [64], "object": {"n": 64}, "true": True,
               "huge": 10 ** 30, "fraction": 1.5, "nan": float("nan")}
BAD_ROPE = {"list": [8.0], "string": "llama3", "number": 8, "type-a-number": {"rope_type": 5},
            "factor-string": {"rope_type": "linear", "factor": "2"}, "factor-zero": {"rope_type": "linear", "factor": 0},
            "factor-inf": {"rope_type": "linear", "factor": float("inf")},
            "original-string": {"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": "x"},
            "yarn": {"rope_type": "yarn", "factor": 4.0}}


def folder_case(name: str, files: dict, expect=("config.json",), source=HF_UNTIED, argv=("info", "model")) -> Case:
    """source's files, with `files` (relative name -> bytes or None to leave out) replacing them."""
    def make(_s):
        out = {f"model/{p.name}": p for p in source.iterdir() if p.name not in files}
        out.update({f"model/{k}": v for k, v in files.items() if v is not None})
        return out
    return Case(f"cfg-{name}", list(argv), expect, make)


def config(**changes) -> bytes:
    return json.dumps({**CONFIG, **changes}).encode()   # NaN and Infinity as JSON's common extension


def value_cases() -> list[Case]:
    out = []
    for key in REQUIRED:
        for label, value in {**BAD_NUMBERS, "null": None}.items():
            out.append(folder_case(f"{key}-{label}", {"config.json": config(**{key: value})}, ("config.json", key)))
    for key in OPTIONAL:
        for label, value in BAD_NUMBERS.items():
            if (key, label) != ("rope_theta", "fraction"):      # a base of 1.5 is odd but valid
                out.append(folder_case(f"{key}-{label}", {"config.json": config(**{key: value})}, ("config.json", key)))
    out.append(folder_case("num_hidden_layers-1e9", {"config.json": config(num_hidden_layers=10 ** 9)}))
    # claims the file's tensors contradict: refused naming the folder, before building 4000 layers' names
    out.append(folder_case("num_hidden_layers-4000", {"config.json": config(num_hidden_layers=4000)}, ("model:", "4000")))
    out.append(folder_case("num_hidden_layers-lying-few", {"config.json": config(num_hidden_layers=1)}, ("model:",)))
    out.append(folder_case("heads-not-multiple", {"config.json": config(num_key_value_heads=3)}))
    out.append(folder_case("head_dim-odd", {"config.json": config(head_dim=15)}))
    out.append(folder_case("tie-a-string", {"config.json": config(tie_word_embeddings="no")}))
    for label, value in BAD_ROPE.items():
        out.append(folder_case(f"rope_scaling-{label}", {"config.json": config(rope_parameters=None, rope_scaling=value)}))
        out.append(folder_case(f"rope_parameters-{label}", {"config.json": config(rope_parameters=value)}))
    for key, value in {"architectures": "LlamaForCausalLM", "model_type": ["llama"], "hidden_act": ["silu"],
                       "attention_bias": "yes", "sliding_window": 4096}.items():
        out.append(folder_case(f"{key}-bad", {"config.json": config(**{key: value})}, ("config.json", key)))
    return out


def file_cases() -> list[Case]:
    return [
        folder_case("config-not-utf8", {"config.json": NOT_UTF8}),
        folder_case("config-not-json", {"config.json": b"{hidden_size: 64"}),
        folder_case("config-empty", {"config.json": b""}),
        folder_case("config-a-list", {"config.json": b"[]"}),
        folder_case("config-missing", {"config.json": None}),
        folder_case("config-a-folder", {"config.json": None, "config.json/x": b"{}"}),
        folder_case("no-weights", {"model.safetensors": None}, ("model",)),
        folder_case("chat-template-not-utf8", {"chat_template.jinja": b"{{ 'caf\xe9' }}"}, ("chat_template.jinja",)),
        folder_case("tokenizer-config-not-utf8", {"tokenizer_config.json": NOT_UTF8}, ("tokenizer_config.json",),
                    source=HF_TOKENIZED),
        replace(folder_case("chat-templates-named-by-lists", {"tokenizer_config.json": b'{"chat_template": [{"name": '
                            b'["default"], "template": "x"}]}'}, ("tokenizer_config.json",), source=HF_TOKENIZED),
                must_fail=False),     # no template named "default": the model has none
        folder_case("tokenizer-config-a-list", {"tokenizer_config.json": b"[1]"}, ("tokenizer_config.json",),
                    source=HF_TOKENIZED),
        folder_case("tokenizer-json-not-utf8", {"tokenizer.json": NOT_UTF8}, ("tokenizer.json",), source=HF_TOKENIZED),
        folder_case("tokenizer-json-truncated", {"tokenizer.json": (HF_TOKENIZED / "tokenizer.json").read_bytes()[:500]},
                    ("tokenizer.json",), source=HF_TOKENIZED),
        folder_case("tokenizer-too-big", {"tokenizer.json": None, "tokenizer.model": BIG_SPM_FILE},
                    ("model:", "32000"), source=HF_TOKENIZED),
        folder_case("generation-config-not-utf8", {"generation_config.json": NOT_UTF8}, ("generation_config.json",),
                    source=HF_TOKENIZED),
        folder_case("option-tokenizer-missing", {}, ("nope.json",), argv=("info", "model", "--tokenizer", "nope.json")),
        folder_case("option-tokenizer-a-folder", {}, ("model",), argv=("info", "model", "--tokenizer", "model")),
    ]


def cases() -> list[Case]:
    return value_cases() + file_cases()
