"""Device functions that dequantize a run of weights (row, k0..k0+count) of a matrix from its planes,
as stored, into a local buffer (count <= RUN; a run never crosses a group or sub-block).

One function per family of formats, all with the same arguments so one kernel template serves
them all (matmul.py): the planes (codes, qh, scales, mins, subscales; a 1x1 dummy where a format
has none), a dense float32 matrix (for float checkpoints), the fp16 -> float32 table, and the
format's numbers `fmt` = (bits, group_size, lo_span, hi_bits, offset, has_mins) (format_numbers).
The layouts are quantize/formats.py's and quantize/kquants.py's; these read a run at a time, where
the numpy references unpack whole blocks.
"""
from __future__ import annotations

import numpy as np
from numba import cuda, float32, int32

from ..quantize.kquants import QK_K, KQuantFormat

DENSE, GROUP, KQUANT = "dense", "group", "kquant"


def format_numbers(fmt) -> tuple[int, ...]:
    """The numbers the device functions read, for a FORMATS entry (None: a dense float matrix)."""
    if fmt is None:
        return (32, 1, 0, 0, 0, 0)
    if isinstance(fmt, KQuantFormat):
        return (fmt.bits, QK_K, fmt.lo_span, fmt.hi_bits, fmt.offset, int(fmt.has_mins))
    return (fmt.bits, fmt.group_size, 0, 0, fmt.family.offset, int(not fmt.symmetric))


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
def kquant_run(codes, qh, scales, mins, subs, wf, h2f, fmt, row, k0, count, buf):
    """Q4_K/Q5_K/Q6_K: low nibbles packed per lo_span, high bits in qh, sub-block scales (kquants.py)."""
    b = k0 // 256
    d = h2f[scales[row, b]]
    j0 = k0 - b * 256
    if fmt[5]:                                    # 6-bit sub-block scales and mins, 12 bytes
        s = j0 // 32
        base = b * 12
        if s < 4:
            sc = int32(subs[row, base + s]) & 63
            m = int32(subs[row, base + s + 4]) & 63
        else:
            mixed = int32(subs[row, base + s + 4])
            sc = (mixed & 15) | ((int32(subs[row, base + s - 4]) >> 6) << 4)
            m = (mixed >> 4) | ((int32(subs[row, base + s]) >> 6) << 4)
        scale, low = d * float32(sc), h2f[mins[row, b]] * float32(m)
    else:
        sc = int32(subs[row, b * 16 + j0 // 16])  # int8 sub-block scales, one per 16
        scale, low = d * float32(sc - 256 if sc > 127 else sc), float32(0)
    span, h = fmt[2], fmt[3]
    half = span // 2
    for i in range(count):
        j = j0 + i
        s = j // span
        jj = j - s * span
        if jj < half:
            q = int32(codes[row, b * 128 + s * half + jj]) & 15
        else:
            q = int32(codes[row, b * 128 + s * half + jj - half]) >> 4
        if h > 0:
            per = 32 * (8 // h)                   # weights whose high bits share 32 bytes
            grp = j // per
            field = (j - grp * per) // 32
            byte = int32(qh[row, b * 32 * h + grp * 32 + (j - grp * per - field * 32)])
            q |= ((byte >> (h * field)) & ((1 << h) - 1)) << 4
        if fmt[5]:
            buf[i] = scale * float32(q) - low
        else:
            buf[i] = scale * (float32(q) - float32(fmt[4]))


RUN = 8     # weights one call dequantizes: within one group / sub-block, whose scales it reads once
DEQUANT_RUN = {DENSE: dense_run, GROUP: group_run, KQUANT: kquant_run}
