"""Block dot products of quantized weights with int8 activations, emitted as LLVM vector IR.

Numba widens every integer narrower than 64 bits to int64 before arithmetic, so an int8 dot product
written as a Numba loop runs in 64-bit lanes. These intrinsics emit the IR directly (no C compiler
at run time): per group, the weight codes times the int8 activation codes are summed in 32-bit
integer lanes, converted to float and accumulated with the two scales in an 8-lane float register,
as ggml's AVX2 kernels do; the horizontal sum happens once per row. `tile_dot(R, T)` makes one
intrinsic that does R rows times T tokens at once, for every format: each weight load serves T
tokens and each activation load R rows (prefill's GEMM is these tiles; decode's GEMV has T = 1).

Two ways to the integer products, both compiled, picked at run time by `variant()`:
- portable: widen to i16, multiply, add neighbouring pairs into i32. Any CPU LLVM targets (ARM too).
- x86: the AVX2 pair `vpmaddubsw` (u8 x s8 -> i16 pairs) and `vpmaddwd` (i16 pairs -> i32). Emitted
  only when the host has AVX2; elsewhere the "x86" variants are portable too.

The value of a code is d * code + c per group, c = -offset * d (symmetric) or the group's min m
(asymmetric), so a row's dot product with x is  sum_g d_g * dx_g * isum_g + c_g * xsum_g,
where dx_g is the activation's scale and xsum_g the sum of x over the group.
"""
from __future__ import annotations

import llvmlite.binding as llvm
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

I8, I16, I32, I64, F32 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64), ir.FloatType()


def host_features() -> set[str]:
    return {f[1:] for f in llvm.get_host_cpu_features().flatten().split(",") if f.startswith("+")}


def _vec(t, n):
    return ir.VectorType(t, n)


def _const(t, n, values):
    return ir.Constant(_vec(t, n), values if isinstance(values, list) else [values] * n)


def _splat(b, scalar, n=8):
    v = b.insert_element(ir.Constant(_vec(scalar.type, n), ir.Undefined), scalar, ir.Constant(I32, 0))
    return b.shuffle_vector(v, v, _const(I32, n, 0))


def _load_vec(b, base, offset, n):
    """n bytes at base + offset (bytes), unaligned."""
    p = b.gep(base, [offset])
    return b.load(b.bitcast(p, _vec(I8, n).as_pointer()), align=1)


def _concat(b, lo, hi):
    n = lo.type.count
    return b.shuffle_vector(lo, hi, _const(I32, 2 * n, list(range(2 * n))))


def _half_to_float(b, bits16, exact: bool):
    """An fp16 bit pattern (i16) -> float. fpext is one instruction with F16C or on ARM; elsewhere
    the exponent is rebased by a multiply (exact for every finite half)."""
    if exact:
        return b.fpext(b.bitcast(bits16, ir.HalfType()), F32)
    w = b.zext(bits16, I32)
    mag = b.shl(b.and_(w, ir.Constant(I32, 0x7FFF)), ir.Constant(I32, 13))
    f = b.fmul(b.bitcast(mag, F32), ir.Constant(F32, 2.0 ** 112))
    sign = b.shl(b.and_(w, ir.Constant(I32, 0x8000)), ir.Constant(I32, 16))
    return b.bitcast(b.or_(b.bitcast(f, I32), sign), F32)


def _int_dot_u8s8_portable(b, u, s):
    """<32 x i8> unsigned codes . <32 x i8> signed codes -> <8 x i32> partial sums."""
    wide = _vec(I16, 32)
    p = b.mul(b.zext(u, wide), b.sext(s, wide))           # 4-bit codes: |p| <= 15 * 128
    return _pairs_to_i32(b, p)


def _int_dot_s8s8_portable(b, w, s):
    wide = _vec(I16, 32)
    return _pairs_to_i32(b, b.mul(b.sext(w, wide), b.sext(s, wide)))   # |p| <= 128 * 128


def _pairs_to_i32(b, p):
    """<32 x i16> products -> <8 x i32>: neighbours added (the pmaddwd pattern), then halves."""
    even = b.shuffle_vector(p, p, _const(I32, 16, list(range(0, 32, 2))))
    odd = b.shuffle_vector(p, p, _const(I32, 16, list(range(1, 32, 2))))
    s = b.add(b.sext(even, _vec(I32, 16)), b.sext(odd, _vec(I32, 16)))
    lo = b.shuffle_vector(s, s, _const(I32, 8, list(range(8))))
    hi = b.shuffle_vector(s, s, _const(I32, 8, list(range(8, 16))))
    return b.add(lo, hi)


def _x86_madd(b, u, s):
    """vpmaddubsw then vpmaddwd with ones: u8 x s8 -> <8 x i32>. Pair sums must fit i16: they do for
    4-bit codes (2 * 15 * 128) and for |8-bit codes| <= 128 against |x| <= 127 (2 * 128 * 127)."""
    mod = b.module
    maddubs = cgutils.get_or_insert_function(
        mod, ir.FunctionType(_vec(I16, 16), [_vec(I8, 32), _vec(I8, 32)]), "llvm.x86.avx2.pmadd.ub.sw")
    maddwd = cgutils.get_or_insert_function(
        mod, ir.FunctionType(_vec(I32, 8), [_vec(I16, 16), _vec(I16, 16)]), "llvm.x86.avx2.pmadd.wd")
    return b.call(maddwd, [b.call(maddubs, [u, s]), _const(I16, 16, 1)])


def _int_dot_u8s8(b, u, s, x86):
    return _x86_madd(b, u, s) if x86 else _int_dot_u8s8_portable(b, u, s)


def _int_dot_s8s8(b, w, s, x86):
    return _int_dot_s8s8_x86(b, w, s) if x86 else _int_dot_s8s8_portable(b, w, s)


def _int_dot_s8s8_x86(b, w, s):
    """Signed x signed through the unsigned instruction: |w| . (s with w's sign), as ggml does."""
    mod = b.module
    v = _vec(I8, 32)
    absf = cgutils.get_or_insert_function(mod, ir.FunctionType(v, [v, ir.IntType(1)]), "llvm.abs.v32i8")
    sign = cgutils.get_or_insert_function(mod, ir.FunctionType(v, [v, v]), "llvm.x86.avx2.psign.b")
    return _x86_madd(b, b.call(absf, [w, ir.Constant(ir.IntType(1), 0)]), b.call(sign, [s, w]))


def _hsum(b, v):
    """<8 x float> -> float."""
    n = 8
    while n > 1:
        n //= 2
        lo = b.shuffle_vector(v, v, _const(I32, n, list(range(n))))
        hi = b.shuffle_vector(v, v, _const(I32, n, list(range(n, 2 * n))))
        v = b.fadd(lo, hi, flags=["fast"])
    return b.extract_element(v, ir.Constant(I32, 0))


def _define_tile_dot(module, name, n_rows, n_tokens, bits, group, has_mins, offset, x86, exact_half):
    """void f(i8* w, i64 w_stride, i16* d, i16* m, i64 s_stride, i8* xq, i64 xq_stride, f32* xd,
              f32* xsum, i64 x_stride, i64 n_groups, f32* out, i64 out_stride):
    out[t * out_stride + r] = (row r of W) . (token t of x) for r < n_rows, t < n_tokens.
    Each group's weight codes are loaded once for all the tokens, each token's codes once for all
    the rows; the n_rows * n_tokens accumulators are 8-lane float vectors."""
    i8p, i16p, f32p = I8.as_pointer(), I16.as_pointer(), F32.as_pointer()
    fnty = ir.FunctionType(ir.VoidType(), [i8p, I64, i16p, i16p, I64, i8p, I64, f32p, f32p, I64, I64, f32p, I64])
    fn = ir.Function(module, fnty, name)
    fn.linkage = "internal"
    fn.attributes.add("alwaysinline")
    w, w_stride, dp, mp, s_stride, xq, xq_stride, xd, xs, x_stride, n_groups, out, out_stride = fn.args
    entry, loop, done = fn.append_basic_block("entry"), fn.append_basic_block("loop"), fn.append_basic_block("done")
    b = ir.IRBuilder(entry)
    zero8 = ir.Constant(_vec(F32, 8), [0.0] * 8)
    qbytes = group * bits // 8
    row_w = [b.gep(w, [b.mul(w_stride, ir.Constant(I64, r))]) for r in range(n_rows)]
    row_s = [b.mul(s_stride, ir.Constant(I64, r)) for r in range(n_rows)]
    tok_q = [b.gep(xq, [b.mul(xq_stride, ir.Constant(I64, t))]) for t in range(n_tokens)]
    tok_x = [b.mul(x_stride, ir.Constant(I64, t)) for t in range(n_tokens)]
    b.branch(loop)

    b = ir.IRBuilder(loop)
    g = b.phi(I64)
    accs = [[b.phi(_vec(F32, 8)) for _ in range(n_tokens)] for _ in range(n_rows)]
    g_bytes = b.mul(g, ir.Constant(I64, qbytes))
    g_x = b.mul(g, ir.Constant(I64, group))
    fast = ["fast"]
    # per token: its codes for this group, in the order the weight codes unpack to, and its scales
    x_chunks, dx, c_x = [], [], []
    for t in range(n_tokens):
        chunks = []
        for k in range(group // 32):
            if bits == 4:   # byte j of a group: weight j low nibble, weight j + G/2 high nibble
                lo = _load_vec(b, tok_q[t], b.add(g_x, ir.Constant(I64, 16 * k)), 16)
                hi = _load_vec(b, tok_q[t], b.add(g_x, ir.Constant(I64, group // 2 + 16 * k)), 16)
                chunks.append(_concat(b, lo, hi))
            else:
                chunks.append(_load_vec(b, tok_q[t], b.add(g_x, ir.Constant(I64, 32 * k)), 32))
        x_chunks.append(chunks)
        xi = b.add(tok_x[t], g)
        dx.append(_splat(b, b.load(b.gep(xd, [xi]))))
        # xsum spread over the 8 lanes; symmetric formats scale it by -offset here, once per token
        xsum8 = b.fmul(b.load(b.gep(xs, [xi])), ir.Constant(F32, 0.125 * (1.0 if has_mins else -offset)), flags=fast)
        c_x.append(_splat(b, xsum8))
    new_accs = []
    for r in range(n_rows):
        if bits == 4:
            codes = []
            for k in range(group // 32):
                packed = _load_vec(b, row_w[r], b.add(g_bytes, ir.Constant(I64, 16 * k)), 16)
                codes.append(_concat(b, b.and_(packed, _const(I8, 16, 15)), b.lshr(packed, _const(I8, 16, 4))))
        else:
            codes = [_load_vec(b, row_w[r], b.add(g_bytes, ir.Constant(I64, 32 * k)), 32) for k in range(group // 32)]
        s_idx = b.add(row_s[r], g)
        d = _splat(b, _half_to_float(b, b.load(b.gep(dp, [s_idx])), exact_half))
        m = _splat(b, _half_to_float(b, b.load(b.gep(mp, [s_idx])), exact_half)) if has_mins else None
        row_accs = []
        for t in range(n_tokens):
            isum = None
            for k in range(group // 32):
                part = (_int_dot_u8s8(b, codes[k], x_chunks[t][k], x86) if bits == 4
                        else _int_dot_s8s8(b, codes[k], x_chunks[t][k], x86))
                isum = part if isum is None else b.add(isum, part)
            lanes = b.fmul(b.sitofp(isum, _vec(F32, 8)), dx[t], flags=fast)
            if has_mins:     # d * dx * isum + m * xsum
                row_accs.append(b.fadd(accs[r][t], b.fadd(b.fmul(lanes, d, flags=fast),
                                                          b.fmul(m, c_x[t], flags=fast), flags=fast), flags=fast))
            else:            # d * (dx * isum - offset * xsum)
                row_accs.append(b.fadd(accs[r][t], b.fmul(b.fadd(lanes, c_x[t], flags=fast), d, flags=fast),
                                       flags=fast))
        new_accs.append(row_accs)
    g_next = b.add(g, ir.Constant(I64, 1))
    b.cbranch(b.icmp_signed("<", g_next, n_groups), loop, done)
    g.add_incoming(ir.Constant(I64, 0), entry)
    g.add_incoming(g_next, loop)
    for r in range(n_rows):
        for t in range(n_tokens):
            accs[r][t].add_incoming(zero8, entry)
            accs[r][t].add_incoming(new_accs[r][t], loop)

    b = ir.IRBuilder(done)
    for t in range(n_tokens):
        base = b.gep(out, [b.mul(out_stride, ir.Constant(I64, t))])
        for r in range(n_rows):
            b.store(_hsum(b, new_accs[r][t]), b.gep(base, [ir.Constant(I64, r)]))
    b.ret_void()
    return fn


# every (bits, group size, has mins) a format of quantize/formats.py can have
SHAPES = [(bits, group, mins) for bits, mins in ((8, False), (4, False), (4, True)) for group in (32, 64, 128)]
OFFSET = {(8, False): 0, (4, False): 8, (4, True): 0}    # stored code = level + offset (symmetric)


def variant(bits: int, group: int, has_mins: bool, portable: bool) -> int:
    """The number that picks a kernel at run time: the shape's index, times two, plus portable."""
    return 2 * SHAPES.index((bits, group, has_mins)) + int(portable)


def tile_dot(n_rows: int, n_tokens: int):
    """A Numba intrinsic  f(qweight, scales, mins, row, xq, xd, xsum, token, out, variant)  that writes
    out[token + t, row + r] = (row + r of W) . (token + t of x) for r < n_rows, t < n_tokens, the
    format and the path picked by `variant` (see variant()). qweight (rows, n_groups * qbytes)
    uint8; scales and mins (rows, n_groups) fp16 bits as uint16 (mins unused by symmetric formats);
    xq (tokens, n_groups * G) int8, xd and xsum (tokens, n_groups) float32; out (tokens, rows)
    float32; all C-contiguous. An unknown variant writes nothing."""
    features = host_features()
    x86 = "avx2" in features
    exact_half = "sse2" not in features or "f16c" in features     # x86 without F16C: the multiply

    @intrinsic
    def dot(typingctx, qweight, scales, mins, row, xq, xd, xsum, token, out, variant_id):
        sig = types.void(qweight, scales, mins, row, xq, xd, xsum, token, out, variant_id)

        def codegen(context, b, signature, args):
            qw_t, sc_t, mn_t, _, xq_t, xd_t, xs_t, _, out_t, _ = signature.args
            qw, sc, mn, r, xq_, xd_, xs_, tok, out_, var = args
            arrays = [context.make_array(t)(context, b, a) for t, a in
                      ((qw_t, qw), (sc_t, sc), (mn_t, mn), (xq_t, xq_), (xd_t, xd_), (xs_t, xs_), (out_t, out_))]
            qwa, sca, mna, xqa, xda, xsa, outa = arrays
            w_stride, s_stride = b.extract_value(qwa.shape, 1), b.extract_value(sca.shape, 1)
            xq_stride, out_stride = b.extract_value(xqa.shape, 1), b.extract_value(outa.shape, 1)

            def at(arr, elt, index):
                return b.gep(b.bitcast(arr.data, elt.as_pointer()), [index])
            call_args = [
                at(qwa, I8, b.mul(r, w_stride)), w_stride, at(sca, I16, b.mul(r, s_stride)),
                at(mna, I16, b.mul(r, s_stride)), s_stride, at(xqa, I8, b.mul(tok, xq_stride)), xq_stride,
                at(xda, F32, b.mul(tok, s_stride)), at(xsa, F32, b.mul(tok, s_stride)), s_stride, s_stride,
                at(outa, F32, b.add(b.mul(tok, out_stride), r)), out_stride]
            mod = b.module
            after = b.append_basic_block("tile_dot_after")
            switch = b.switch(var, after)
            for shape in SHAPES:
                for portable in (False, True):
                    bits, group, mins = shape
                    use_x86 = x86 and not portable
                    name = (f"qllama_tile_dot_{n_rows}x{n_tokens}_{bits}_{group}_{int(mins)}_{int(use_x86)}"
                            f"_{int(exact_half)}")
                    fn = mod.globals.get(name) or _define_tile_dot(
                        mod, name, n_rows, n_tokens, bits, group, mins, OFFSET[bits, mins], use_x86, exact_half)
                    case = b.append_basic_block(f"tile_dot_{bits}_{group}_{int(mins)}_{int(portable)}")
                    switch.add_case(ir.Constant(var.type, variant(bits, group, mins, portable)), case)
                    with b.goto_block(case):
                        b.call(fn, call_args)
                        b.branch(after)
            b.position_at_end(after)
            return context.get_dummy_value()

        return sig, codegen

    return dot


@intrinsic
def half_to_float(typingctx, bits16):
    """fp16 bits (uint16) -> float32, for Numba code (Numba has no float16 on the CPU)."""
    features = host_features()
    exact = "sse2" not in features or "f16c" in features

    def codegen(context, b, signature, args):
        return _half_to_float(b, args[0], exact)

    return types.float32(types.uint16), codegen
