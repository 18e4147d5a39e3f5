"""The one table of quant formats (ggml's type_traits, in Python).

Two kinds of entries: the group-wise formats below (q8, q4, q4a at groups 32, 64, 128), and ggml's
k-quants Q2_K .. Q6_K (quantize/kquants.py: super-blocks of 256 with sub-block scales). Each
entry lists its planes (quantize/planes.py), the order of its fields in ggml's block, its numpy
references, the kernels module that multiplies it and its tolerance.

Every group-wise format is group-wise along the input dimension: a row of `in` weights is cut into groups of
`group_size`; each group has an fp16 scale (and an fp16 min if asymmetric) and `bits`-bit codes.
Stored as planes, per matrix of shape (out, in) with n_groups = ceil(in / group_size):

    <name>.qweight  uint8 (out, n_groups * group_size * bits / 8)   codes, group after group
    <name>.scales   fp16  (out, n_groups)                            d
    <name>.mins     fp16  (out, n_groups)                            m   (asymmetric formats only)

Codes and values, per family (q is the stored code):
    q8   int8 q in [-127, 127], one byte each                 value = d * q       (ggml Q8_0 at g32)
    q4   q in [0, 15], value = d * (q - 8)                     symmetric           (ggml Q4_0 at g32)
    q4a  q in [0, 15], value = d * q + m                       asymmetric          (ggml Q4_1 at g32)
4-bit packing, as ggml's blocks: inside a group of G, byte j holds weight j in its low nibble and
weight j + G/2 in its high nibble. At group 32 the planes are exactly ggml's block fields, so a
GGUF Q8_0/Q4_0/Q4_1 tensor converts bit for bit. Generic code asks this table; nothing else
switches on format names.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import QllamaError
from .kquants import KQUANTS, KQuantFormat
from .planes import Plane

GROUP_SIZES = (32, 64, 128)


def pack_nibbles(q: np.ndarray) -> np.ndarray:
    """(n, G) codes in [0, 15] -> (n, G/2) bytes: low nibble weight j, high nibble weight j + G/2."""
    half = q.shape[1] // 2
    return (q[:, :half] | (q[:, half:] << 4)).astype(np.uint8)


def unpack_nibbles(packed: np.ndarray) -> np.ndarray:
    return np.concatenate([packed & 0x0F, packed >> 4], axis=1)


def pack_bytes(q: np.ndarray) -> np.ndarray:
    return q.astype(np.int8).view(np.uint8)


def unpack_bytes(packed: np.ndarray) -> np.ndarray:
    return packed.view(np.int8)


@dataclass(frozen=True)
class Family:
    """What formats of one kind share: code range, packing, value rule and ggml's absmax reference."""
    name: str
    bits: int
    symmetric: bool
    qmin: int                    # code range as the value rule sees it (q - 8 for q4)
    qmax: int
    offset: int                  # stored code = level + offset
    pack: Callable
    unpack: Callable


Q8 = Family("q8", 8, True, -127, 127, 0, pack_bytes, unpack_bytes)
Q4 = Family("q4", 4, True, -8, 7, 8, pack_nibbles, unpack_nibbles)
Q4A = Family("q4a", 4, False, 0, 15, 0, pack_nibbles, unpack_nibbles)


@dataclass(frozen=True)
class QuantFormat:
    name: str
    family: Family
    group_size: int
    ggml_type: str | None        # the GGUF type with the identical layout, if any
    tolerance: float             # max relative RMS round-trip error on N(0, 1) weights (tests)

    kernel: str = "matmul"       # the kernels module (qllama.kernels.<kernel>) that multiplies it
    searchable: bool = True      # quantize/search.py finds its scales

    @property
    def bits(self) -> int:
        return self.family.bits

    @property
    def act_group(self) -> int:
        """Weights per activation scale: the kernels quantize activations to int8 per group."""
        return self.group_size

    @property
    def kind(self) -> str:
        return "symmetric" if self.symmetric else "asymmetric"

    @property
    def planes(self) -> tuple[Plane, ...]:
        planes = (Plane("qweight", "U8", self.qbytes_per_group, 4), Plane("scales", "F16", 1, 2))
        return planes if self.symmetric else planes + (Plane("mins", "F16", 1, 2),)

    @property
    def ggml_fields(self) -> tuple[str, ...]:
        """The planes in the order of ggml's block fields (block_q8_0, block_q4_0, block_q4_1)."""
        return ("scales", "qweight") if self.symmetric else ("scales", "mins", "qweight")

    @property
    def symmetric(self) -> bool:
        return self.family.symmetric

    @property
    def qbytes_per_group(self) -> int:
        return self.group_size * self.bits // 8

    @property
    def bytes_per_group(self) -> int:
        return self.qbytes_per_group + 2 + (0 if self.symmetric else 2)   # codes + fp16 d (+ fp16 m)

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.bytes_per_group / self.group_size

    def quantize_ref(self, groups: np.ndarray):
        """ggml's absmax rounding (quantize_row_q*_ref) on (n, G) float32 -> (levels, d, m or None).
        This is the baseline the scale search must beat, and the rule GGUF files were made with."""
        x = groups.astype(np.float32)
        if self.symmetric:
            signed_max = np.take_along_axis(x, np.abs(x).argmax(axis=1)[:, None], axis=1)[:, 0]
            # q8: d = amax / 127; q4: the largest magnitude maps to -8 (ggml Q4_0)
            d = np.abs(signed_max) / self.family.qmax if self.bits == 8 else signed_max / self.family.qmin
            d16 = d.astype(np.float16).astype(np.float32)
            inv = np.divide(1.0, d, out=np.zeros_like(d), where=d != 0)
            v = x * inv[:, None]
            # ggml rounds half away from zero for Q8_0 (roundf) and half up for Q4_0 ((int)(v + 8.5))
            rounded = np.sign(v) * np.floor(np.abs(v) + 0.5) if self.bits == 8 else np.floor(v + 0.5)
            levels = np.clip(rounded, self.family.qmin, self.family.qmax)
            return levels.astype(np.int32), d16, None
        lo, hi = x.min(axis=1), x.max(axis=1)
        d = (hi - lo) / self.family.qmax
        inv = np.divide(1.0, d, out=np.zeros_like(d), where=d != 0)
        levels = np.clip(np.floor((x - lo[:, None]) * inv[:, None] + 0.5), 0, self.family.qmax)
        return levels.astype(np.int32), d.astype(np.float16).astype(np.float32), lo.astype(np.float16).astype(np.float32)

    def dequantize_ref(self, levels: np.ndarray, d: np.ndarray, m: np.ndarray | None) -> np.ndarray:
        """(n, G) levels with per-group d (and m) -> (n, G) float32."""
        x = levels.astype(np.float32) * d[:, None].astype(np.float32)
        return x if m is None else x + m[:, None].astype(np.float32)

    def dequantize_planes(self, planes: dict[str, np.ndarray]) -> np.ndarray:
        """{plane: (n, per_block)} of n groups -> (n, G) float32."""
        m = planes.get("mins")
        return self.dequantize_ref(self.unpack(planes["qweight"]), planes["scales"].reshape(-1).astype(np.float32),
                                   None if m is None else m.reshape(-1).astype(np.float32))

    def pack(self, levels: np.ndarray) -> np.ndarray:
        """(n, G) levels -> (n, qbytes_per_group) uint8 codes."""
        return self.family.pack(levels + self.family.offset)

    def unpack(self, codes: np.ndarray) -> np.ndarray:
        """(n, qbytes_per_group) uint8 codes -> (n, G) int32 levels."""
        return self.family.unpack(codes).astype(np.int32) - self.family.offset


def _table() -> dict[str, QuantFormat]:
    ggml = {("q8", 32): "Q8_0", ("q4", 32): "Q4_0", ("q4a", 32): "Q4_1"}
    tolerance = {"q8": 0.007, "q4": 0.12, "q4a": 0.11}   # worst group size (128), N(0, 1) data
    table = {}
    for family in (Q8, Q4, Q4A):
        for g in GROUP_SIZES:
            name = f"{family.name}_g{g}"
            table[name] = QuantFormat(name, family, g, ggml.get((family.name, g)), tolerance[family.name])
    table.update({f.name: f for f in KQUANTS})
    return table


FORMATS: dict[str, QuantFormat | KQuantFormat] = _table()
ALIASES = {"q8_0": "q8_g32", "q4_0": "q4_g32", "q4_1": "q4a_g32"}   # ggml's names for the same layouts
BY_GGML_TYPE = {f.ggml_type: f for f in FORMATS.values() if f.ggml_type}

for _f in (f for f in FORMATS.values() if isinstance(f, QuantFormat)):  # checked once, like ggml's static_assert
    assert sum(p.nbytes for p in _f.planes) == _f.bytes_per_group, _f.name
    assert _f.bytes_per_group == _f.group_size * _f.bits // 8 + (2 if _f.symmetric else 4), _f.name


def nearest_format(bits_per_weight: float):
    """The table format a type without an entry is requantized into: the fewest bits per weight at
    or above `bits_per_weight` (ties: a k-quant, whose sub-block scales and mins fit closer, then the
    table's order), else the most bits the table has."""
    order = list(FORMATS.values())
    above = [f for f in order if f.bits_per_weight >= bits_per_weight - 1e-9]
    if not above:
        return max(order, key=lambda f: f.bits_per_weight)
    return min(above, key=lambda f: (f.bits_per_weight, f.kind != "k-quant", order.index(f)))


def get_format(name: str, group_size: int | None = None) -> QuantFormat:
    """'q4' + group 64, 'q4_g64', or a ggml name ('q4_0') -> the table entry; a clear error otherwise."""
    key = ALIASES.get(name.lower(), name.lower())
    if key in FORMATS:
        if group_size is not None and group_size != FORMATS[key].group_size:
            raise QllamaError(f"format {name} has group size {FORMATS[key].group_size}, not {group_size}")
        return FORMATS[key]
    families = sorted({f.family.name for f in FORMATS.values() if isinstance(f, QuantFormat)})
    if key not in families:
        raise QllamaError(f"unknown format {name!r} (known: {', '.join(families)}, {', '.join(FORMATS)}, "
                          f"{', '.join(ALIASES)})")
    group_size = 32 if group_size is None else group_size
    if group_size not in GROUP_SIZES:
        raise QllamaError(f"group size {group_size} is not allowed (allowed: {', '.join(map(str, GROUP_SIZES))})")
    return FORMATS[f"{key}_g{group_size}"]
