"""k-quant dot products over eight interleaved rows (LLVM vector IR), lanes = rows.

The planes of a k-quant (quantize/kquants.py) are interleaved by eight rows as the group-wise
formats' are (layout.interleave_bytes): per super-block, the codes in chunks of four bytes of each
row in turn, the sub-block scale bytes one byte of each row in turn, d and dmin as (row) vectors.
So one 32-byte load holds four codes of each of eight rows, and per super-block the eight rows'
sub-block scales are decoded once, in vectors of eight lanes, for every token of the tile.

Codes are put together from the table's geometry (lo_bits, lo_span, hi_bits): a four-weight
chunk's low nibbles, high nibbles or 2-bit fields of `qweight`, or-ed with its high bits from `qh`.
Activations are quantized to int8 with one scale dx per super-block (fmt.act_group, as ggml's Q8_K),
with the integer sums bs_j of their codes per sub-block j, so a super-block's sum stays integer
until its end:
    d*dx * sum_j sc_j isum_j  -  dmin*dx * sum_j m_j bs_j            (Q2_K, Q4_K, Q5_K)
    d*dx * (sum_j sc_j isum_j  -  o sum_j sc_j bs_j)                  (Q3_K, Q6_K: codes stored + o)
with isum_j the integer dot product of sub-block j's codes and the int8 activations. The float
work is then a few vectors per super-block and token, not per sub-block (ggml's k-quant dots
scale in integers the same way). The sums fit i32: |sc_j isum_j| <= 128 * 32 * 31 * 127 per
sub-block. Integer products as interleaved_ir.py: vpdpbusd (avx512), vpmaddubsw pair sums in i16
(avx2), whose vpmaddwd takes the sub-block scale at once, or widened multiplies (portable); i16
sums take as many vectors as cannot overflow for the format's largest code. On avx512 the scale
is applied in float instead, one convert and fma per sub-block (d*sc_j decoded once per super-block):
an i32 multiply is two micro-ops on Intel, and this measured 1.13x (Q4_K) and 1.05x (Q6_K) prefill
there. sum_j c_j bs_j takes sub-blocks in pairs: vpmaddwd of the rows' (c_j, c_j+1) against the
broadcast (bs_j, bs_j+1).
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
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


def _madd_i16(b, a, c, path):
    """<16 x i16> a, c -> <8 x i32>, lane r = a[2r] c[2r] + a[2r+1] c[2r+1] (vpmaddwd)."""
    if path == PORTABLE:
        wide = _vec(I32, 16)
        p = b.mul(b.sext(a, wide), b.sext(c, wide))
        even = b.shuffle_vector(p, p, _const(I32, 8, list(range(0, 16, 2))))
        odd = b.shuffle_vector(p, p, _const(I32, 8, list(range(1, 16, 2))))
        return b.add(even, odd)
    fn = cgutils.get_or_insert_function(
        b.module, ir.FunctionType(_vec(I32, 8), [_vec(I16, 16), _vec(I16, 16)]), "llvm.x86.avx2.pmadd.wd")
    return b.call(fn, [a, c])


def _interleave_i16(b, lo, hi):
    """<8 x i32> lo, hi (values that fit i16) -> <16 x i16> lo[0], hi[0], lo[1], hi[1], ..."""
    v8 = _vec(I16, ROWS)
    return b.shuffle_vector(b.trunc(lo, v8), b.trunc(hi, v8),
                            _const(I32, 2 * ROWS, [k for r in range(ROWS) for k in (r, ROWS + r)]))


def _after(b, vectors):
    """An i64 zero that the machine code computes after `vectors` (an empty x86 asm that takes them).
    Offsetting a sub-block's addresses by it starts the sub-block's loads after the sums of the one
    before, for every token of the tile. Without it, on avx2's sixteen registers, LLVM's scheduler ran
    the tile a token at a time through all the sub-blocks and kept every code vector of the
    super-block on the stack (Q6_K: 871 stack references per super-block, 377 with it; every
    k-quant's prefill 1.2-1.6x, bench/RESULTS.md)."""
    fnty = ir.FunctionType(I64, [I64] + [v.type for v in vectors])
    return b.asm(fnty, "", "=r,0" + ",x" * len(vectors), [ir.Constant(I64, 0), *vectors], False)


def sub_block_order(fmt) -> list[int]:
    """The sub-blocks in the order a tile of tokens takes them. 2-bit fields (Q2_K, Q3_K): a 32-byte
    chunk of `qweight` holds four sub-blocks' codes (fields 0-3: sub-blocks j, j + 2, j + 4, j + 6),
    so those four are taken one after another and a chunk is live for four sub-blocks, not seven
    (prefill 1.2x)."""
    if fmt.lo_bits != 2:
        return list(range(fmt.n_sub))
    per_span = 128 // fmt.sub_block
    return [s * per_span + h + 2 * k for s in range(QK_K // 128) for h in (0, 1) for k in range(per_span // 2)]


def define_kquant_dot(module, name, n_tokens, fmt, path, exact_half):
    """void f(i8* qweight, i8* qh, i8* subscales, i16* d, i16* dmin, i8* xq, i64 xq_stride, f32* xd,
              i64 xd_stride, i16* bsum, i64 bsum_stride, i64 n_blocks, f32* out, i64 out_stride):
    out[t * out_stride + r] = (row r of the 8-row block) . (token t of x), r < 8, t < n_tokens.
    Planes at the block's first row, interleaved (see the module docstring); xd per super-block and
    bsum per sub-block of each token."""
    i8p, i16p, f32p = I8.as_pointer(), I16.as_pointer(), F32.as_pointer()
    fnty = ir.FunctionType(ir.VoidType(), [i8p, i8p, i8p, i16p, i16p, i8p, I64, f32p, I64, i16p, I64, I64, f32p, I64])
    fn = ir.Function(module, fnty, name)
    fn.linkage = "internal"
    fn.attributes.add("alwaysinline")
    qw, qh, sub, dp, mp, xq, xq_stride, xd, xd_stride, bs, bs_stride, n_blocks, out, out_stride = fn.args
    entry, loop, done = fn.append_basic_block("entry"), fn.append_basic_block("loop"), fn.append_basic_block("done")
    b = ir.IRBuilder(entry)
    f8, i32x8 = _vec(F32, ROWS), _vec(I32, ROWS)
    tok_q = [b.gep(xq, [b.mul(xq_stride, ir.Constant(I64, t))]) for t in range(n_tokens)]
    tok_d = [b.gep(xd, [b.mul(xd_stride, ir.Constant(I64, t))]) for t in range(n_tokens)]
    tok_s = [b.gep(bs, [b.mul(bs_stride, ir.Constant(I64, t))]) for t in range(n_tokens)]
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

    def field(base, key, bits, e):
        """Bits of weights e..e+3 of the super-block in a plane of bit fields (quantize/kquants.py's
        `qh` layout), eight rows: <32 x i8> in [0, 2**bits)."""
        fields = 8 // bits
        span, p = divmod(e, 32 * fields)
        v = chunk(base, key, (span * 32 + p % 32) // 4)
        k = p // 32
        v = b.lshr(v, _const(I8, 32, bits * k)) if k else v
        return b.and_(v, _const(I8, 32, (1 << bits) - 1))

    def codes(e):
        """Codes of weights e..e+3 of the super-block, eight rows: <32 x i8> in [0, 2**bits)."""
        if fmt.lo_bits == 2:
            q = field(qw_g, "lo", 2, e)
        else:
            half = fmt.lo_span // 2
            span, p = divmod(e, fmt.lo_span)
            v = chunk(qw_g, "lo", (span * half + p % half) // 4)
            q = b.lshr(v, _const(I8, 32, 4)) if p >= half else b.and_(v, _const(I8, 32, 15))
        if fmt.hi_bits:
            q = b.or_(q, b.shl(field(qh_g, "hi", fmt.hi_bits, e), _const(I8, 32, fmt.lo_bits)))
        return q

    def sub_byte(k, signed=False):      # byte k of the sub-block scales of the eight rows -> <8 x i32>
        p = b.bitcast(b.gep(sub_g, [ir.Constant(I64, ROWS * k)]), _vec(I8, ROWS).as_pointer())
        v = b.load(p, align=1)
        return b.sext(v, i32x8) if signed else b.zext(v, i32x8)

    def i32(v):
        return _const(I32, ROWS, v)

    def scale(j):
        """Sub-block j's integer scale sc_j of the eight rows, <8 x i32> (quantize/kquants.py's packings)."""
        if fmt.packing == "i8":
            return sub_byte(j, signed=True)
        if fmt.packing == "k4":
            return b.and_(sub_byte(j), i32(15))
        if fmt.packing == "k3":
            low = b.and_(b.lshr(sub_byte(j % 8), i32(4 * (j // 8))), i32(15))
            high = b.and_(b.lshr(sub_byte(8 + j % 4), i32(2 * (j // 4))), i32(3))
            return b.sub(b.or_(low, b.shl(high, i32(4))), i32(32))
        if j < 4:                       # "k6"
            return b.and_(sub_byte(j), i32(63))
        return b.or_(b.and_(sub_byte(j + 4), i32(15)), b.shl(b.lshr(sub_byte(j - 4), i32(6)), i32(4)))

    def minimum(j):
        """Sub-block j's integer min m_j of the eight rows (Q2_K, Q4_K, Q5_K), <8 x i32>."""
        if fmt.packing == "k4":
            return b.lshr(sub_byte(j), i32(4))
        if j < 4:
            return b.and_(sub_byte(j + 4), i32(63))
        return b.or_(b.lshr(sub_byte(j + 4), i32(4)), b.shl(b.lshr(sub_byte(j), i32(6)), i32(4)))

    def sub_sums(t, pair, k):
        """sum over sub-blocks 2k, 2k+1 of coef_j bs_j for token t, pair: the rows' coefs (vpmaddwd)."""
        p = b.bitcast(b.gep(tok_s[t], [b.add(sub_first, ir.Constant(I64, 2 * k))]), I32.as_pointer())
        both = b.bitcast(_splat(b, b.load(p, align=2), ROWS), _vec(I16, 2 * ROWS))
        return _madd_i16(b, pair, both, path)

    per_sum = vectors_per_i16_sum(fmt, path)
    chunks = fmt.sub_block // 4
    x_block = b.mul(g, ir.Constant(I64, QK_K))
    sub_first = b.mul(g, ir.Constant(I64, fmt.n_sub))
    sums = [ir.Constant(i32x8, [0] * ROWS)] * n_tokens       # each token's sum_j sc_j isum_j (not avx512), offsets
    # offsets (Q3_K, Q6_K) and Q2_K's sixteen mins summed inside the sub-block loop for a tile of
    # tokens, after it for one token (decode, where inside made the code vectors spill) and for
    # Q4_K/Q5_K's eight mins; measured per format: prefill Q6_K 1.15x, Q2_K 1.2x, Q4_K 0.86x inside
    late = n_tokens == 1 or (fmt.has_mins and fmt.n_sub < 16)
    mins_acc = [ir.Constant(i32x8, [0] * ROWS)] * n_tokens     # Q2_K's sum_j m_j bs_j inside the loop
    scales = {}

    def coef(j):                        # what multiplies bs_j: the min m_j, or -offset sc_j
        return minimum(j) if fmt.has_mins else b.mul(scales[j], i32(-fmt.offset))
    fsums = [ir.Constant(f8, [0.0] * ROWS)] * n_tokens     # avx512: sum_j d sc_j isum_j, in float
    in_order = n_tokens > 1 and path == AVX2
    block_starts = (qw_g, qh_g, sub_g, x_block, sub_first)
    for i, j in enumerate(sub_block_order(fmt) if n_tokens > 1 else range(fmt.n_sub)):  # (decode: Q2_K 0.75x in that order)
        if in_order and i:          # this sub-block's loads after the last one's sums (see _after)
            z = _after(b, sums)
            qw_g, qh_g, sub_g = (p if p is None else b.gep(p, [z]) for p in block_starts[:3])
            x_block, sub_first = b.add(block_starts[3], z), b.add(block_starts[4], z)
            loaded.clear()
        sc = scales[j] = scale(j)
        if path == AVX512:
            scf = b.fmul(d, b.sitofp(sc, f8), flags=fast)
        if path == AVX2:                # sc_j in both i16 lanes of each row, for vpmaddwd
            sc16 = _interleave_i16(b, sc, sc)
        vecs = [codes(fmt.sub_block * j + 4 * c) for c in range(chunks)]
        for t in range(n_tokens):
            def broadcast(c):           # activation codes of weights 4c.. of sub-block j, for every row
                pos = b.add(x_block, ir.Constant(I64, fmt.sub_block * j + 4 * c))
                p = b.bitcast(b.gep(tok_q[t], [pos]), I32.as_pointer())
                return b.bitcast(_splat(b, b.load(p, align=1), ROWS), _vec(I8, 32))
            if path == AVX512:
                isum = ir.Constant(i32x8, [0] * ROWS)
                for c in range(chunks):
                    isum = _dpbusd(b, isum, vecs[c], broadcast(c))
                fsums[t] = b.fadd(fsums[t], b.fmul(b.sitofp(isum, f8), scf, flags=fast), flags=fast)
                continue
            for start in range(0, chunks, per_sum):
                s16 = None
                for c in range(start, min(start + per_sum, chunks)):
                    prod = _pairs_u8s8(b, vecs[c], broadcast(c), path)
                    s16 = prod if s16 is None else b.add(s16, prod)
                part = _madd_i16(b, s16, sc16, path) if path == AVX2 else b.mul(_rows_i32(b, s16, path), sc)
                sums[t] = b.add(sums[t], part)
        if not late and j ^ 1 in scales:    # two sub-blocks at a time; offsets into sums (no more registers)
            pair = _interleave_i16(b, coef(j & ~1), coef(j | 1))
            if fmt.has_mins:
                mins_acc = [b.add(mins_acc[t], sub_sums(t, pair, j // 2)) for t in range(n_tokens)]
            else:
                sums = [b.add(sums[t], sub_sums(t, pair, j // 2)) for t in range(n_tokens)]
    pairs = [_interleave_i16(b, coef(j), coef(j + 1)) for j in range(0, fmt.n_sub, 2)] if late else []
    new_accs = []
    for t in range(n_tokens):
        dx = _splat(b, b.load(b.gep(tok_d[t], [g])), ROWS)
        mins = mins_acc[t]              # sum_j coef_j bs_j: the pairs not taken inside the loop
        for k, pair in enumerate(pairs):
            mins = b.add(mins, sub_sums(t, pair, k))
        if fmt.has_mins:                # ... - dmin sum_j m_j bs_j
            ints = b.fsub(b.fmul(d, b.sitofp(sums[t], f8), flags=fast), b.fmul(dmin, b.sitofp(mins, f8), flags=fast),
                          flags=fast)
        else:                           # the offsets are in the integer sum
            ints = b.fmul(d, b.sitofp(b.add(sums[t], mins), f8), flags=fast)
        term = b.fadd(ints, fsums[t], flags=fast)
        new_accs.append(b.fadd(accs[t], b.fmul(term, dx, flags=fast), flags=fast))
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
    """A Numba intrinsic  f(qweight, qh, subscales, scales, mins, block, xq, xd, bsum, token, out,
    variant)  that writes out[token + t, 8 * block + r] = (row 8 * block + r of W) . (token + t of x),
    r < 8, t < n_tokens, for a k-quant's interleaved planes (kquant.prepare); the variant (a
    compile-time literal) picks format and path. qweight, qh, subscales uint8 (rows, n_blocks *
    bytes); scales, mins fp16 bits as uint16 (rows, n_blocks); qh or mins of shape (0, 0) where
    the format has none; xq (tokens, in) int8; xd (tokens, in / 256) float32; bsum (tokens,
    in / sub_block) int16 (kquant.quantize_input)."""
    features = host_features()
    best = best_path(features)
    exact_half = "sse2" not in features or "f16c" in features

    @intrinsic
    def dot(typingctx, qweight, qh, subscales, scales, mins, block, xq, xd, bsum, token, out, variant_id):
        if not isinstance(variant_id, types.IntegerLiteral):
            return None
        fmt, path = unpack_variant(variant_id.literal_value)
        emitted = min(path, best if "avx512vl" in features else min(best, AVX2))
        name = f"qllama_kquant_dot_{n_tokens}_{fmt.name}_{PATHS[emitted]}_{int(exact_half)}"
        sig = types.void(qweight, qh, subscales, scales, mins, block, xq, xd, bsum, token, out, variant_id)

        def codegen(context, b, signature, args):
            arrays = [context.make_array(t)(context, b, a) for t, a in zip(signature.args, args)
                      if isinstance(t, types.Array)]
            qwa, qha, sca, da, ma, xqa, xda, bsa, outa = arrays
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
                at(xda, F32, b.mul(tok, stride(xda))), stride(xda), at(bsa, I16, b.mul(tok, stride(bsa))), stride(bsa),
                b.extract_value(da.shape, 1), at(outa, F32, b.add(b.mul(tok, stride(outa)), row)), stride(outa)])
            return context.get_dummy_value()

        return sig, codegen

    return dot
