"""Dot products over eight interleaved rows, whose lanes are rows (LLVM vector IR).

In the planes' own layout a group's 32 codes fill one vector, so every group of every row pays
for converting its integer sum to float and scaling it: more instructions than the integer
products themselves. Here eight rows are interleaved (layout.py: per group, four bytes of each
row in turn), so one 32-byte load holds four codes of each of eight rows, the activation's
matching four codes are broadcast to all eight, and the integer products of a whole group land in
eight i32 lanes, one per row. The float work (convert, times the eight rows' scales, accumulate)
is then one vector per group for eight rows, and no horizontal sum is needed: lane r is row r.
llama.cpp repacks Q4_0 the same way for its x86 and ARM GEMMs.

4-bit: packed byte j of a group holds code j (low nibble) and code j + G/2 (high nibble), so the
chunk of bytes 4c..4c+3 unpacks to codes 4c.. (low) and G/2 + 4c.. (high), against the
activation's codes at the same positions. 8-bit: chunk c is codes 4c.., stored + 128 (unsigned).
Integer sums: avx512 `vpdpbusd` adds four u8 x s8 products into each row's i32 lane; avx2
`vpmaddubsw` (or widened multiplies, portable) makes i16 pair sums, eight such vectors are added
in i16 (4-bit: 16 products of |15 * 127| = 30480, no overflow; 8-bit: one vector at a time), then
the four lanes of a row into i32.
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .vector_ir import (AVX512, F32, I8, I16, I32, I64, PATHS, PORTABLE, _const, _half_to_float, _load_vec, _splat,
                        _vec, best_path, host_features, unpack_variant)

ROWS = 8
BIAS_8BIT = 128                   # 8-bit codes are stored + 128: vpdpbusd multiplies unsigned by signed
BIASED_OFFSET = {8: BIAS_8BIT}    # so their offset, like 4-bit codes' 8, is taken back with xsum
VECTORS_PER_I16_SUM = 8           # u8 x s8 pair sums added in i16 before widening (see above)


def _pairs_u8s8(b, w, x, path):
    """<32 x i8> unsigned codes x <32 x i8> signed broadcast codes -> i16 partial products."""
    if path == PORTABLE:                                   # <32 x i16>, one product per lane
        wide = _vec(I16, 32)
        return b.mul(b.zext(w, wide), b.sext(x, wide))
    fn = cgutils.get_or_insert_function(
        b.module, ir.FunctionType(_vec(I16, 16), [_vec(I8, 32), _vec(I8, 32)]), "llvm.x86.avx2.pmadd.ub.sw")
    return b.call(fn, [w, x])                               # <16 x i16>, two products per lane


def _rows_i32(b, s, path):
    """The i16 sums of one set -> <8 x i32>, lane r the sum over row r's lanes."""
    if path == PORTABLE:                                   # <32 x i16>: four lanes per row
        s = b.sext(s, _vec(I32, 32))
        for n in (16, 8):
            even = b.shuffle_vector(s, s, _const(I32, n, list(range(0, 2 * n, 2))))
            odd = b.shuffle_vector(s, s, _const(I32, n, list(range(1, 2 * n, 2))))
            s = b.add(even, odd)
        return s
    fn = cgutils.get_or_insert_function(
        b.module, ir.FunctionType(_vec(I32, 8), [_vec(I16, 16), _vec(I16, 16)]), "llvm.x86.avx2.pmadd.wd")
    return b.call(fn, [s, _const(I16, 16, 1)])             # <16 x i16>: two lanes per row


def _dpbusd(b, acc, w, x):
    """acc <8 x i32> + four u8 x s8 products per lane (avx512vnni with avx512vl)."""
    v8 = _vec(I32, ROWS)
    fn = cgutils.get_or_insert_function(b.module, ir.FunctionType(v8, [v8, v8, v8]), "llvm.x86.avx512.vpdpbusd.256")
    return b.call(fn, [acc, b.bitcast(w, v8), b.bitcast(x, v8)])


def define_block_dot(module, name, n_tokens, bits, group, has_mins, offset, path, exact_half):
    """void f(i8* w, i16* d, i16* m, i8* xq, i64 xq_stride, f32* xd, f32* xsum, i64 x_stride,
              i64 n_groups, f32* out, i64 out_stride):
    out[t * out_stride + r] = (row r of the block) . (token t of x), r < 8, t < n_tokens.
    w: the block's interleaved codes, n_groups * group * bits bytes (8-bit codes stored + 128, as
    unsigned bytes); d, m: its scales and mins as (n_groups, 8) fp16 bits. The avx512 path is
    256-bit vpdpbusd (avx512vl); 8-bit codes on the other paths take the portable one (their pair
    sums do not fit vpmaddubsw's i16)."""
    i8p, i16p, f32p = I8.as_pointer(), I16.as_pointer(), F32.as_pointer()
    fnty = ir.FunctionType(ir.VoidType(), [i8p, i16p, i16p, i8p, I64, f32p, f32p, I64, I64, f32p, I64])
    fn = ir.Function(module, fnty, name)
    fn.linkage = "internal"
    fn.attributes.add("alwaysinline")
    w, dp, mp, xq, xq_stride, xd, xs, x_stride, n_groups, out, out_stride = fn.args
    entry, loop, done = fn.append_basic_block("entry"), fn.append_basic_block("loop"), fn.append_basic_block("done")
    b = ir.IRBuilder(entry)
    f8 = _vec(F32, ROWS)
    zero = ir.Constant(f8, [0.0] * ROWS)
    tok_q = [b.gep(xq, [b.mul(xq_stride, ir.Constant(I64, t))]) for t in range(n_tokens)]
    tok_x = [b.mul(x_stride, ir.Constant(I64, t)) for t in range(n_tokens)]
    b.branch(loop)

    b = ir.IRBuilder(loop)
    g = b.phi(I64)
    accs = [b.phi(f8) for _ in range(n_tokens)]
    fast = ["fast"]
    if bits == 8 and path != AVX512:
        path = PORTABLE
    w_group = b.mul(g, ir.Constant(I64, ROWS * group * bits // 8))
    # the group's codes, each vector four of each row, and the position of those four in the group;
    # 4-bit: chunk c's low nibbles (codes 4c..) then its high nibbles (codes G/2 + 4c..)
    codes, positions = [], []
    for c in range(group * bits // 32):
        packed = _load_vec(b, w, b.add(w_group, ir.Constant(I64, 32 * c)), 32)
        if bits == 8:
            codes.append(packed)
            positions.append(4 * c)
        else:
            codes += [b.and_(packed, _const(I8, 32, 15)), b.lshr(packed, _const(I8, 32, 4))]
            positions += [4 * c, group // 2 + 4 * c]
    per_i16_sum = VECTORS_PER_I16_SUM if bits == 4 else 1    # 255 * 127 fills an i16 lane at once
    d = _half_to_float(b, b.load(b.bitcast(b.gep(dp, [b.mul(g, ir.Constant(I64, ROWS))]), _vec(I16, ROWS).as_pointer()), align=2), exact_half)
    m = None
    if has_mins:
        m = _half_to_float(b, b.load(b.bitcast(b.gep(mp, [b.mul(g, ir.Constant(I64, ROWS))]), _vec(I16, ROWS).as_pointer()), align=2), exact_half)
    x_group = b.mul(g, ir.Constant(I64, group))
    new_accs = []
    for t in range(n_tokens):
        def broadcast(k):           # the 4 activation codes at codes[k]'s positions, for every row
            p = b.gep(tok_q[t], [b.add(x_group, ir.Constant(I64, positions[k]))])
            return b.bitcast(_splat(b, b.load(b.bitcast(p, I32.as_pointer()), align=1), ROWS), _vec(I8, 32))
        if path == AVX512:          # vpdpbusd: four products added into each row's i32 lane
            isum = ir.Constant(_vec(I32, ROWS), [0] * ROWS)
            for k in range(len(codes)):
                isum = _dpbusd(b, isum, codes[k], broadcast(k))
        else:                       # i16 pair sums, a set at a time, then widened per row
            isum = None
            for start in range(0, len(codes), per_i16_sum):
                s16 = None
                for k in range(start, min(start + per_i16_sum, len(codes))):
                    prod = _pairs_u8s8(b, codes[k], broadcast(k), path)
                    s16 = prod if s16 is None else b.add(s16, prod)
                part = _rows_i32(b, s16, path)
                isum = part if isum is None else b.add(isum, part)
        idx = b.add(tok_x[t], g)
        dx = _splat(b, b.load(b.gep(xd, [idx])), ROWS)
        xsum = _splat(b, b.load(b.gep(xs, [idx])), ROWS)
        scaled = b.fmul(b.sitofp(isum, f8), dx, flags=fast)
        if has_mins:        # d * dx * isum + m * xsum
            term = b.fadd(b.fmul(scaled, d, flags=fast), b.fmul(m, xsum, flags=fast), flags=fast)
        else:               # d * (dx * isum - offset * xsum)
            term = b.fmul(b.fsub(scaled, b.fmul(xsum, _const(F32, ROWS, float(offset)), flags=fast), flags=fast), d, flags=fast)
        new_accs.append(b.fadd(accs[t], term, flags=fast))
    g_next = b.add(g, ir.Constant(I64, 1))
    b.cbranch(b.icmp_signed("<", g_next, n_groups), loop, done)
    g.add_incoming(ir.Constant(I64, 0), entry)
    g.add_incoming(g_next, loop)
    for t in range(n_tokens):
        accs[t].add_incoming(zero, entry)
        accs[t].add_incoming(new_accs[t], loop)

    b = ir.IRBuilder(done)
    for t in range(n_tokens):
        p = b.gep(out, [b.mul(out_stride, ir.Constant(I64, t))])
        b.store(new_accs[t], b.bitcast(p, f8.as_pointer()), align=4)
    b.ret_void()
    return fn


def block_dot(n_tokens: int):
    """A Numba intrinsic  f(qweight, scales, mins, block, xq, xd, xsum, token, out, variant)  that
    writes out[token + t, 8 * block + r] = (row 8 * block + r of W) . (token + t of x), r < 8,
    t < n_tokens, for planes whose 8-row blocks are interleaved (layout.interleave); the variant
    (vector_ir.variant of a group-wise format, a compile-time literal) picks format and path.
    Arrays as vector_ir.tile_dot's."""
    features = host_features()
    best = best_path(features)
    exact_half = "sse2" not in features or "f16c" in features

    @intrinsic
    def dot(typingctx, qweight, scales, mins, block, xq, xd, xsum, token, out, variant_id):
        if not isinstance(variant_id, types.IntegerLiteral):
            return None
        fmt, path = unpack_variant(variant_id.literal_value)
        bits, group, has_mins = fmt.bits, fmt.group_size, not fmt.symmetric
        emitted = min(path, best if "avx512vl" in features else min(best, AVX512 - 1))
        name = f"qllama_block_dot_{n_tokens}_{bits}_{group}_{int(has_mins)}_{PATHS[emitted]}_{int(exact_half)}"
        sig = types.void(qweight, scales, mins, block, xq, xd, xsum, token, out, variant_id)

        def codegen(context, b, signature, args):
            qw_t, sc_t, mn_t, _, xq_t, xd_t, xs_t, _, out_t, _ = signature.args
            qw, sc, mn, blk, xq_, xd_, xs_, tok, out_, _ = args
            qwa, sca, mna, xqa, xda, xsa, outa = [context.make_array(t)(context, b, a) for t, a in (
                (qw_t, qw), (sc_t, sc), (mn_t, mn), (xq_t, xq_), (xd_t, xd_), (xs_t, xs_), (out_t, out_))]
            w_stride, s_stride = b.extract_value(qwa.shape, 1), b.extract_value(sca.shape, 1)
            xq_stride, out_stride = b.extract_value(xqa.shape, 1), b.extract_value(outa.shape, 1)
            row = b.mul(blk, ir.Constant(I64, ROWS))

            def at(arr, elt, index):
                return b.gep(b.bitcast(arr.data, elt.as_pointer()), [index])
            fn = b.module.globals.get(name) or define_block_dot(
                b.module, name, n_tokens, bits, group, has_mins, BIASED_OFFSET.get(bits, fmt.family.offset),
                emitted, exact_half)
            b.call(fn, [
                at(qwa, I8, b.mul(row, w_stride)), at(sca, I16, b.mul(row, s_stride)),
                at(mna, I16, b.mul(row, s_stride)), at(xqa, I8, b.mul(tok, xq_stride)), xq_stride,
                at(xda, F32, b.mul(tok, s_stride)), at(xsa, F32, b.mul(tok, s_stride)), s_stride, s_stride,
                at(outa, F32, b.add(b.mul(tok, out_stride), row)), out_stride])
            return context.get_dummy_value()

        return sig, codegen

    return dot
