"""Malformed .safetensors files in a Hugging Face folder (llama3_untied_f32's): truncations, lying
header lengths, bad JSON, and tensor entries with bad dtypes, shapes (overflowing int64, too large
for C, negative), offsets (reversed, past the end, overlapping) and duplicate or missing tensors."""
from __future__ import annotations

import json
from functools import lru_cache

from . import Case
from .sources import HF_SHARDED, HF_UNTIED, NOT_UTF8, cut_points, join_safetensors, split_safetensors

FILE = "model.safetensors"
EMBED = "model.embed_tokens.weight"
NORM = "model.norm.weight"


@lru_cache(maxsize=1)
def original() -> bytes:
    return (HF_UNTIED / FILE).read_bytes()


def case(name: str, make, expect=(FILE,)) -> Case:
    return Case(f"st-{name}", ["info", "model"], expect,
                lambda _s: {"model/config.json": HF_UNTIED / "config.json", f"model/{FILE}": make()})


def with_entry(name: str, **changes):
    """The file with one header entry changed (a value of None deletes the key); data unchanged."""
    def make():
        header, body = split_safetensors(original())
        entry = {**header[name], **changes}
        header[name] = {k: v for k, v in entry.items() if v is not None}
        return join_safetensors(header, body)
    return make


def with_header(edit):
    def make():
        header, body = split_safetensors(original())
        return join_safetensors(edit(header), body)
    return make


def truncations() -> list[Case]:
    data = original()
    header_len = int.from_bytes(data[:8], "little")
    fixed = [1, 7, 8, 9, 8 + header_len // 2, 8 + header_len - 1, 8 + header_len, 8 + header_len + 1]
    return [case(f"cut-{n}", lambda n=n: original()[:n]) for n in cut_points(len(data), fixed, 8)]


def header_cases() -> list[Case]:
    body = lambda: split_safetensors(original())[1]
    header_len = lambda n: lambda: n.to_bytes(8, "little") + original()[8:]
    return [
        case("header-length-zero", header_len(0)),
        case("header-length-huge", header_len((1 << 64) - 1)),
        case("header-length-file-size", header_len(len(original()))),
        case("header-not-json", lambda: join_safetensors(b"{not json", body())),
        case("header-not-utf8", lambda: join_safetensors(NOT_UTF8, body())),
        case("header-a-list", lambda: join_safetensors(b"[1, 2]", body())),
        case("header-entry-a-list", with_header(lambda h: {**h, EMBED: [1]})),
        case("metadata-not-strings", with_header(lambda h: {**h, "__metadata__": {"format": 5}})),
        case("metadata-a-list", with_header(lambda h: {**h, "__metadata__": ["pt"]})),
        case("duplicate-tensor-name", lambda: join_safetensors(
            json.dumps(split_safetensors(original())[0])[:-1].encode() + b', "model.norm.weight": '
            + json.dumps(split_safetensors(original())[0][NORM]).encode() + b"}", body())),
        case("tensor-missing", with_header(lambda h: {k: v for k, v in h.items() if k != NORM}), ("model:", NORM)),
        case("tensor-unexpected", with_header(lambda h: {**h, "model.layers.7.mlp.up_proj.weight": {"dtype": "F32", "shape": [0],
                                                                                "data_offsets": [0, 0]}}),
             ("model:", "model.layers.7")),
    ]


def entry_cases() -> list[Case]:
    header = split_safetensors(original())[0]
    begin, end = header[NORM]["data_offsets"]
    first = min((e["data_offsets"] for k, e in header.items() if k != "__metadata__"), key=lambda o: o[0])
    out = [case("entry-shape-wrong", with_entry(NORM, shape=[32, 2]), ("model:", NORM))]
    return out + [case(f"entry-{name}", with_entry(NORM, **change)) for name, change in {
        "dtype-unknown": {"dtype": "F99"},
        "dtype-a-number": {"dtype": 5},
        "dtype-a-list": {"dtype": ["F32"]},
        "shape-bools": {"shape": [True] * 1},
        "dtype-int": {"dtype": "I32"},
        "shape-a-string": {"shape": "64"},
        "shape-negative": {"shape": [-1, -64]},
        "shape-float": {"shape": [64.0]},
        "shape-overflow-int64": {"shape": [1 << 32, 1 << 32], "data_offsets": [begin, begin]},
        "shape-too-large-for-c": {"shape": [1 << 70]},
        "shape-too-large-for-c-2": {"shape": [1 << 64, 0]},
        "offsets-missing": {"data_offsets": None},
        "offsets-reversed": {"data_offsets": [end, begin]},
        "offsets-strings": {"data_offsets": [str(begin), str(end)]},
        "offsets-three": {"data_offsets": [begin, end, end]},
        "offsets-past-end": {"data_offsets": [begin + (1 << 40), end + (1 << 40)]},
        "offsets-negative": {"data_offsets": [-256, 0]},
        "offsets-overlap": {"data_offsets": [first[0], first[0] + end - begin]},
    }.items()]


def sharded_cases() -> list[Case]:
    index = json.loads((HF_SHARDED / "model.safetensors.index.json").read_text())
    def folder(index_bytes):
        def files(_s):
            out = {f"model/{p.name}": p for p in HF_SHARDED.glob("*.safetensors")}
            return {**out, "model/config.json": HF_SHARDED / "config.json",
                    "model/model.safetensors.index.json": index_bytes}
        return files
    shard_names = lambda m: {**index, "weight_map": {k: m for k in index["weight_map"]}}
    return [
        Case("st-index-not-utf8", ["info", "model"], ("model.safetensors.index.json",), folder(NOT_UTF8)),
        Case("st-index-map-a-list", ["info", "model"], ("model.safetensors.index.json",),
             folder(json.dumps({"weight_map": ["a"]}).encode())),
        Case("st-index-shard-outside", ["info", "model"], ("model.safetensors.index.json",),
             folder(json.dumps(shard_names("../config.json")).encode())),
        Case("st-index-shard-a-number", ["info", "model"], ("model.safetensors.index.json",),
             folder(json.dumps(shard_names(5)).encode())),
        Case("st-index-shards-mixed", ["info", "model"], ("model.safetensors.index.json",),
             folder(json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors", "b": [1]}}).encode())),
        Case("st-index-shard-missing", ["info", "model"], ("nope.safetensors",),
             folder(json.dumps(shard_names("nope.safetensors")).encode())),
    ]


def cases() -> list[Case]:
    return truncations() + header_cases() + entry_cases() + sharded_cases()
