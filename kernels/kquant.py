"""Matmuls of the k-quant formats (Q2_K .. Q6_K): decode GEMV and prefill GEMM on their planes.

The planes are interleaved by eight rows at load (kquant_ir.py), the rows padded to whole blocks of
eight with zero rows (real models' row counts are multiples of eight; a padded row costs one
block's bytes once and its outputs are cut off). The kernel runs over tiles of eight rows by eight,
four or one tokens, threads splitting the blocks of rows, as matmul.py's interleaved kernel does;
it reads exactly the bytes the file stores (4.5 bits per weight for Q4_K). The activations are
quantized here too: int8 with one scale per super-block and the codes' sums per sub-block, which
the kernel's integer scaling needs (kquant_ir.py).
"""
from __future__ import annotations

import functools

import numba as nb
import numpy as np

from . import layout, repack
from .jit import by_rows, kernel
from .kquant_ir import QK_K, kquant_dot
from .layout import ROWS, Prepared
from .matmul import quantize_group
from .vector_ir import unpack_variant, variant

ABSENT = np.empty((0, 0), np.uint8)          # the qh of Q4_K
ABSENT_F16 = np.empty((0, 0), np.uint16)     # the mins of Q6_K
TOKEN_CHUNK = 64                   # prefill's tokens per pass over the rows (as matmul.py)
_dot_8, _dot_4, _dot_1 = kquant_dot(8), kquant_dot(4), kquant_dot(1)


@kernel()
def _quantize_row(x, sub, xq, xd, bsum):
    """x (n_blocks * 256,) float32 -> xq int8 codes, xd (n_blocks,) their scale per super-block
    (amax / 127, ggml's Q8_K), bsum (n_blocks * 256 / sub,) int16 the codes' sums per sub-block."""
    for g in range(xd.shape[0]):
        xd[g], _ = quantize_group(x[g * QK_K:(g + 1) * QK_K], xq[g * QK_K:(g + 1) * QK_K])
    for k in range(bsum.shape[0]):
        s = 0
        for j in range(k * sub, (k + 1) * sub):
            s += np.int32(xq[j])
        bsum[k] = np.int16(s)        # |s| <= 32 * 127


@kernel()
def _quantize_serial(x, sub, xq, xd, bsum):
    for t in range(x.shape[0]):
        _quantize_row(x[t], sub, xq[t], xd[t], bsum[t])


@kernel(parallel=True)
def _quantize_parallel(x, sub, xq, xd, bsum):
    for t in nb.prange(x.shape[0]):
        _quantize_row(x[t], sub, xq[t], xd[t], bsum[t])


_quantize_activations = by_rows(_quantize_serial, _quantize_parallel)


def quantize_input(x: np.ndarray, fmt) -> tuple:
    """x (tokens, in_padded) float32 -> the activation arguments of the matmul: xq int8 (rows
    padded, layout.activation_codes), xd float32 per super-block, bsum int16 per sub-block (kquant_ir.py)."""
    n, width = x.shape
    xq, xd = layout.activation_codes(n, width), np.empty((n, width // QK_K), np.float32)
    bsum = np.empty((n, width // fmt.sub_block), np.int16)
    _quantize_activations(x, fmt.sub_block, xq, xd, bsum)
    return xq, xd, bsum


def input_types(fmt, typeof) -> tuple:
    """The Numba types of quantize_input's arrays (kernels/warmup.py)."""
    return tuple(typeof(np.empty((1, 1), dtype)) for dtype in (np.int8, np.float32, np.int16))


def input_kernels(fmt, typeof) -> list:
    """quantize_input's compiled kernels and their argument types (kernels/warmup.py)."""
    sig = (typeof(np.empty((1, 1), np.float32)), typeof(fmt.sub_block), *input_types(fmt, typeof))
    return [((__name__, "_quantize_serial", None), sig), ((__name__, "_quantize_parallel", None), sig)]


def prepare(parts: list, path: int) -> Prepared:
    """A k-quant matrix's stored bytes (repack.Stored: ggml blocks or planes; several parts are
    fused one after another) -> interleaved planes, the rows padded with zero rows to whole blocks
    of eight, and the kernel: planes (qweight, qh, subscales, scales, mins) in its argument order."""
    fmt = parts[0].fmt
    specs = {p.name: p for p in fmt.planes}
    packed, bad = repack.pack(parts, [repack.PlaneLayout(p.name, p.chunk) for p in fmt.planes],
                              interleave=True, pad_rows=True)
    arrays = []
    for name in ("qweight", "qh", "subscales", "scales", "mins"):
        if name not in specs:
            arrays.append(ABSENT_F16 if name == "mins" else ABSENT)
        else:
            arrays.append(packed[name].view(np.uint16) if specs[name].dtype == "F16" else packed[name])
    v = variant(fmt, path)
    return Prepared(tuple(arrays), Matmul(v), arrays[0].shape[0], True, v, finite=bad == 0)


def dequantize_rows(lin, ids) -> np.ndarray:
    """Rows ids of a QuantLinear of a k-quant -> (len(ids), in_padded) float32, through the table's
    numpy reference (an embedding lookup: a few rows)."""
    fmt = lin.fmt
    names = ("qweight", "qh", "subscales", "scales", "mins")
    specs = {p.name: p for p in fmt.planes}
    planes = {}
    for name, plane in zip(names, lin.planes):
        if name in specs:
            spec = specs[name]
            raw = plane.view(np.uint8)
            gathered = np.stack([layout.row_bytes(raw, spec.nbytes, spec.chunk, int(r)) for r in ids])
            planes[name] = gathered.reshape(-1, spec.nbytes).view(np.float16 if spec.dtype == "F16" else np.uint8)
    return fmt.dequantize_planes(planes).reshape(len(ids), -1)


def row_kernels(lin, typeof) -> list:
    """dequantize_rows compiles nothing (numpy)."""
    return []


DECODE_TOKENS = 4                 # fewer tokens than this run through the one-token kernel


class Matmul:
    """A k-quant's matmul: the one-token kernel for a decode step, the tiled one for a prompt.
    Two compiled functions, not one: in one, the prompt's tiles changed the decode loop's machine
    code (decode of Q6_K 0.7x, measured)."""
    def __init__(self, variant: int):
        self.decode, self.prefill = matmul_kernel(variant, True), matmul_kernel(variant, False)

    def __call__(self, qweight, qh, subscales, scales, mins, xq, xd, bsum, out):
        kernel = self.decode if xq.shape[0] < DECODE_TOKENS else self.prefill
        kernel(qweight, qh, subscales, scales, mins, xq, xd, bsum, out)


def kernel_refs(variant: int) -> list:
    """(function name, arguments) of the compiled kernels of a variant (kernels/warmup.py)."""
    return [("matmul_kernel", (variant, True)), ("matmul_kernel", (variant, False))]


@functools.cache
def matmul_kernel(variant: int, decode: bool):
    """The compiled matmul of one k-quant format and path (vector_ir.variant): a token at a time
    (decode), or tiles of eight, four and one tokens (prefill)."""
    unpack_variant(variant)          # a number outside the table fails here, not in the compiler
    if decode:
        @kernel(parallel=True)
        def matmul(qweight, qh, subscales, scales, mins, xq, xd, bsum, out):
            """out (tokens, rows) = x @ W.T, a token at a time."""
            for i in nb.prange(qweight.shape[0] // ROWS):
                for t in range(xq.shape[0]):
                    _dot_1(qweight, qh, subscales, scales, mins, i, xq, xd, bsum, t, out, variant)
        return matmul

    @kernel(parallel=True)
    def matmul(qweight, qh, subscales, scales, mins, xq, xd, bsum, out):
        """out (tokens, rows) = x @ W.T, rows in whole interleaved blocks of eight."""
        blocks, n = qweight.shape[0] // ROWS, xq.shape[0]
        for start in range(0, n, TOKEN_CHUNK):
            end = min(n, start + TOKEN_CHUNK)
            for i in nb.prange(blocks):
                t = start
                while t + 8 <= end:
                    _dot_8(qweight, qh, subscales, scales, mins, i, xq, xd, bsum, t, out, variant)
                    t += 8
                if t + 4 <= end:
                    _dot_4(qweight, qh, subscales, scales, mins, i, xq, xd, bsum, t, out, variant)
                    t += 4
                while t < end:
                    _dot_1(qweight, qh, subscales, scales, mins, i, xq, xd, bsum, t, out, variant)
                    t += 1

    return matmul
