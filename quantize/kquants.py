"""ggml's k-quants (Q2_K .. Q6_K) as entries of the FORMATS table: layout, numpy references.

A row is cut into super-blocks of 256 weights; each has an fp16 scale d (and an fp16 dmin), and
sub-blocks of 32 (Q4_K, Q5_K) or 16 (Q2_K, Q3_K, Q6_K) weights with their own small integer scale
(and min). Facts from ggml's ggml-common.h (block_q2_K .. block_q6_K) and ggml-quants.c
(dequantize_row_q2_K .. _q6_K); the code is ours, tested bit for bit against the `gguf` package.

    Q2_K (84 bytes):  subscales[16], qweight[64], d f16, dmin f16      value = d*sc_j * q - dmin*m_j
    Q3_K (110 bytes): qh[32], qweight[64], subscales[12], d f16        value = d*sc_j * (q - 4)
    Q4_K (144 bytes): d f16, dmin f16, subscales[12], qweight[128]    value = d*sc_j * q - dmin*m_j
    Q5_K (176 bytes): d f16, dmin f16, subscales[12], qh[32], qweight[128]   (q: 5 bits)
    Q6_K (210 bytes): qweight[128], qh[64], subscales[16] int8, d f16  value = d*sc_j * (q - 32)

The codes, described by three numbers the kernels read too (kernels/kquant_ir.py):
- lo_bits b and lo_span S: `qweight` holds the low b bits of each code. b = 4: packed as the q4
  formats pack a group of S: inside each span of S weights, byte j holds weight j (low nibble) and
  weight j + S/2 (high). b = 2: as bit fields, laid out as `qh` below.
- hi_bits h: `qh` holds the next h bits (none for Q2_K, Q4_K): inside each span of 256 / h weights
  (32 bytes), byte l holds in bits h*k.. those bits of weight 32 k + l.
The sub-block scales (`packing`):
- "k6" (Q4_K, Q5_K): 6-bit scales and mins in 12 bytes: bytes 0-3 the low six bits of sc_0..3
  (top two bits: sc_4..7 >> 4), bytes 4-7 those of m_0..3 (top two: m_4..7 >> 4), bytes 8-11 the
  low four bits of sc_4..7 (low nibble) and m_4..7 (high nibble);
- "k4" (Q2_K): a byte each, the scale in the low nibble and the min in the high one;
- "k3" (Q3_K): 6-bit scales stored + 32 in 12 bytes: the low four bits of sc_j in byte j % 8 (low
  nibble for j < 8, high for j >= 8), the top two in bits 2 (j // 4) of byte 8 + j % 4;
- "i8" (Q6_K): a signed byte each.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .planes import Plane

QK_K = 256


def _f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float32)


def unpack_6bit(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, 12) uint8 -> (sc, m), each (n, 8) int32 in [0, 63]."""
    q = packed.astype(np.int32)
    lo_sc, lo_m, mixed = q[:, 0:4], q[:, 4:8], q[:, 8:12]
    sc = np.concatenate([lo_sc & 63, (mixed & 15) | ((lo_sc >> 6) << 4)], axis=1)
    m = np.concatenate([lo_m & 63, (mixed >> 4) | ((lo_m >> 6) << 4)], axis=1)
    return sc, m


def pack_6bit(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """unpack_6bit backwards: (n, 8) sc and m in [0, 63] -> (n, 12) uint8."""
    sc, m = sc.astype(np.int32), m.astype(np.int32)
    lo_sc = sc[:, :4] | ((sc[:, 4:] >> 4) << 6)
    lo_m = m[:, :4] | ((m[:, 4:] >> 4) << 6)
    mixed = (sc[:, 4:] & 15) | ((m[:, 4:] & 15) << 4)
    return np.concatenate([lo_sc, lo_m, mixed], axis=1).astype(np.uint8)


def unpack_q3_scales(packed: np.ndarray) -> np.ndarray:
    """(n, 12) uint8 -> (n, 16) int32 scales in [-32, 31] (packing "k3")."""
    q = packed.astype(np.int32)
    j = np.arange(16)
    low = (q[:, j % 8] >> (4 * (j // 8))) & 15
    high = (q[:, 8 + j % 4] >> (2 * (j // 4))) & 3
    return (low | (high << 4)) - 32


def pack_q3_scales(sc: np.ndarray) -> np.ndarray:
    """unpack_q3_scales backwards: (n, 16) scales in [-32, 31] -> (n, 12) uint8."""
    u = sc.astype(np.int32) + 32
    out = np.zeros((u.shape[0], 12), np.int32)
    for j in range(16):
        out[:, j % 8] |= (u[:, j] & 15) << (4 * (j // 8))
        out[:, 8 + j % 4] |= (u[:, j] >> 4) << (2 * (j // 4))
    return out.astype(np.uint8)


def _unpack_fields(plane: np.ndarray, bits: int) -> np.ndarray:
    """(n, 32 bits) bytes of bit fields (the module docstring's `qh` layout) -> (n, 256) int32."""
    n, fields = plane.shape[0], 8 // bits
    h = plane.reshape(n, QK_K // (32 * fields), 1, 32)
    shifts = (bits * np.arange(fields, dtype=np.uint8)).reshape(1, 1, fields, 1)
    return ((h >> shifts) & np.uint8((1 << bits) - 1)).reshape(n, QK_K).astype(np.int32)


def _pack_fields(values: np.ndarray, bits: int) -> np.ndarray:
    """_unpack_fields backwards: (n, 256) values in [0, 2**bits) -> (n, 32 bits) uint8."""
    n, fields = values.shape[0], 8 // bits
    v = values.reshape(n, QK_K // (32 * fields), fields, 32)
    shifts = (bits * np.arange(fields)).reshape(1, 1, fields, 1)
    return (v << shifts).sum(axis=2).reshape(n, -1).astype(np.uint8)


# the range of the integer sub-block scales (and mins) of each packing
SUB_RANGE = {"k6": (0, 63), "k4": (0, 15), "k3": (-32, 31), "i8": (-128, 127)}


@dataclass(frozen=True)
class KQuantFormat:
    name: str
    bits: int                  # bits per code
    sub_block: int             # weights per sub-block scale (32 or 16)
    lo_span: int               # see the module docstring
    hi_bits: int
    offset: int                # stored code = level + offset (Q6_K: 32; Q4_K/Q5_K have mins instead)
    has_mins: bool
    planes: tuple[Plane, ...]
    ggml_fields: tuple[str, ...]   # plane names in the order of ggml's block fields
    ggml_type: str
    tolerance: float           # max relative RMS round-trip error of quantize_ref on N(0, 1) weights
                               # (measured Q2_K 0.33, Q3_K 0.155, Q4_K 0.078, Q5_K 0.038, Q6_K 0.019)
    kernel: str = "kquant"     # the kernels module (qllama.kernels.<kernel>) that multiplies it
    group_size: int = QK_K     # the block: rows are padded to whole super-blocks
    searchable: bool = False   # not by search.py / GPTQ (group-wise): by quantize_planes on whole super-blocks
    lo_bits: int = 4           # bits of each code in `qweight` (see the module docstring)
    packing: str = "k6"        # of the sub-block scales: "k6", "k4", "k3" or "i8" (module docstring)

    @property
    def act_group(self) -> int:
        """Activations are quantized to int8 with one scale per super-block (ggml's Q8_K), so a
        super-block's sum stays integer through its sub-block scales (kernels/kquant_ir.py)."""
        return QK_K

    @property
    def symmetric(self) -> bool:
        return not self.has_mins

    @property
    def bytes_per_group(self) -> int:
        return sum(p.nbytes for p in self.planes)

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.bytes_per_group / self.group_size

    @property
    def kind(self) -> str:
        return "k-quant"

    @property
    def n_sub(self) -> int:
        return QK_K // self.sub_block

    # ---- numpy references on (n, per_block) planes of n super-blocks ----
    def codes(self, qweight: np.ndarray, qh: np.ndarray | None) -> np.ndarray:
        """Codes (n, 256) int32 in [0, 2**bits) from the code planes."""
        n = qweight.shape[0]
        if self.lo_bits == 2:
            q = _unpack_fields(qweight, 2)
        else:
            lo = qweight.reshape(n, QK_K // self.lo_span, 1, self.lo_span // 2)
            q = (lo >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)) & np.uint8(15)
            q = q.reshape(n, QK_K).astype(np.int32)
        if self.hi_bits:
            q |= _unpack_fields(qh, self.hi_bits) << self.lo_bits
        return q

    def pack_codes(self, q: np.ndarray) -> dict[str, np.ndarray]:
        """codes() backwards: (n, 256) codes -> {"qweight": (n, 32 lo_bits)[, "qh": (n, 32 h)]} uint8."""
        n, low = q.shape[0], q & ((1 << self.lo_bits) - 1)
        if self.lo_bits == 2:
            planes = {"qweight": _pack_fields(low, 2)}
        else:
            lo = low.reshape(n, QK_K // self.lo_span, 2, self.lo_span // 2)
            planes = {"qweight": (lo[:, :, 0] | (lo[:, :, 1] << 4)).reshape(n, QK_K // 2).astype(np.uint8)}
        if self.hi_bits:
            planes["qh"] = _pack_fields(q >> self.lo_bits, self.hi_bits)
        return planes

    @property
    def sub_range(self) -> tuple[int, int]:
        return SUB_RANGE[self.packing]

    def unpack_subscales(self, packed: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(n, bytes) sub-block scale bytes -> integer sc (n, n_sub) and m (None without mins)."""
        if self.packing == "k6":
            return unpack_6bit(packed)
        if self.packing == "k4":
            return (packed & 15).astype(np.int32), (packed >> 4).astype(np.int32)
        if self.packing == "k3":
            return unpack_q3_scales(packed), None
        return packed.view(np.int8).astype(np.int32), None

    def pack_subscales(self, sc: np.ndarray, m: np.ndarray | None) -> np.ndarray:
        """unpack_subscales backwards."""
        if self.packing == "k6":
            return pack_6bit(sc, m)
        if self.packing == "k4":
            return (sc.astype(np.int32) | (m.astype(np.int32) << 4)).astype(np.uint8)
        if self.packing == "k3":
            return pack_q3_scales(sc)
        return sc.astype(np.int8).view(np.uint8)

    def sub_scales(self, planes: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        """Per sub-block float32 scale d*sc and min dmin*m (None without mins), each (n, n_sub)."""
        d = planes["scales"].reshape(-1, 1).astype(np.float32)
        sc, m = self.unpack_subscales(planes["subscales"])
        if self.has_mins:
            return d * sc.astype(np.float32), planes["mins"].reshape(-1, 1).astype(np.float32) * m.astype(np.float32)
        return d * sc.astype(np.float32), None

    def dequantize_planes(self, planes: dict[str, np.ndarray]) -> np.ndarray:
        """{plane: (n, per_block)} of n super-blocks -> (n, 256) float32, as ggml's dequantize_row_q*_K."""
        q = self.codes(planes["qweight"], planes.get("qh"))
        n = q.shape[0]
        scale, minimum = self.sub_scales(planes)
        q = q.reshape(n, self.n_sub, self.sub_block).astype(np.float32)
        if self.has_mins:
            x = scale[:, :, None] * q - minimum[:, :, None]
        else:
            x = scale[:, :, None] * (q - np.float32(self.offset))
        return x.reshape(n, QK_K)

    def quantize_planes(self, x: np.ndarray, weights: np.ndarray | None) -> dict[str, np.ndarray]:
        """(n, 256) float32 super-blocks -> planes: the error-minimising search (kquant_search.py)
        under per-weight importance `weights`, or quantize_ref's plain rounding when None."""
        if weights is None:
            return self.quantize_ref(x)
        from .kquant_search import search_kquant
        return search_kquant(self, x, weights)

    def quantize_ref(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """(n, 256) float32 super-blocks -> planes, by plain absmax / min-max rounding (no search):
        good enough to requantize another GGUF type at load."""
        x = x.astype(np.float32).reshape(-1, self.n_sub, self.sub_block)
        n, qmax = x.shape[0], (1 << self.bits) - 1
        lo_sc, hi_sc = self.sub_range
        if self.has_mins:
            lo = np.minimum(x.min(axis=2), 0)
            scale, mins = (x.max(axis=2) - lo) / qmax, -lo
            d, dmin = _f16(scale.max(axis=1) / hi_sc), _f16(mins.max(axis=1) / hi_sc)
            sc = np.clip(np.rint(_div(scale, d[:, None])), 0, hi_sc).astype(np.int32)
            m = np.clip(np.rint(_div(mins, dmin[:, None])), 0, hi_sc).astype(np.int32)
            step, low = d[:, None] * sc, dmin[:, None] * m
            q = np.clip(np.rint(_div(x + low[:, :, None], step[:, :, None])), 0, qmax)
            planes = {"scales": d.astype(np.float16)[:, None], "mins": dmin.astype(np.float16)[:, None],
                      "subscales": self.pack_subscales(sc, m)}
        else:
            signed = np.take_along_axis(x, np.abs(x).argmax(axis=2)[:, :, None], axis=2)[:, :, 0]
            scale = signed / -self.offset                  # the largest magnitude maps to the lowest level
            big = np.take_along_axis(scale, np.abs(scale).argmax(axis=1)[:, None], axis=1)[:, 0]
            d = _f16(big / lo_sc)                          # and the largest scale to the lowest integer
            sc = np.clip(np.rint(_div(scale, d[:, None])), lo_sc, hi_sc).astype(np.int32)
            step = d[:, None] * sc
            q = np.clip(np.rint(_div(x, step[:, :, None])), -self.offset, qmax - self.offset) + self.offset
            planes = {"scales": d.astype(np.float16)[:, None], "subscales": self.pack_subscales(sc, None)}
        planes.update(self.pack_codes(q.reshape(n, QK_K).astype(np.int32)))
        return planes


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a / b, 0 where b is 0 (an all-zero block)."""
    return np.divide(a, b, out=np.zeros(np.broadcast_shapes(a.shape, b.shape), np.float32), where=b != 0)


CODES = Plane("qweight", "U8", QK_K // 2, 4)
CODES_2BIT = Plane("qweight", "U8", QK_K // 4, 4)
D, DMIN = Plane("scales", "F16", 1, 2), Plane("mins", "F16", 1, 2)
PACKED_6BIT = Plane("subscales", "U8", 12, 1)

KQUANTS = (
    KQuantFormat("q2_k", 2, 16, 128, 0, 0, True, (CODES_2BIT, D, DMIN, Plane("subscales", "U8", 16, 1)),
                 ("subscales", "qweight", "scales", "mins"), "Q2_K", 0.36, lo_bits=2, packing="k4"),
    KQuantFormat("q3_k", 3, 16, 128, 1, 4, False, (CODES_2BIT, Plane("qh", "U8", 32, 4), D, PACKED_6BIT),
                 ("qh", "qweight", "subscales", "scales"), "Q3_K", 0.17, lo_bits=2, packing="k3"),
    KQuantFormat("q4_k", 4, 32, 64, 0, 0, True, (CODES, D, DMIN, PACKED_6BIT),
                 ("scales", "mins", "subscales", "qweight"), "Q4_K", 0.09),
    KQuantFormat("q5_k", 5, 32, 64, 1, 0, True, (CODES, Plane("qh", "U8", 32, 4), D, DMIN, PACKED_6BIT),
                 ("scales", "mins", "subscales", "qh", "qweight"), "Q5_K", 0.045),
    KQuantFormat("q6_k", 6, 16, 128, 2, 32, False, (CODES, Plane("qh", "U8", 64, 4), D, Plane("subscales", "U8", 16, 1)),
                 ("qweight", "qh", "subscales", "scales"), "Q6_K", 0.022, packing="i8"),
)
for _f in KQUANTS:  # ggml's block sizes (ggml-common.h static_asserts)
    assert _f.bytes_per_group == {"Q2_K": 84, "Q3_K": 110, "Q4_K": 144, "Q5_K": 176, "Q6_K": 210}[_f.ggml_type], _f.name
