"""Device functions that dequantize a run of weights (row, k0..k0+count) of a matrix from its planes,
as stored, into a local buffer (count <= RUN; a run never crosses a group or sub-block).

One function per family of formats, all with the same arguments so one kernel template serves
them all (matmul.py): the planes (codes, qh, scales, mins, subscales; a 1x1 dummy where a format
has none), a dense float32 matrix (for float checkpoints), the fp16 -> float32 table, and the
format's numbers `fmt` = (bits, group_size, lo_span, hi_bits, offset, has_mins, lo_bits, packing)
(format_numbers; packing: PACKINGS' index of the k-quant's sub-block scale packing).
The layouts are quantize/formats.py's and quantize/kquants.py's; these read a run at a time, where
the numpy references unpack whole blocks.
"""
from __future__ import annotations

import numpy as np
from numba import cuda, float32, int32

from ..quantize.kquants import QK_K, KQuantFormat

DENSE, GROUP, KQUANT = "dense", "group", "kquant"
PACKINGS = ("k6", "k4", "k3", "i8")           # kquants.py's sub-block scale packings, by number


def format_numbers(fmt) -> tuple[int, ...]:
    """The numbers the device functions read, for a FORMATS entry (None: a dense float matrix)."""
    if fmt is None:
        return (32, 1, 0, 0, 0, 0, 0, 0)
    if isinstance(fmt, KQuantFormat):
        return (fmt.bits, QK_K, fmt.lo_span, fmt.hi_bits, fmt.offset, int(fmt.has_mins), fmt.lo_bits,
                PACKINGS.index(fmt.packing))
    return (fmt.bits, fmt.group_size, 0, 0, fmt.family.offset, int(not fmt.symmetric), 0, 0)


def family_of(fmt) -> str:
    if fmt is None:
        return DENSE
    return KQUANT if isinstance(fmt, KQuantFormat) else GROUP


def half_table() -> np.ndarray:
    """float32 value of every fp16 bit pattern: scales are read as uint16 and looked up, exactly."""
    return np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)


@cuda.jit(device=True, inline=True)
def dense_run(codes, qh, scales, mins, subs, wf, h2f, fmt, row, k0, count, buf):
    for i in range(count):
        buf[i] = wf[row, k0 + i]


@cuda.jit(device=True, inline=True)
def group_run(codes, qh, scales, mins, subs, wf, h2f, fmt, row, k0, count, buf):
    """q8: one int8 code per weight; q4/q4a: byte j of a group holds weights j (low) and j + G/2."""
    size = fmt[1]
    g = k0 // size
    d = h2f[scales[row, g]]
    if fmt[0] == 8:
        for i in range(count):
            q = int32(codes[row, k0 + i])
            buf[i] = d * float32(q - 256 if q > 127 else q)
        return
    half = size // 2
    low = h2f[mins[row, g]] if fmt[5] else float32(0)
    for i in range(count):
        j = k0 + i - g * size
        if j < half:
            q = int32(codes[row, g * half + j]) & 15
        else:
            q = int32(codes[row, g * half + j - half]) >> 4
        if fmt[5]:
            buf[i] = d * float32(q) + low
        else:
            buf[i] = d * float32(q - fmt[4])


@cuda.jit(device=True, inline=True)
def bit_field(plane, row, start, bits, j):
    """Bits of weight j of a super-block whose bit-field plane (kquants.py's `qh` layout) starts at
    byte `start` of the row."""
    per = 32 * (8 // bits)                        # weights whose fields share 32 bytes
    grp = j // per
    field = (j - grp * per) // 32
    byte = int32(plane[row, start + grp * 32 + (j - grp * per - field * 32)])
    return (byte >> (bits * field)) & ((1 << bits) - 1)


@cuda.jit(device=True, inline=True)
def kquant_run(codes, qh, scales, mins, subs, wf, h2f, fmt, row, k0, count, buf):
    """Q2_K .. Q6_K: low bits as nibbles per lo_span or 2-bit fields, high bits in qh, sub-block
    scales in one of the packings (kquants.py)."""
    b = k0 // 256
    d = h2f[scales[row, b]]
    j0 = k0 - b * 256
    packing, sub = fmt[7], 32 if fmt[7] == 0 else 16    # "k6" packs sub-blocks of 32, the others of 16
    s = j0 // sub
    m = 0
    if packing == 0:                              # "k6": 6-bit sub-block scales and mins, 12 bytes
        base = b * 12
        if s < 4:
            sc = int32(subs[row, base + s]) & 63
            m = int32(subs[row, base + s + 4]) & 63
        else:
            mixed = int32(subs[row, base + s + 4])
            sc = (mixed & 15) | ((int32(subs[row, base + s - 4]) >> 6) << 4)
            m = (mixed >> 4) | ((int32(subs[row, base + s]) >> 6) << 4)
    elif packing == 1:                            # "k4": scale and min nibbles, a byte each
        byte = int32(subs[row, b * 16 + s])
        sc, m = byte & 15, byte >> 4
    elif packing == 2:                            # "k3": 6-bit scales + 32, 12 bytes
        low = (int32(subs[row, b * 12 + s % 8]) >> (4 * (s // 8))) & 15
        high = (int32(subs[row, b * 12 + 8 + s % 4]) >> (2 * (s // 4))) & 3
        sc = (low | (high << 4)) - 32
    else:                                         # "i8": int8 sub-block scales
        sc = int32(subs[row, b * 16 + s])
        sc = sc - 256 if sc > 127 else sc
    scale = d * float32(sc)
    low_value = h2f[mins[row, b]] * float32(m) if fmt[5] else float32(0)
    span, h, lo_bits = fmt[2], fmt[3], fmt[6]
    half = span // 2
    for i in range(count):
        j = j0 + i
        if lo_bits == 2:
            q = bit_field(codes, row, b * 64, 2, j)
        else:
            s = j // span
            jj = j - s * span
            if jj < half:
                q = int32(codes[row, b * 128 + s * half + jj]) & 15
            else:
                q = int32(codes[row, b * 128 + s * half + jj - half]) >> 4
        if h > 0:
            q |= bit_field(qh, row, b * 32 * h, h, j) << lo_bits
        if fmt[5]:
            buf[i] = scale * float32(q) - low_value
        else:
            buf[i] = scale * (float32(q) - float32(fmt[4]))


RUN = 8     # weights one call dequantizes: within one group / sub-block, whose scales it reads once
DEQUANT_RUN = {DENSE: dense_run, GROUP: group_run, KQUANT: kquant_run}
