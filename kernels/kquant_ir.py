"""k-quant dot products over eight interleaved rows (LLVM vector IR), lanes = rows.

The planes of a k-quant (quantize/kquants.py) are interleaved by eight rows as the group-wise
formats' are (layout.interleave_bytes): per super-block, the codes in chunks of four bytes of each
row in turn, the sub-block scale bytes one byte of each row in turn, d and dmin as (row) vectors.
So one 32-byte load holds four codes of each of eight rows, and per super-block the eight rows'
sub-block scales are decoded once, in vectors of eight lanes, for every token of the tile.

Codes are put together from the table's geometry (lo_span, hi_bits): a four-weight chunk's low
nibbles or high nibbles of `qweight`, or-ed with its high bits from `qh`. Activations are
quantized per sub-block (fmt.act_group), so each sub-block's integer sum meets one activation scale:
    sum_j  d*sc_j * dx_j * isum_j  -  dmin*m_j * xsum_j         (Q4_K, Q5_K)
    sum_j  d*sc_j * (dx_j * isum_j - 32 xsum_j)                  (Q6_K: codes stored + 32)
with isum_j the integer dot product of the sub-block's codes and int8 activations, dx_j the
activation scale and xsum_j the sum of the (quantized) activations over the sub-block.
Integer sums as interleaved_ir.py: vpdpbusd (avx512), vpmaddubsw pair sums in i16 (avx2) or
widened multiplies (portable); i16 sums take as many vectors as cannot overflow for the format's
largest code.
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from .interleaved_ir import ROWS, _dpbusd, _pairs_u8s8, _rows_i32
from .vector_ir import (AVX2, AVX512, F32, I8, I16, I32, I64, PATHS, PORTABLE, _const, _half_to_float, _load_vec,
                        _splat, _vec, best_path, host_features, unpack_variant)

QK_K = 256
MAX_X = 127                      # |int8 activation codes| (quantize_activations never makes -128)


def vectors_per_i16_sum(fmt, path: int) -> int:
    """How many code vectors' products one i16 lane may add: vpmaddubsw puts two products in a lane,
    the portable widening one; each at most code_max * 127."""
    per_lane = 1 if path == PORTABLE else 2
    return max(1, 32767 // (per_lane * ((1 << fmt.bits) - 1) * MAX_X))


def define_kquant_dot(module, name, n_tokens, fmt, path, exact_half):
    """void f(i8* qweight, i8* qh, i8* subscales, i16* d, i16* dmin, i8* xq, i64 xq_stride, f32* xd,
              f32* xsum, i64 x_stride, i64 n_blocks, f32* out, i64 out_stride):
    out[t * out_stride + r] = (row r of the 8-row block) . (token t of x), r < 8, t < n_tokens.
    Planes at the block's first row, interleaved (see the module docstring); xd and xsum per
    sub-block of each token."""
    i8p, i16p, f32p = I8.as_pointer(), I16.as_pointer(), F32.as_pointer()
    fnty = ir.FunctionType(ir.VoidType(), [i8p, i8p, i8p, i16p, i16p, i8p, I64, f32p, f32p, I64, I64, f32p, I64])
    fn = ir.Function(module, fnty, name)
    fn.linkage = "internal"
    fn.attributes.add("alwaysinline")
    qw, qh, sub, dp, mp, xq, xq_stride, xd, xs, x_stride, n_blocks, out, out_stride = fn.args
    entry, loop, done = fn.append_basic_block("entry"), fn.append_basic_block("loop"), fn.append_basic_block("done")
    b = ir.IRBuilder(entry)
    f8, i32x8 = _vec(F32, ROWS), _vec(I32, ROWS)
    tok_q = [b.gep(xq, [b.mul(xq_stride, ir.Constant(I64, t))]) for t in range(n_tokens)]
    tok_x = [b.mul(x_stride, ir.Constant(I64, t)) for t in range(n_tokens)]
    b.branch(loop)

    b = ir.IRBuilder(loop)
    g = b.phi(I64)
    accs = [b.phi(f8) for _ in range(n_tokens)]
    fast = ["fast"]
    nbytes = {p.name: p.nbytes for p in fmt.planes}

    def block_base(ptr, plane):
        return b.gep(ptr, [b.mul(g, ir.Constant(I64, ROWS * nbytes[plane]))])
    qw_g, sub_g = block_base(qw, "qweight"), block_base(sub, "subscales")
    qh_g = block_base(qh, "qh") if fmt.hi_bits else None

    def halves(ptr):            # the eight rows' fp16 values of this super-block -> <8 x float>
        p = b.bitcast(b.gep(ptr, [b.mul(g, ir.Constant(I64, ROWS))]), _vec(I16, ROWS).as_pointer())
        return _half_to_float(b, b.load(p, align=2), exact_half)
    d = halves(dp)
    dmin = halves(mp) if fmt.has_mins else None
    loaded = {}

    def chunk(base, key, index):        # 32 bytes: a four-byte chunk of each of the eight rows
        if (key, index) not in loaded:
            loaded[key, index] = _load_vec(b, base, ir.Constant(I64, 32 * index), 32)
        return loaded[key, index]

    def codes(e):
        """Codes of weights e..e+3 of the super-block, eight rows: <32 x i8> in [0, 2**bits)."""
        half = fmt.lo_span // 2
        span, p = divmod(e, fmt.lo_span)
        v = chunk(qw_g, "lo", (span * half + p % half) // 4)
        q = b.lshr(v, _const(I8, 32, 4)) if p >= half else b.and_(v, _const(I8, 32, 15))
        if fmt.hi_bits:
            fields = 8 // fmt.hi_bits
            span, p = divmod(e, 32 * fields)
            h = chunk(qh_g, "hi", (span * 32 + p % 32) // 4)
            k = p // 32
            h = b.lshr(h, _const(I8, 32, fmt.hi_bits * k)) if k else h
            h = b.and_(h, _const(I8, 32, (1 << fmt.hi_bits) - 1))
            q = b.or_(q, b.shl(h, _const(I8, 32, 4)))
        return q

    def sub_byte(k, signed=False):      # byte k of the sub-block scales of the eight rows -> <8 x i32>
        p = b.bitcast(b.gep(sub_g, [ir.Constant(I64, ROWS * k)]), _vec(I8, ROWS).as_pointer())
        v = b.load(p, align=1)
        return b.sext(v, i32x8) if signed else b.zext(v, i32x8)

    def scale_and_min(j):
        """Sub-block j's d * sc_j (and dmin * m_j) of the eight rows, <8 x float>."""
        if not fmt.has_mins:            # int8 scales
            return b.fmul(d, b.sitofp(sub_byte(j, signed=True), f8), flags=fast), None

        def i32(v):
            return _const(I32, ROWS, v)
        if j < 4:                       # 6-bit scales: see quantize/kquants.py
            sc, m = b.and_(sub_byte(j), i32(63)), b.and_(sub_byte(j + 4), i32(63))
        else:
            mixed = sub_byte(j + 4)
            sc = b.or_(b.and_(mixed, i32(15)), b.shl(b.lshr(sub_byte(j - 4), i32(6)), i32(4)))
            m = b.or_(b.lshr(mixed, i32(4)), b.shl(b.lshr(sub_byte(j), i32(6)), i32(4)))
        return b.fmul(d, b.sitofp(sc, f8), flags=fast), b.fmul(dmin, b.sitofp(m, f8), flags=fast)

    per_sum = vectors_per_i16_sum(fmt, path)
    chunks = fmt.sub_block // 4
    x_block = b.mul(g, ir.Constant(I64, QK_K))
    act_block = b.mul(g, ir.Constant(I64, fmt.n_sub))
    new_accs = list(accs)
    for j in range(fmt.n_sub):
        scale, minimum = scale_and_min(j)
        vecs = [codes(fmt.sub_block * j + 4 * c) for c in range(chunks)]
        idx_j = b.add(act_block, ir.Constant(I64, j))
        for t in range(n_tokens):
            def broadcast(c):           # activation codes of weights 4c.. of sub-block j, for every row
                pos = b.add(x_block, ir.Constant(I64, fmt.sub_block * j + 4 * c))
                p = b.bitcast(b.gep(tok_q[t], [pos]), I32.as_pointer())
                return b.bitcast(_splat(b, b.load(p, align=1), ROWS), _vec(I8, 32))
            if path == AVX512:
                isum = ir.Constant(i32x8, [0] * ROWS)
                for c in range(chunks):
                    isum = _dpbusd(b, isum, vecs[c], broadcast(c))
            else:
                isum = None
                for start in range(0, chunks, per_sum):
                    s16 = None
                    for c in range(start, min(start + per_sum, chunks)):
                        prod = _pairs_u8s8(b, vecs[c], broadcast(c), path)
                        s16 = prod if s16 is None else b.add(s16, prod)
                    part = _rows_i32(b, s16, path)
                    isum = part if isum is None else b.add(isum, part)
            idx = b.add(tok_x[t], idx_j)
            dx = _splat(b, b.load(b.gep(xd, [idx])), ROWS)
            xsum = _splat(b, b.load(b.gep(xs, [idx])), ROWS)
            scaled = b.fmul(b.sitofp(isum, f8), dx, flags=fast)
            if fmt.has_mins:
                term = b.fsub(b.fmul(scaled, scale, flags=fast), b.fmul(minimum, xsum, flags=fast), flags=fast)
            else:
                offset = b.fmul(xsum, _const(F32, ROWS, float(fmt.offset)), flags=fast)
                term = b.fmul(b.fsub(scaled, offset, flags=fast), scale, flags=fast)
            new_accs[t] = b.fadd(new_accs[t], term, flags=fast)
    g_next = b.add(g, ir.Constant(I64, 1))
    b.cbranch(b.icmp_signed("<", g_next, n_blocks), loop, done)
    g.add_incoming(ir.Constant(I64, 0), entry)
    g.add_incoming(g_next, loop)
    for t in range(n_tokens):
        accs[t].add_incoming(ir.Constant(f8, [0.0] * ROWS), entry)
        accs[t].add_incoming(new_accs[t], loop)

    b = ir.IRBuilder(done)
    for t in range(n_tokens):
        p = b.gep(out, [b.mul(out_stride, ir.Constant(I64, t))])
        b.store(new_accs[t], b.bitcast(p, f8.as_pointer()), align=4)
    b.ret_void()
    return fn


def kquant_dot(n_tokens: int):
    """A Numba intrinsic  f(qweight, qh, subscales, scales, mins, block, xq, xd, xsum, token, out,
    variant)  that writes out[token + t, 8 * block + r] = (row 8 * block + r of W) . (token + t of x),
    r < 8, t < n_tokens, for a k-quant's interleaved planes (kquant.prepare); the variant (a
    compile-time literal) picks format and path. qweight, qh, subscales uint8 (rows, n_blocks *
    bytes); scales, mins fp16 bits as uint16 (rows, n_blocks); qh or mins of shape (0, 0) where
    the format has none; xq (tokens, in) int8; xd, xsum (tokens, in / sub_block) float32."""
    features = host_features()
    best = best_path(features)
    exact_half = "sse2" not in features or "f16c" in features

    @intrinsic
    def dot(typingctx, qweight, qh, subscales, scales, mins, block, xq, xd, xsum, token, out, variant_id):
        if not isinstance(variant_id, types.IntegerLiteral):
            return None
        fmt, path = unpack_variant(variant_id.literal_value)
        emitted = min(path, best if "avx512vl" in features else min(best, AVX2))
        name = f"qllama_kquant_dot_{n_tokens}_{fmt.name}_{PATHS[emitted]}_{int(exact_half)}"
        sig = types.void(qweight, qh, subscales, scales, mins, block, xq, xd, xsum, token, out, variant_id)

        def codegen(context, b, signature, args):
            arrays = [context.make_array(t)(context, b, a) for t, a in zip(signature.args, args)
                      if isinstance(t, types.Array)]
            qwa, qha, sca, da, ma, xqa, xda, xsa, outa = arrays
            blk, tok = args[5], args[9]
            row = b.mul(blk, ir.Constant(I64, ROWS))

            def stride(arr):
                return b.extract_value(arr.shape, 1)

            def at(arr, elt, index):
                return b.gep(b.bitcast(arr.data, elt.as_pointer()), [index])
            fn = b.module.globals.get(name) or define_kquant_dot(b.module, name, n_tokens, fmt, emitted, exact_half)
            b.call(fn, [
                at(qwa, I8, b.mul(row, stride(qwa))), at(qha, I8, b.mul(row, stride(qha))),
                at(sca, I8, b.mul(row, stride(sca))), at(da, I16, b.mul(row, stride(da))),
                at(ma, I16, b.mul(row, stride(ma))), at(xqa, I8, b.mul(tok, stride(xqa))), stride(xqa),
                at(xda, F32, b.mul(tok, stride(xda))), at(xsa, F32, b.mul(tok, stride(xda))), stride(xda),
                b.extract_value(da.shape, 1), at(outa, F32, b.add(b.mul(tok, stride(outa)), row)), stride(outa)])
            return context.get_dummy_value()

        return sig, codegen

    return dot
