"""A GGUF file as plain lists (metadata, tensors), and back to bytes, for building malformed files.

The `gguf` package's writer refuses much of what the bad-input corpus needs (an array where a
scalar belongs, tensor offsets that overlap or break the alignment), so this writes the format
itself: header, key/value pairs, tensor infos, padding, data (GGUF v3, little-endian; layout from
the GGUF spec in ggml's docs/gguf.md). Reading goes through gguf.GGUFReader.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import gguf

VT = gguf.GGUFValueType
SCALAR_FORMATS = {VT.UINT8: "<B", VT.INT8: "<b", VT.UINT16: "<H", VT.INT16: "<h", VT.UINT32: "<I", VT.INT32: "<i",
                  VT.FLOAT32: "<f", VT.BOOL: "<?", VT.UINT64: "<Q", VT.INT64: "<q", VT.FLOAT64: "<d"}


@dataclass
class Tensor:
    name: str
    dims: list[int]        # GGML order: fastest dimension first
    type_id: int
    data: bytes
    offset: int | None = None   # relative to the data section; None: placed after the previous one, aligned


@dataclass
class GGUF:
    kvs: list[tuple[str, VT, object, VT | None]]   # key, type, value, element type of an array
    tensors: list[Tensor]
    alignment: int = 32

    def get(self, key: str):
        return next(v for k, _, v, _ in self.kvs if k == key)

    def set(self, key: str, vtype: VT, value, sub: VT | None = None) -> "GGUF":
        """A copy with key (re)set to value, typed vtype (arrays: sub is the element type)."""
        kvs = [kv for kv in self.kvs if kv[0] != key] + [(key, vtype, value, sub)]
        return GGUF(kvs, list(self.tensors), self.alignment)

    def without(self, key: str) -> "GGUF":
        return GGUF([kv for kv in self.kvs if kv[0] != key], list(self.tensors), self.alignment)


def read(path) -> GGUF:
    reader = gguf.GGUFReader(path)
    kvs = []
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        sub = field.types[-1] if field.types[0] == VT.ARRAY else None
        kvs.append((key, field.types[0], field.contents(), sub))
    tensors = [Tensor(t.name, [int(d) for d in t.shape], int(t.tensor_type), t.data.tobytes()) for t in reader.tensors]
    return GGUF(kvs, tensors, reader.alignment)


def _string(s: str | bytes) -> bytes:
    b = s.encode("utf-8") if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def _value(vtype: VT, value, sub: VT | None) -> bytes:
    if vtype == VT.STRING:
        return _string(value)
    if vtype == VT.ARRAY:
        return struct.pack("<IQ", sub, len(value)) + b"".join(_value(sub, v, None) for v in value)
    return struct.pack(SCALAR_FORMATS[vtype], value)


def to_bytes(g: GGUF, n_tensors: int | None = None, n_kvs: int | None = None) -> bytes:
    """The file; n_tensors / n_kvs override the counts in the header (to lie)."""
    n_tensors = len(g.tensors) if n_tensors is None else n_tensors
    n_kvs = len(g.kvs) if n_kvs is None else n_kvs
    out = bytearray(b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kvs))
    for key, vtype, value, sub in g.kvs:
        out += _string(key) + struct.pack("<I", vtype) + _value(vtype, value, sub)
    data, offsets = bytearray(), []
    for t in g.tensors:
        if t.offset is None:
            data += b"\0" * (-len(data) % g.alignment)
            offsets.append(len(data))
            data += t.data
        else:   # placed by hand: written where it says, unless that is far past the data (a lie to test)
            offsets.append(t.offset)
            if t.offset <= len(data) + 4096:
                data += b"\0" * max(0, t.offset + len(t.data) - len(data))
                data[t.offset:t.offset + len(t.data)] = t.data
    for t, offset in zip(g.tensors, offsets):
        out += _string(t.name) + struct.pack("<I", len(t.dims)) + struct.pack(f"<{len(t.dims)}Q", *t.dims)
        out += struct.pack("<IQ", t.type_id, offset)
    out += b"\0" * (-len(out) % g.alignment)
    return bytes(out + data)
