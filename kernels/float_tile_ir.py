"""A float32 GEMM tile in LLVM vector IR, for attention over a prompt (kernels/attention.py).

    C[i, 0:16] = sum over kk < k of A[i, kk] * B[kk, 0:16],   i < 4

The 4 x 16 sums stay in eight vectors of eight floats for the whole k loop; each step loads two
vectors of B's row kk, broadcasts A's four values and makes eight multiply-adds. Every sum runs in
kk order, so the result does not depend on how the compiler schedules it. A product and its sum
are `llvm.fmuladd`: one fused multiply-add where the CPU has it (avx2, avx512, NEON), a multiply
and an add where it does not. Plain vector IR, no CPU-specific intrinsics: every path the
kernels have compiles it as it is.

In IR so that the 64 sums certainly stay in registers (8 of avx2's 16 vectors) through the k loop. With
B's block in L1 it ran at 40-42 GMAC/s on one core of a 2-core Zen 3 VM, from L2 (a 128 x 512 B)
at 26. Attention before it took a dot product per query and key, each ending in a horizontal sum.
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .vector_ir import F32, I64, _splat, _vec

TILE_ROWS, TILE_COLS = 4, 16
LANES = 8


def _define(module):
    """void f(f32* a, i64 lda, f32* b, i64 ldb, i64 k, f32* c, i64 ldc)"""
    f32p, f8 = F32.as_pointer(), _vec(F32, LANES)
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [f32p, I64, f32p, I64, I64, f32p, I64]),
                     "qllama_float_tile_4x16")
    fn.linkage = "internal"
    fn.attributes.add("alwaysinline")
    a, lda, bp, ldb, k, c, ldc = fn.args
    entry, loop, done = fn.append_basic_block("entry"), fn.append_basic_block("loop"), fn.append_basic_block("done")
    fmuladd = cgutils.get_or_insert_function(module, ir.FunctionType(f8, [f8, f8, f8]), "llvm.fmuladd.v8f32")
    zero = ir.Constant(f8, [0.0] * LANES)
    n_acc = TILE_ROWS * TILE_COLS // LANES

    b = ir.IRBuilder(entry)
    b.cbranch(b.icmp_signed(">", k, ir.Constant(I64, 0)), loop, done)

    b = ir.IRBuilder(loop)
    kk = b.phi(I64)
    accs = [b.phi(f8) for _ in range(n_acc)]
    row = b.gep(bp, [b.mul(kk, ldb)])
    bv = [b.load(b.bitcast(b.gep(row, [ir.Constant(I64, LANES * v)]), f8.as_pointer()), align=4)
          for v in range(TILE_COLS // LANES)]
    new = []
    for i in range(TILE_ROWS):
        x = _splat(b, b.load(b.gep(a, [b.add(b.mul(ir.Constant(I64, i), lda), kk)])), LANES)
        for v in range(TILE_COLS // LANES):
            new.append(b.call(fmuladd, [x, bv[v], accs[len(new)]]))
    kk_next = b.add(kk, ir.Constant(I64, 1))
    b.cbranch(b.icmp_signed("<", kk_next, k), loop, done)
    kk.add_incoming(ir.Constant(I64, 0), entry)
    kk.add_incoming(kk_next, loop)
    for acc, value in zip(accs, new):
        acc.add_incoming(zero, entry)
        acc.add_incoming(value, loop)

    b = ir.IRBuilder(done)
    sums = []
    for n in range(n_acc):
        s = b.phi(f8)
        s.add_incoming(zero, entry)
        s.add_incoming(new[n], loop)
        sums.append(s)
    for i in range(TILE_ROWS):
        out_row = b.gep(c, [b.mul(ir.Constant(I64, i), ldc)])
        for v in range(TILE_COLS // LANES):
            p = b.bitcast(b.gep(out_row, [ir.Constant(I64, LANES * v)]), f8.as_pointer())
            b.store(sums[i * (TILE_COLS // LANES) + v], p, align=4)
    b.ret_void()
    return fn


@intrinsic
def float_tile(typingctx, a, a_at, lda, bm, b_at, ldb, k, c, c_at, ldc):
    """float_tile(a, a_at, lda, b, b_at, ldb, k, c, c_at, ldc): the tile of the module docstring on
    float32 C-contiguous arrays of any shape, addressed in elements from their first: A[i, kk] is
    a.flat[a_at + i * lda + kk], B[kk, j] is b.flat[b_at + kk * ldb + j], C[i, j] is
    c.flat[c_at + i * ldc + j]. Unchecked: the caller keeps every element inside its array."""
    for arr in (a, bm, c):
        if not (isinstance(arr, types.Array) and arr.dtype == types.float32 and arr.layout == "C"):
            return None
    sig = types.void(a, a_at, lda, bm, b_at, ldb, k, c, c_at, ldc)

    def codegen(context, b, signature, args):
        arrays = [context.make_array(t)(context, b, v) for t, v in ((a, args[0]), (bm, args[3]), (c, args[7]))]
        ints = {i: context.cast(b, args[i], signature.args[i], types.int64) for i in (1, 2, 4, 5, 6, 8, 9)}
        fn = b.module.globals.get("qllama_float_tile_4x16") or _define(b.module)
        ptr = [b.gep(arr.data, [ints[i]]) for arr, i in zip(arrays, (1, 4, 8))]
        b.call(fn, [ptr[0], ints[2], ptr[1], ints[5], ints[6], ptr[2], ints[9]])
        return context.get_dummy_value()

    return sig, codegen
