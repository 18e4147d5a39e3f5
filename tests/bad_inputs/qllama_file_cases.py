"""Malformed qllama .safetensors files (stories260K quantized to q8 by `qllama quantize`): bad
metadata (ModelArgs, per-tensor formats, tokenizer), missing or misshapen quant planes, truncations."""
from __future__ import annotations

import json
from dataclasses import replace

from . import Case, Sources
from .sources import cut_points, join_safetensors, split_safetensors

NAME = "bad.safetensors"
Q = "model.layers.0.self_attn.q_proj.weight"


def case(name: str, edit, expect=(NAME,), argv=None) -> Case:
    """edit(header, body) -> file bytes, given the good file's header and body."""
    def files(s: Sources):
        header, body = split_safetensors(s.qllama_file.read_bytes())
        return {NAME: edit(header, body)}
    return Case(f"qf-{name}", argv or ["info", NAME], expect, files)


def meta(key: str, value):
    """Metadata key set to value (None: removed)."""
    def edit(header, body):
        m = {k: v for k, v in header["__metadata__"].items() if k != key}
        if value is not None:
            m[key] = value
        return join_safetensors({**header, "__metadata__": m}, body)
    return edit


def args(**changes):
    def edit(header, body):
        model_args = {**json.loads(header["__metadata__"]["qllama.model_args"]), **changes}
        return meta("qllama.model_args", json.dumps(model_args))(header, body)
    return edit


def entry(name: str, change):
    """Header entry `name` replaced by change(entry) (None: removed)."""
    def edit(header, body):
        new = change(header[name])
        header = {k: v for k, v in header.items() if k != name}
        return join_safetensors({**header, **({name: new} if new is not None else {})}, body)
    return edit


def cases() -> list[Case]:
    out = [
        case("version-missing", meta("qllama.format_version", None)),
        case("version-newer", meta("qllama.format_version", "2")),
        case("args-missing", meta("qllama.model_args", None)),
        case("args-not-json", meta("qllama.model_args", "{dim: 64")),
        case("args-a-list", meta("qllama.model_args", "[64]"), (NAME, "not an object")),
        case("args-a-string", meta("qllama.model_args", '"dim"'), (NAME, "not an object")),
        case("args-unknown-key", args(sliding_window=4)),
        case("args-layers-1e9", args(n_layers=10 ** 9), (NAME, "n_layers")),
        case("args-layers-4000", args(n_layers=4000)),
        case("args-layers-too-few", args(n_layers=1)),
        case("args-dim-string", args(dim="64")),
        case("args-heads-zero", args(n_heads=0)),
        case("args-head_dim-odd", args(head_dim=7)),
        case("args-vocab-huge", args(vocab_size=10 ** 20)),
        case("args-eps-nan", args(norm_eps=float("nan"))),
        case("args-freq-factors-a-string", args(rope_freq_factors="abc")),
        case("formats-a-list", meta("qllama.tensor_formats", json.dumps([Q]))),
        case("formats-a-string", meta("qllama.tensor_formats", '"q8_g32"')),
        case("formats-not-json", meta("qllama.tensor_formats", "{")),
        case("formats-value-a-number", meta("qllama.tensor_formats", json.dumps({Q: 5}))),
        case("formats-unknown", meta("qllama.tensor_formats", json.dumps({Q: "q3_g7"}))),
        case("formats-no-planes", meta("qllama.tensor_formats", json.dumps({"model.norm.weight.x": "q8_g32"}))),
        case("scales-missing", entry(f"{Q}.scales", lambda e: None)),
        case("scales-1d", expect=(NAME, Q), edit=entry(f"{Q}.scales", lambda e: {**e, "shape": [e["shape"][0] * e["shape"][1]]})),
        case("scales-3d", entry(f"{Q}.scales", lambda e: {**e, "shape": [1, *e["shape"]]})),
        case("scales-wrong-dtype", entry(f"{Q}.scales", lambda e: {**e, "dtype": "I16"})),
        case("scales-too-few-rows", entry(f"{Q}.scales", lambda e: {**e, "shape": [e["shape"][0] // 2, e["shape"][1]],
                                                                      "data_offsets": [e["data_offsets"][0], e["data_offsets"][0] + (e["data_offsets"][1] - e["data_offsets"][0]) // 2]})),
        case("qweight-missing", entry(f"{Q}.qweight", lambda e: None)),
        case("plain-tensor-f16", entry("model.norm.weight", lambda e: {**e, "dtype": "F16", "shape": [e["shape"][0] * 2]})),
        case("tokenizer-kind-unknown", meta("qllama.tokenizer_kind", "bogus")),
        case("tokenizer-settings-a-list", meta("qllama.tokenizer_settings", "[1]")),
        case("tokenizer-settings-stop-ids-a-number", meta("qllama.tokenizer_settings", '{"stop_ids": 5}')),
        replace(case("tokenizer-settings-bos-a-list", meta("qllama.tokenizer_settings", '{"bos_id": [1]}')),
                must_fail=False),     # not a token id: the tokenizer has no BOS
        case("tokenizer-settings-not-json", meta("qllama.tokenizer_settings", "{")),
        case("tokenizer-garbage", lambda h, b: _garbage_tokenizer(h, b)),
        case("ctx-beyond-model", lambda h, b: join_safetensors(h, b), ("--ctx",),
             argv=["run", "Once", "-m", NAME, "--ctx", "100000000"]),
    ]
    out += [case(f"cut-{n}", lambda h, b, n=n: join_safetensors(h, b)[:n]) for n in cut_points(70000, [8, 9, 100], 4)]
    return out


def _garbage_tokenizer(header, body):
    begin, end = header["qllama.tokenizer"]["data_offsets"]
    return join_safetensors(header, body[:begin] + b"\xff" * (end - begin) + body[end:])
