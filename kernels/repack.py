"""Stored quantized bytes -> the planes a kernel reads, in one parallel pass per plane.

A matrix is stored either as ggml blocks (a GGUF: every field of a block side by side) or as
planes (a qllama file, or a matrix quantized in memory: one array per field). Either way each
plane's bytes are a field at a fixed offset of fixed-size blocks along a row, so one kernel copies
a field out of every block straight into its final place: 8-row interleaved (layout.py) where the
kernel wants it, the 8-bit codes' sign bias flipped, zero rows padding the last block of eight,
and the parts of a fused matrix (a layer's q, k, v) one after another. The numpy path this
replaces (slice the fields, interleave, concatenate the parts) made three copies single-threaded:
a 7B GGUF took 20+ s to load.

The same pass counts the fp16 values that are NaN or infinite (exponent bits all ones), so a broken
file is refused without another read of its scales. While a model loads, the planes are the arrays
of its plane cache entry (qllama/plane_cache.py): written here the first time, mapped as they are
(no copy, the counts replayed) the next.
"""
from __future__ import annotations

from dataclasses import dataclass

import numba as nb
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

from .. import plane_cache
from .jit import kernel
from .layout import ROWS


@dataclass(frozen=True)
class Stored:
    """One quantized matrix's bytes as its source holds them."""
    fmt: object                     # the FORMATS entry
    shape: tuple[int, int]          # (out, in)
    fields: dict                    # plane name -> (uint8 (out, row bytes), bytes per block, offset in a block)
    order: np.ndarray | None = None  # the stored row of each output row, or None for the same order
    done: object = None             # called once the bytes are copied: drops the source's pages

    @property
    def n_blocks(self) -> int:
        return -(-self.shape[1] // self.fmt.group_size)

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.n_blocks * sum(p.nbytes for p in self.fmt.planes)


def _bytes(a: np.ndarray) -> np.ndarray:
    """A 2-D array (a memory map too) as a plain ndarray of its bytes, one row per row."""
    a = np.ascontiguousarray(a).view(np.ndarray)
    return a.view(np.uint8).reshape(a.shape[0], -1)


def stored_planes(q, order: np.ndarray | None = None, done=None) -> Stored:
    """A QuantizedTensor (planes) as Stored: each plane is its own field at offset 0."""
    fields = {p.name: (_bytes(q.planes[p.name]), p.nbytes, 0) for p in q.fmt.planes}
    return Stored(q.fmt, tuple(q.shape), fields, order, done)


def stored_ggml(blocks: np.ndarray, shape: tuple[int, int], fmt, order: np.ndarray | None = None,
                done=None) -> Stored:
    """ggml blocks (out, n_blocks * block bytes) of fmt.ggml_type as Stored: each field at its offset
    in the block, in fmt.ggml_fields order. Rows must be whole blocks (the readers check)."""
    by_name = {p.name: p for p in fmt.planes}
    block, fields, offset = sum(by_name[f].nbytes for f in fmt.ggml_fields), {}, 0
    raw = _bytes(blocks)
    if shape[1] % fmt.group_size or raw.shape != (shape[0], shape[1] // fmt.group_size * block):
        raise ValueError(f"{fmt.ggml_type} blocks of {raw.shape} do not hold a {shape} matrix")
    for name in fmt.ggml_fields:
        fields[name] = (raw, block, offset)
        offset += by_name[name].nbytes
    return Stored(fmt, tuple(shape), {p.name: fields[p.name] for p in fmt.planes}, order, done)


@intrinsic
def _copy_word(typingctx, src, src_at, dst, dst_at, xor):
    """dst[dst_at:dst_at + 4] = src[src_at:src_at + 4] ^ xor (each byte), as one unaligned 32-bit
    load and store: a ggml block's fields sit at any byte offset, which numpy cannot view as words."""
    def codegen(context, b, signature, args):
        s_t, _, d_t, _, _ = signature.args
        s, s_at, d, d_at, x = args
        word = ir.IntType(32).as_pointer()
        src_ptr = b.bitcast(b.gep(context.make_array(s_t)(context, b, s).data, [s_at]), word)
        dst_ptr = b.bitcast(b.gep(context.make_array(d_t)(context, b, d).data, [d_at]), word)
        mask = b.mul(b.zext(x, ir.IntType(32)), ir.Constant(ir.IntType(32), 0x01010101))
        b.store(b.xor(b.load(src_ptr, align=1), mask), dst_ptr, align=1)
        return context.get_dummy_value()
    return types.void(src, types.intp, dst, types.intp, types.uint8), codegen


@kernel()
def _copy_row(s, block, offset, nbytes, chunk, n_blocks, xor, flat, out0, step):
    """One row's field of every block -> flat: block g's chunk c at out0 + (g * nbytes + c) * step.
    Chunks of four (the codes: nearly all the bytes) go as one word each."""
    if chunk == 4:
        for g in range(n_blocks):
            at = g * block + offset
            for c in range(0, nbytes, 4):
                _copy_word(s, at + c, flat, out0 + (g * nbytes + c) * step, xor)
        return
    for g in range(n_blocks):
        at = g * block + offset
        for c in range(0, nbytes, chunk):
            out = out0 + (g * nbytes + c) * step
            for j in range(chunk):
                flat[out + j] = s[at + c + j] ^ xor


@kernel()
def _count_nonfinite(s, block, offset, nbytes, n_blocks) -> int:
    """fp16 values in one row's field whose exponent bits are all ones (NaN or infinite)."""
    bad = 0
    for g in range(n_blocks):
        for k in range(g * block + offset + 1, g * block + offset + nbytes, 2):
            bad += (s[k] & 0x7C) == 0x7C
    return bad


@kernel(parallel=True)
def _copy_field(src, order, block, offset, nbytes, chunk, rows, blocked_rows, xor, is_f16, flat, width, row0):
    """The field (offset, nbytes) of every block of src's rows (src row order[r] for output row r)
    -> rows row0.. of flat (rows of `width` bytes): rows below blocked_rows in blocks of eight,
    interleaved by `chunk` bytes (layout.interleave_bytes) and xor-ed, rows at or past `rows`
    zero; later rows copied as they are. Returns the number of non-finite fp16 values when is_f16."""
    n_blocks = width // nbytes
    n_row_blocks = blocked_rows // ROWS
    units = n_row_blocks + max(rows - blocked_rows, 0)
    bad = np.zeros(units, np.int64)
    zero = np.zeros(src.shape[1], np.uint8)
    for u in nb.prange(units):
        if u < n_row_blocks:
            base = (row0 + u * ROWS) * width
            for i in range(ROWS):
                r = u * ROWS + i
                if r < rows:
                    _copy_row(src[order[r]], block, offset, nbytes, chunk, n_blocks, xor, flat, base + i * chunk, ROWS)
                    if is_f16:
                        bad[u] += _count_nonfinite(src[order[r]], block, offset, nbytes, n_blocks)
                else:                           # a padding row: zeros in its interleaved places
                    _copy_row(zero, block, offset, nbytes, chunk, n_blocks, np.uint8(0), flat, base + i * chunk, ROWS)
        else:
            r = blocked_rows + u - n_row_blocks
            _copy_row(src[order[r]], block, offset, nbytes, 4 if nbytes % 4 == 0 else nbytes, n_blocks, np.uint8(0),
                      flat, (row0 + r) * width, 1)
            if is_f16:
                bad[u] += _count_nonfinite(src[order[r]], block, offset, nbytes, n_blocks)
    return bad.sum()


@dataclass(frozen=True)
class PlaneLayout:
    """How a kernel wants one plane: interleaved by `chunk` bytes, xor-ed with `xor` there."""
    name: str
    chunk: int
    xor: int = 0


def pack(parts: list[Stored], layouts: list[PlaneLayout], interleave: bool, pad_rows: bool) -> tuple[dict, int]:
    """The parts (one format, one input width; every part but the last a whole number of blocks of
    eight rows when interleaving) -> ({plane name: uint8 (out rows, n_blocks * bytes per block)},
    the count of non-finite fp16 values). Rows are the parts' one after another, padded with zero
    rows to a multiple of eight when pad_rows."""
    fmt, n_blocks = parts[0].fmt, parts[0].n_blocks
    rows = sum(p.shape[0] for p in parts)
    out_rows = -(-rows // ROWS) * ROWS if pad_rows else rows
    specs = {p.name: p for p in fmt.planes}
    planes, bad = {}, 0
    cache = plane_cache.active()      # a model's load: the planes live in (or come from) its cache entry
    for lay in layouts:
        spec = specs[lay.name]
        shape = (out_rows, n_blocks * spec.nbytes)
        dst, filled = cache.array(shape) if cache is not None else (np.empty(shape, np.uint8), False)
        planes[lay.name] = dst
        row0 = 0
        for i, part in enumerate(parts if not filled else ()):
            src, block, offset = part.fields[lay.name]
            n = part.shape[0]
            last = i == len(parts) - 1
            n_out = out_rows - row0 if last else n     # the last part takes the padding rows
            blocked = (n_out // ROWS * ROWS if not pad_rows else n_out) if interleave else 0
            order = np.arange(n, dtype=np.int64) if part.order is None else part.order.astype(np.int64, copy=False)
            bad += _copy_field(src, order, block, offset, spec.nbytes, lay.chunk if interleave else spec.nbytes,
                               n, blocked, np.uint8(lay.xor), spec.dtype == "F16", dst.reshape(-1), dst.shape[1], row0)
            row0 += n
    for part in parts:
        if part.done is not None:
            part.done()
    return planes, int(bad if cache is None else cache.counted(bad))


def in_row_order(part: Stored):
    """One matrix's planes as the file's plane layout has them (rows in order, nothing interleaved):
    (quantize.tensor.QuantizedTensor, count of non-finite fp16 values). For backends that read the
    planes as stored (the GPU's)."""
    from ..quantize.planes import NUMPY
    from ..quantize.tensor import QuantizedTensor
    packed, bad = pack([part], [PlaneLayout(p.name, p.nbytes) for p in part.fmt.planes], interleave=False, pad_rows=False)
    planes = {p.name: packed[p.name].view(NUMPY[p.dtype]) for p in part.fmt.planes}
    return QuantizedTensor(part.fmt, part.shape, planes), bad
