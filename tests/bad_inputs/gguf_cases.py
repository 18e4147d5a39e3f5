"""Malformed GGUF files, from stories260K.gguf: truncations, lying counts and lengths, bad tensor
infos (types, dims, offsets past the end, misaligned or overlapping), and metadata values of the
wrong type or range."""
from __future__ import annotations

import struct
from functools import lru_cache

import gguf

import gguf_bytes as gb

from . import Case
from .sources import BIG_SPM_FILE, GGUF_FILE, cut_points

VT = gb.VT
NAME = "bad.gguf"


@lru_cache(maxsize=1)
def original() -> tuple[bytes, gb.GGUF]:
    return GGUF_FILE.read_bytes(), gb.read(GGUF_FILE)


def case(name: str, make) -> Case:
    return Case(f"gguf-{name}", ["info", NAME], (NAME,), lambda _s: {NAME: make()})


def edited(edit):
    """A maker of the original file with `edit(model)` applied, re-serialised."""
    return lambda: gb.to_bytes(edit(original()[1]))


def patched(offset: int, fmt: str, value):
    """The original bytes with one packed value written at offset."""
    def make():
        data = bytearray(original()[0])
        data[offset:offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
        return bytes(data)
    return make


def with_tensor(index: int, **changes):
    def edit(g: gb.GGUF) -> gb.GGUF:
        tensors = list(g.tensors)
        tensors[index] = gb.Tensor(**{**vars(tensors[index]), **changes})
        return gb.GGUF(g.kvs, tensors, g.alignment)
    return edit


def truncations() -> list[Case]:
    reader = gguf.GGUFReader(GGUF_FILE)
    fields = [f.offset for f in reader.fields.values()]
    infos = [t.field.offset for t in reader.tensors]
    fixed = [4, 8, 16, 24] + [o + d for o in fields[3:] for d in (0, 9)] + infos[:4] + [reader.data_offset,
                                                                                        reader.data_offset + 100]
    size = GGUF_FILE.stat().st_size
    return [case(f"cut-{n}", lambda n=n: original()[0][:n]) for n in cut_points(size, fixed, 12)]


def header_lies() -> list[Case]:
    out = [case(f"version-{v}", patched(4, "<I", v)) for v in (0, 1, 4, 0xFFFFFFFF)]
    out += [case(f"tensor-count-{n}", patched(8, "<Q", n)) for n in (0, 49, 1 << 32, (1 << 64) - 1)]
    out += [case(f"kv-count-{n}", patched(16, "<Q", n)) for n in (0, 3, 24, 1 << 40)]
    out += [case("first-key-length-huge", patched(24, "<Q", 1 << 62)),
            case("first-value-type-unknown", patched(24 + 8 + len("tokenizer.ggml.tokens"), "<I", 99)),
            case("token-array-count-huge", patched(24 + 8 + len("tokenizer.ggml.tokens") + 8, "<Q", 1 << 40)),
            case("first-token-length-huge", patched(24 + 8 + len("tokenizer.ggml.tokens") + 16, "<Q", 1 << 60))]
    return out


def tensor_infos() -> list[Case]:
    last = len(original()[1].tensors) - 1
    size = GGUF_FILE.stat().st_size
    drop = lambda name: lambda g: gb.GGUF(g.kvs, [t for t in g.tensors if t.name != name], g.alignment)
    return [
        case("tensor-type-unknown", edited(with_tensor(1, type_id=99))),
        case("tensor-type-undecodable", edited(with_tensor(1, type_id=int(gguf.GGMLQuantizationType.IQ2_XXS)))),
        case("tensor-offset-past-end", edited(with_tensor(last, offset=size * 4))),
        case("tensor-offset-huge", edited(with_tensor(last, offset=(1 << 63) - 64))),
        case("tensor-dims-none", edited(with_tensor(1, dims=[]))),
        case("tensor-dims-overflow", edited(with_tensor(0, dims=[1 << 32, 1 << 32]))),
        case("tensor-dims-huge", edited(with_tensor(0, dims=[64, (1 << 64) - 1]))),
        case("tensor-dims-wrong", edited(with_tensor(0, dims=[512, 64]))),
        case("tensor-dims-partial-block", edited(with_tensor(0, dims=[63, 512]))),
        case("tensor-missing", edited(drop("blk.0.attn_q.weight"))),
        case("tensor-duplicate", edited(lambda g: gb.GGUF(g.kvs, g.tensors + [g.tensors[1]], g.alignment))),
        case("tensor-unexpected", edited(lambda g: gb.GGUF(g.kvs, g.tensors + [gb.Tensor("blk.9.attn_q.weight", [64, 64], 0, bytes(64 * 64 * 4))], g.alignment))),
        case("tensor-no-embedding", edited(drop("token_embd.weight"))),
        case("rope-freqs-wrong-length", edited(lambda g: gb.GGUF(g.kvs, g.tensors + [gb.Tensor("rope_freqs.weight", [3], 0, bytes(12))], g.alignment))),
    ]


def offset_cases() -> list[Case]:
    def misaligned(g):      # the second tensor 4 bytes further on: inside the file, off the 32-byte grid
        offsets, pos = [], 0
        for t in g.tensors:
            pos += -pos % g.alignment
            offsets.append(pos)
            pos += len(t.data)
        return with_tensor(1, offset=offsets[1] + 4)(g)

    def overlapping(g):     # every tensor at its own place, but the second starts where the first does
        return with_tensor(1, offset=0)(with_tensor(0, offset=0)(g))
    return [case("tensor-offset-misaligned", edited(misaligned)), case("tensor-ranges-overlap", edited(overlapping))]


# (key, type, value, element type) that must each be refused
BAD_VALUES = [(k, *v) for k in ("llama.embedding_length", "llama.attention.head_count", "llama.block_count")
              for v in ((VT.UINT32, 0, None), (VT.STRING, "64", None), (VT.ARRAY, [64], VT.UINT32),
                        (VT.INT32, -1, None), (VT.UINT64, (1 << 64) - 1, None), (VT.FLOAT32, 1.5, None))] + [
    ("llama.block_count", VT.UINT32, 10 ** 9, None),
    ("llama.block_count", VT.UINT32, 4000, None),
    ("llama.block_count", VT.UINT32, 1, None),
    ("llama.feed_forward_length", VT.BOOL, True, None),
    ("llama.attention.head_count_kv", VT.UINT32, 3, None),
    ("llama.attention.head_count_kv", VT.UINT32, 0, None),
    ("llama.attention.key_length", VT.UINT32, 7, None),
    ("llama.rope.dimension_count", VT.STRING, "x", None),
    ("llama.context_length", VT.UINT64, 1 << 40, None),
    ("llama.context_length", VT.ARRAY, ["512"], VT.STRING),
    ("llama.attention.layer_norm_rms_epsilon", VT.FLOAT32, float("nan"), None),
    ("llama.attention.layer_norm_rms_epsilon", VT.STRING, "1e-5", None),
    ("llama.attention.layer_norm_rms_epsilon", VT.FLOAT32, -1.0, None),
    ("llama.rope.freq_base", VT.FLOAT32, float("inf"), None),
    ("llama.rope.freq_base", VT.FLOAT32, 0.0, None),
    ("llama.rope.scaling.type", VT.STRING, "yarn", None),
    ("llama.rope.scaling.type", VT.UINT32, 1, None),
    ("llama.expert_count", VT.UINT32, 8, None),
    ("general.architecture", VT.STRING, "mistral", None),
    ("general.architecture", VT.ARRAY, ["llama"], VT.STRING),
    ("general.alignment", VT.UINT32, 0, None),
    ("general.alignment", VT.UINT32, 3, None),
    ("general.alignment", VT.STRING, "32", None),
    ("tokenizer.ggml.model", VT.STRING, "bogus", None),
    ("tokenizer.ggml.model", VT.ARRAY, ["llama"], VT.STRING),
    ("tokenizer.ggml.tokens", VT.STRING, "a", None),
    ("tokenizer.ggml.tokens", VT.ARRAY, [], VT.STRING),
    ("tokenizer.ggml.tokens", VT.ARRAY, list(range(512)), VT.INT32),
    ("tokenizer.ggml.scores", VT.STRING, "x", None),
    ("tokenizer.ggml.scores", VT.ARRAY, ["x"] * 512, VT.STRING),
    ("tokenizer.ggml.token_type", VT.ARRAY, ["x"] * 512, VT.STRING),
    ("tokenizer.ggml.model", VT.STRING, "gpt2", None),
    ("tokenizer.ggml.scores", VT.ARRAY, [0.0] * 3, VT.FLOAT32),
    ("tokenizer.ggml.token_type", VT.ARRAY, [99] * 512, VT.INT32),
]


def metadata_values() -> list[Case]:
    out = []
    for i, (key, vtype, value, sub) in enumerate(BAD_VALUES):
        out.append(case(f"meta-{i}-{key.split('.', 1)[1]}-{vtype.name.lower()}",
                        edited(lambda g, a=(key, vtype, value, sub): g.set(*a))))
    out += [case(f"meta-missing-{key}", edited(lambda g, k=key: g.without(k)))
            for key in ("general.architecture", "llama.embedding_length", "llama.block_count",
                        "llama.attention.head_count", "llama.feed_forward_length")]
    # 300 tokens beside 512 embedding rows: ids 300-511 would decode to nothing
    out.append(case("vocab-smaller-than-embedding", edited(lambda g: g.set(
        "tokenizer.ggml.tokens", VT.ARRAY, g.get("tokenizer.ggml.tokens")[:300], VT.STRING).set(
        "tokenizer.ggml.scores", VT.ARRAY, g.get("tokenizer.ggml.scores")[:300], VT.FLOAT32).set(
        "tokenizer.ggml.token_type", VT.ARRAY, g.get("tokenizer.ggml.token_type")[:300], VT.INT32))))
    return out


def tokenizer_options() -> list[Case]:
    def files(extra):
        return lambda _s: {NAME: GGUF_FILE, **extra}
    return [
        Case("gguf-tokenizer-missing", ["info", NAME, "--tokenizer", "nope.model"], ("nope.model",), files({})),
        Case("gguf-tokenizer-too-big", ["info", NAME, "--tokenizer", "big.model"], ("big.model", "32000"),
             files({"big.model": BIG_SPM_FILE})),
        Case("gguf-tokenizer-garbage", ["info", NAME, "--tokenizer", "junk.model"], ("junk.model",),
             files({"junk.model": b"\x00junk" * 100})),
    ]


def cases() -> list[Case]:
    return truncations() + header_lies() + tensor_infos() + offset_cases() + metadata_values() + tokenizer_options()
