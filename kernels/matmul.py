"""Dequantize-matmul kernels that read qllama's planes directly (Numba, any CPU Numba supports).

The activation is quantized to int8 per group once per matmul, and the integer block dot products
run in LLVM vector IR over tiles of weight rows times tokens: decode (one token) is a GEMV that
reads each weight byte once; prefill (many tokens) is a GEMM whose tiles load each weight group
once for several tokens. Planes are interleaved by eight rows when loaded (layout.py,
interleaved_ir.py: tiles of eight rows by eight tokens), except 8-bit planes on the avx2 path,
read as stored (vector_ir.py: four rows by four tokens); see interleaves(). Threads split the
output rows (prange); a thread's rows stay in its L1 while it runs through the tokens.

Every format's value is d * code + c per group (q8: c = 0; q4: c = -8 d; q4a: c = m), so
  y[r] = sum_g d[r,g] * dx[g] * (codes[r,g,:] . xq[g,:]) + c[r,g] * xsum[g].
Scales and mins stay fp16 (read as uint16 bits, converted in the kernel): Numba has no float16 on
the CPU, and float32 copies would add a third to the bytes a 4-bit GEMV reads.
"""
from __future__ import annotations

import functools

import numba as nb
import numpy as np

from . import layout, repack
from .interleaved_ir import BIAS_8BIT, block_dot
from .layout import ROWS as BLOCK, Prepared
from .jit import by_rows, kernel
from .vector_ir import AVX2, AVX512, half_to_float, tile_dot, unpack_variant, variant

NO_MINS = np.empty((0, 0), np.uint16)   # the mins argument of symmetric formats

ROWS, TOKENS = 4, 4                 # the tile; its tails run as single rows / single tokens
_dot_rt, _dot_r1, _dot_1t, _dot_11 = tile_dot(ROWS, TOKENS), tile_dot(ROWS, 1), tile_dot(1, TOKENS), tile_dot(1, 1)
# planes in 8-row interleaved blocks (layout.py): eight tokens at a time (measured: 8 > 6 > 4,
# about 15% from 4 to 8), then four, then one
BLOCK_TOKENS = 8
_block_8, _block_4, _block_1 = block_dot(BLOCK_TOKENS), block_dot(4), block_dot(1)
TOKEN_CHUNK = 64                    # prefill's tokens per pass over the rows: their codes stay in L2


@kernel()  # no fastmath: amax / 127 must not become amax * (1 / 127), which rounds differently
def quantize_group(v, q):
    """v (n,) float32 -> q (n,) int8 codes rint(v / d); returns d = amax / 127 and the codes' sum."""
    amax = np.float32(0.0)
    for j in range(v.shape[0]):
        amax = max(amax, abs(v[j]))
    d = amax / np.float32(127.0)
    inv = np.float32(1.0) / d if d > 0 else np.float32(0.0)
    s = 0
    for j in range(v.shape[0]):
        c = np.int32(np.rint(v[j] * inv))
        q[j] = np.int8(c)
        s += c
    return d, s


@kernel()
def _quantize_row(x, group, xq, xd, xsum):
    """x (n_groups * group,) float32 -> xq int8 codes, xd (n_groups,) scales (amax / 127), and
    xsum (n_groups,) the sums of the dequantized x per group (for the offsets and mins: with the sum
    of the same x the codes saw, the kernel computes W . x_quantized exactly, and the large offset
    term of 4-bit codes cancels instead of leaving 8 d times the activation's rounding error)."""
    for g in range(xd.shape[0]):
        d, s = quantize_group(x[g * group:(g + 1) * group], xq[g * group:(g + 1) * group])
        xd[g] = d
        xsum[g] = d * np.float32(s)


@kernel()
def _quantize_serial(x, group, xq, xd, xsum):
    for t in range(x.shape[0]):
        _quantize_row(x[t], group, xq[t], xd[t], xsum[t])


@kernel(parallel=True)
def _quantize_parallel(x, group, xq, xd, xsum):
    for t in nb.prange(x.shape[0]):
        _quantize_row(x[t], group, xq[t], xd[t], xsum[t])


# quantize_activations(x, group, xq, xd, xsum): each row of x (tokens, n_groups * group) into the
# rows of xq, xd, xsum; a prompt's rows across threads
quantize_activations = by_rows(_quantize_serial, _quantize_parallel)


def quantize_input(x: np.ndarray, fmt) -> tuple:
    """x (tokens, in_padded) float32 -> the activation arguments of the matmul: xq (rows padded,
    layout.activation_codes), xd, xsum."""
    n, n_act = len(x), x.shape[1] // fmt.act_group
    xq = layout.activation_codes(n, x.shape[1])
    xd, xsum = np.empty((n, n_act), np.float32), np.empty((n, n_act), np.float32)
    quantize_activations(x, fmt.act_group, xq, xd, xsum)
    return xq, xd, xsum


def kernel_refs(variant: int) -> list:
    """(function name, arguments) of the compiled kernels of a variant (kernels/warmup.py)."""
    return [("matmul_kernel", (variant,))]


def input_types(fmt, typeof) -> tuple:
    """The Numba types of quantize_input's arrays (kernels/warmup.py)."""
    f32_2 = typeof(np.empty((1, 1), np.float32))
    return typeof(np.empty((1, 1), np.int8)), f32_2, f32_2


def input_kernels(fmt, typeof) -> list:
    """quantize_input's compiled kernels and their argument types (kernels/warmup.py)."""
    sig = (typeof(np.empty((1, 1), np.float32)), typeof(fmt.act_group), *input_types(fmt, typeof))
    return [((__name__, "_quantize_serial", None), sig), ((__name__, "_quantize_parallel", None), sig)]


def interleaves(fmt, path: int) -> bool:
    """Whether the kernel of this format and path reads 8-row interleaved planes (layout.py): all
    4-bit ones, and 8-bit ones except on avx2 (vpmaddubsw cannot take 8-bit codes made unsigned,
    and the sign trick of the row tiles costs what interleaving saves)."""
    return fmt.bits == 4 or path != AVX2


def prepare(parts: list, path: int) -> Prepared:
    """A group-wise matrix's stored bytes (repack.Stored: ggml blocks or planes; several parts are
    fused one after another) -> the arrays and kernel that multiply them: 8-row interleaved where
    interleaves() says so (the 8-bit codes biased), else the planes in row order."""
    fmt = parts[0].fmt
    interleaved = interleaves(fmt, path)
    layouts = [repack.PlaneLayout("qweight", 4, BIAS_8BIT if fmt.bits == 8 else 0), repack.PlaneLayout("scales", 2)]
    if not fmt.symmetric:
        layouts.append(repack.PlaneLayout("mins", 2))
    packed, bad = repack.pack(parts, layouts, interleave=interleaved, pad_rows=False)
    qweight, scales = packed["qweight"], packed["scales"].view(np.uint16)     # fp16 bits, read by the kernels
    mins = packed["mins"].view(np.uint16) if "mins" in packed else NO_MINS
    if not interleaved and path == AVX512 and fmt.group_size == 32 and scales.shape[1] % 2:
        path = AVX2                 # the avx512 row-tile kernel takes groups of 32 in pairs
    v = variant(fmt, path)
    return Prepared((qweight, scales, mins), matmul_kernel(v), qweight.shape[0], interleaved, v, finite=bad == 0)


def dequantize_rows(lin, ids) -> np.ndarray:
    """Rows ids of a QuantLinear of a group-wise format -> (len(ids), in_padded) float32."""
    qweight, scales, mins = lin.planes
    fmt = lin.fmt
    bits, offset = fmt.bits, fmt.family.offset
    out = np.empty((len(ids), lin.in_padded), np.float32)
    for i, r in enumerate(ids):
        r = int(r)
        if lin.interleaved:        # the row gathered back into the file's layout
            codes = layout.row_codes(qweight, fmt.qbytes_per_group, r)[None]
            if bits == 8 and r < layout.whole_rows(qweight):
                codes ^= np.uint8(BIAS_8BIT)
            row_mins = mins if mins is NO_MINS else layout.row_groups(mins, r)[None]
            dequantize(codes, layout.row_groups(scales, r)[None], row_mins, bits, offset, 0, 1, out[i:i + 1])
        else:
            dequantize(qweight, scales, mins, bits, offset, r, r + 1, out[i:i + 1])
    return out


def row_kernels(lin, typeof) -> list:
    """What dequantize_rows compiles, for kernels/warmup.py: [(kernel reference, argument types)]."""
    fmt = lin.fmt
    ints = (typeof(fmt.bits), typeof(fmt.family.offset), nb.int64, nb.int64)
    return [(("qllama.kernels.matmul", "dequantize", None), (*map(typeof, lin.planes), *ints, typeof(np.empty((1, 1), np.float32))))]


@functools.cache
def matmul_kernel(variant: int):
    """The compiled matmul for one format and path (vector_ir.variant()), reading planes as
    interleaves() says (8-bit interleaved codes biased: prepare)."""
    fmt, path = unpack_variant(variant)
    return _interleaved_kernel(variant) if interleaves(fmt, path) else _row_tile_kernel(variant)


def _interleaved_kernel(variant: int):
    # rows after the last whole block: the row-tile intrinsic, avx2 for avx512 (which takes groups in pairs)
    tail = variant - 1 if unpack_variant(variant)[1] == AVX512 else variant

    @kernel(parallel=True)
    def matmul(qweight, scales, mins, xq, xd, xsum, out):
        """out (tokens, rows) = x @ W.T: whole blocks of eight rows by the interleaved kernel, the
        rows after the last whole block one at a time."""
        rows, n = qweight.shape[0], xq.shape[0]
        blocks = rows // BLOCK
        for start in range(0, n, TOKEN_CHUNK):
            end = min(n, start + TOKEN_CHUNK)
            for i in nb.prange(blocks + rows - blocks * BLOCK):
                if i < blocks:
                    t = start
                    while t + BLOCK_TOKENS <= end:
                        _block_8(qweight, scales, mins, i, xq, xd, xsum, t, out, variant)
                        t += BLOCK_TOKENS
                    if t + 4 <= end:
                        _block_4(qweight, scales, mins, i, xq, xd, xsum, t, out, variant)
                        t += 4
                    while t < end:
                        _block_1(qweight, scales, mins, i, xq, xd, xsum, t, out, variant)
                        t += 1
                else:
                    for t in range(start, end):
                        _dot_11(qweight, scales, mins, blocks * BLOCK + i - blocks, xq, xd, xsum, t, out, tail)

    return matmul


def _row_tile_kernel(variant: int):
    """The variant is a constant of the closure, so each is its own specialization, compiled (or
    loaded from Numba's cache, whose key includes the closure's values) only when a model uses it."""

    @kernel(parallel=True)
    def matmul(qweight, scales, mins, xq, xd, xsum, out):
        """out (tokens, rows) = x @ W.T for W's planes and x quantized by quantize_activations."""
        rows, n = qweight.shape[0], xq.shape[0]
        row_tiles, tok_tiles = rows // ROWS, n // TOKENS
        if n < TOKENS:  # decode: also four rows at a time (measured on 8-bit matrices out of cache:
            # one row at a time streams at 0.8x)
            for i in nb.prange(row_tiles + rows % ROWS):
                for t in range(n):
                    if i < row_tiles:
                        _dot_r1(qweight, scales, mins, i * ROWS, xq, xd, xsum, t, out, variant)
                    else:
                        _dot_11(qweight, scales, mins, row_tiles * ROWS + i - row_tiles, xq, xd, xsum, t, out, variant)
            return
        for i in nb.prange(row_tiles + rows % ROWS):
            whole = i < row_tiles
            r = i * ROWS if whole else row_tiles * ROWS + i - row_tiles
            for j in range(tok_tiles + n % TOKENS):
                t = j * TOKENS if j < tok_tiles else tok_tiles * TOKENS + j - tok_tiles
                if whole and j < tok_tiles:
                    _dot_rt(qweight, scales, mins, r, xq, xd, xsum, t, out, variant)
                elif whole:
                    _dot_r1(qweight, scales, mins, r, xq, xd, xsum, t, out, variant)
                elif j < tok_tiles:
                    _dot_1t(qweight, scales, mins, r, xq, xd, xsum, t, out, variant)
                else:
                    _dot_11(qweight, scales, mins, r, xq, xd, xsum, t, out, variant)

    return matmul


@kernel(parallel=True, fastmath=True)
def dequantize(qweight, scales, mins, bits, offset, r0, r1, out):
    """Rows r0..r1 of the planes -> out (r1 - r0, in_padded) float32. scales, mins: fp16 bits (uint16);
    mins of length 0 for symmetric formats, whose c is -offset * d."""
    n_groups = scales.shape[1]
    qbytes = qweight.shape[1] // n_groups
    codes = qweight.view(np.int8)
    has_mins = mins.size > 0
    for r in nb.prange(r1 - r0):
        for gi in range(n_groups):
            d = half_to_float(scales[r0 + r, gi])
            c = half_to_float(mins[r0 + r, gi]) if has_mins else -np.float32(offset) * d
            if bits == 4:
                for j in range(qbytes):
                    b = np.int32(qweight[r0 + r, gi * qbytes + j])
                    out[r, 2 * gi * qbytes + j] = d * np.float32(b & 15) + c
                    out[r, (2 * gi + 1) * qbytes + j] = d * np.float32(b >> 4) + c
            else:
                for j in range(qbytes):
                    out[r, gi * qbytes + j] = d * np.float32(codes[r0 + r, gi * qbytes + j]) + c
