"""Block dot products of quantized weights with int8 activations, emitted as LLVM vector IR.

Numba widens every integer narrower than 64 bits to int64 before arithmetic, so an int8 dot product
written as a Numba loop runs in 64-bit lanes. These intrinsics emit the IR directly (no C compiler
at run time): per group, the weight codes times the int8 activation codes are summed in 32-bit
integer lanes, converted to float and accumulated with the two scales in a float vector register,
as ggml's kernels do; the horizontal sum happens once per row. `tile_dot(R, T)` makes one intrinsic
that does R rows times T tokens at once, for every format: each weight load serves T tokens and
each activation load R rows (prefill's GEMM is these tiles; decode's GEMV has T = 1).

Three paths to the integer products, all compiled, picked at run time by `variant()` (a format of
the FORMATS table and a path):
- portable: widen to i16, multiply, add neighbouring pairs into i32; 8 float lanes. Any CPU that
  LLVM targets (ARM too).
- avx2: `vpmaddubsw` (u8 x s8 -> i16 pairs) then `vpmaddwd` (i16 pairs -> i32); 8 lanes.
- avx512: `vpdpbusd` (u8 x s8, four products summed into each i32) on 64 bytes; 16 lanes, so one
  step covers two groups of 32. Signed 8-bit codes are made unsigned by adding 128 (flipping the
  top bit), which the offset term takes back, like the 4-bit codes' offset of 8.
A path the host lacks is emitted as the next one down (avx512 -> avx2 -> portable).

The value of a code is d * code + c per group, c = -offset * d (symmetric) or the group's min m
(asymmetric), so a row's dot product with x is  sum_g d_g * dx_g * isum_g + c_g * xsum_g,
where dx_g is the activation's scale and xsum_g the sum of the (quantized) x over the group.
"""
from __future__ import annotations

import llvmlite.binding as llvm
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ..quantize.formats import FORMATS

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
    """fp16 bit patterns (i16 or <n x i16>) -> float (or <n x float>). fpext is one instruction with
    F16C or on ARM; elsewhere the exponent is rebased by a multiply (exact for every finite half)."""
    n = bits16.type.count if isinstance(bits16.type, ir.VectorType) else None

    def like(t, value=None):
        if n is None:
            return t if value is None else ir.Constant(t, value)
        return _vec(t, n) if value is None else _const(t, n, value)
    if exact:
        return b.fpext(b.bitcast(bits16, like(ir.HalfType())), like(F32))
    w = b.zext(bits16, like(I32))
    mag = b.shl(b.and_(w, like(I32, 0x7FFF)), like(I32, 13))
    f = b.fmul(b.bitcast(mag, like(F32)), like(F32, 2.0 ** 112))
    sign = b.shl(b.and_(w, like(I32, 0x8000)), like(I32, 16))
    return b.bitcast(b.or_(b.bitcast(f, like(I32)), sign), like(F32))


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


def _vnni(b, u, s):
    """<64 x i8> unsigned . <64 x i8> signed -> <16 x i32>, four neighbouring products per lane."""
    v16 = _vec(I32, 16)
    fn = cgutils.get_or_insert_function(b.module, ir.FunctionType(v16, [v16, v16, v16]), "llvm.x86.avx512.vpdpbusd.512")
    return b.call(fn, [ir.Constant(v16, [0] * 16), b.bitcast(u, v16), b.bitcast(s, v16)])


def _int_dot_s8s8_x86(b, w, s):
    """Signed x signed through the unsigned instruction: |w| . (s with w's sign), as ggml does."""
    mod = b.module
    v = _vec(I8, 32)
    absf = cgutils.get_or_insert_function(mod, ir.FunctionType(v, [v, ir.IntType(1)]), "llvm.abs.v32i8")
    sign = cgutils.get_or_insert_function(mod, ir.FunctionType(v, [v, v]), "llvm.x86.avx2.psign.b")
    return _x86_madd(b, b.call(absf, [w, ir.Constant(ir.IntType(1), 0)]), b.call(sign, [s, w]))


def _hsum(b, v):
    """<n x float> -> float, halving the vector n = 16 or 8 -> 1."""
    n = v.type.count
    while n > 1:
        n //= 2
        lo = b.shuffle_vector(v, v, _const(I32, n, list(range(n))))
        hi = b.shuffle_vector(v, v, _const(I32, n, list(range(n, 2 * n))))
        v = b.fadd(lo, hi, flags=["fast"])
    return b.extract_element(v, ir.Constant(I32, 0))


PORTABLE, AVX2, AVX512 = 0, 1, 2
PATHS = ("portable", "avx2", "avx512")
FORMAT_LIST = list(FORMATS.values())


def _define_tile_dot(module, name, n_rows, n_tokens, bits, group, has_mins, offset, path, exact_half):
    """void f(i8* w, i64 w_stride, i16* d, i16* m, i64 s_stride, i8* xq, i64 xq_stride, f32* xd,
              f32* xsum, i64 x_stride, i64 n_groups, f32* out, i64 out_stride):
    out[t * out_stride + r] = (row r of W) . (token t of x) for r < n_rows, t < n_tokens.
    Each group's weight codes are loaded once for all the tokens, each token's codes once for all
    the rows; the n_rows * n_tokens accumulators are float vectors of 8 (16 for avx512) lanes.
    avx512 with groups of 32 takes two groups per step: n_groups must be even."""
    i8p, i16p, f32p = I8.as_pointer(), I16.as_pointer(), F32.as_pointer()
    fnty = ir.FunctionType(ir.VoidType(), [i8p, I64, i16p, i16p, I64, i8p, I64, f32p, f32p, I64, I64, f32p, I64])
    fn = ir.Function(module, fnty, name)
    fn.linkage = "internal"
    fn.attributes.add("alwaysinline")
    w, w_stride, dp, mp, s_stride, xq, xq_stride, xd, xs, x_stride, n_groups, out, out_stride = fn.args
    entry, loop, done = fn.append_basic_block("entry"), fn.append_basic_block("loop"), fn.append_basic_block("done")
    b = ir.IRBuilder(entry)
    lanes = 16 if path == AVX512 else 8
    unsigned_q8 = bits == 8 and path == AVX512        # q8 codes + 128 for vpdpbusd's unsigned operand
    if unsigned_q8:
        offset += 128
    per_step = max(1, 4 * lanes // group)              # groups per loop step
    qbytes = group * bits // 8
    zero = ir.Constant(_vec(F32, lanes), [0.0] * lanes)
    row_w = [b.gep(w, [b.mul(w_stride, ir.Constant(I64, r))]) for r in range(n_rows)]
    row_s = [b.mul(s_stride, ir.Constant(I64, r)) for r in range(n_rows)]
    tok_q = [b.gep(xq, [b.mul(xq_stride, ir.Constant(I64, t))]) for t in range(n_tokens)]
    tok_x = [b.mul(x_stride, ir.Constant(I64, t)) for t in range(n_tokens)]
    b.branch(loop)

    b = ir.IRBuilder(loop)
    g0 = b.phi(I64)
    accs = [[b.phi(_vec(F32, lanes)) for _ in range(n_tokens)] for _ in range(n_rows)]
    fast = ["fast"]
    # 32-weight pieces of this step, in order: (group within the step, piece within the group)
    pieces = [(gi, k) for gi in range(per_step) for k in range(group // 32)]
    per_vec = lanes // 8                               # pieces per integer dot product
    # the dot products of one step, and the groups each one's lanes belong to (lanes // 8 per piece)
    dots = [pieces[i:i + per_vec] for i in range(0, len(pieces), per_vec)]
    groups = [b.add(g0, ir.Constant(I64, gi)) for gi in range(per_step)]

    def step_vector(ptr, index, half, scale=1.0):
        """The step's per-group values (fp16 bits or float32) at ptr[index...] -> a lanes-wide float
        vector, each group's value on the lanes its sums occupy, times scale."""
        if per_step == 1:
            v = b.load(b.gep(ptr, [index]))
            v = _half_to_float(b, v, exact_half) if half else v
            v = b.fmul(v, ir.Constant(F32, scale), flags=fast) if scale != 1.0 else v
            return _splat(b, v, lanes)
        elt = I16 if half else F32
        v = b.load(b.bitcast(b.gep(ptr, [index]), _vec(elt, 2).as_pointer()), align=1)
        v = _half_to_float(b, v, exact_half) if half else v
        v = b.fmul(v, _const(F32, 2, scale), flags=fast) if scale != 1.0 else v
        return b.shuffle_vector(v, v, _const(I32, lanes, [0] * 8 + [1] * 8))

    def x_piece(t, gi, k):
        g_x = b.mul(groups[gi], ir.Constant(I64, group))
        if bits == 4:   # byte j of a group: weight j low nibble, weight j + G/2 high nibble
            lo = _load_vec(b, tok_q[t], b.add(g_x, ir.Constant(I64, 16 * k)), 16)
            hi = _load_vec(b, tok_q[t], b.add(g_x, ir.Constant(I64, group // 2 + 16 * k)), 16)
            return _concat(b, lo, hi)
        return _load_vec(b, tok_q[t], b.add(g_x, ir.Constant(I64, 32 * k)), 32)

    def w_piece(r, gi, k):
        g_bytes = b.mul(groups[gi], ir.Constant(I64, qbytes))
        if bits == 4:
            packed = _load_vec(b, row_w[r], b.add(g_bytes, ir.Constant(I64, 16 * k)), 16)
            return _concat(b, b.and_(packed, _const(I8, 16, 15)), b.lshr(packed, _const(I8, 16, 4)))
        codes = _load_vec(b, row_w[r], b.add(g_bytes, ir.Constant(I64, 32 * k)), 32)
        return b.xor(codes, _const(I8, 32, -128)) if unsigned_q8 else codes

    def joined(parts):
        return parts[0] if len(parts) == 1 else _concat(b, parts[0], parts[1])

    # per token: its codes in the order the weight codes unpack to, and its scales per lane
    x_vecs, dx, c_x = [], [], []
    for t in range(n_tokens):
        x_vecs.append([joined([x_piece(t, gi, k) for gi, k in dot]) for dot in dots])
        idx = b.add(tok_x[t], g0)
        dx.append(step_vector(xd, idx, False))
        # xsum spread over the lanes its group's sums occupy; symmetric formats scale it by -offset
        spread = 1.0 / (lanes if per_step == 1 else 8)
        c_x.append(step_vector(xs, idx, False, spread * (1.0 if has_mins else -offset)))
    new_accs = []
    for r in range(n_rows):
        w_vecs = [joined([w_piece(r, gi, k) for gi, k in dot]) for dot in dots]
        s_idx = b.add(row_s[r], g0)
        d = step_vector(dp, s_idx, True)
        m = step_vector(mp, s_idx, True) if has_mins else None
        row_accs = []
        for t in range(n_tokens):
            acc = accs[r][t]
            isum = None
            for i, dot in enumerate(dots):
                part = _int_dot(b, w_vecs[i], x_vecs[t][i], bits, path, unsigned_q8)
                isum = part if isum is None else b.add(isum, part)
                last_of_group = i == len(dots) - 1 or dots[i + 1][0][0] != dot[0][0]
                if not last_of_group:          # a group of 128 sums its pieces in integers first
                    continue
                lanes_f = b.fmul(b.sitofp(isum, _vec(F32, lanes)), dx[t], flags=fast)
                if has_mins:     # d * dx * isum + m * xsum
                    term = b.fadd(b.fmul(lanes_f, d, flags=fast), b.fmul(m, c_x[t], flags=fast), flags=fast)
                else:            # d * (dx * isum - offset * xsum)
                    term = b.fmul(b.fadd(lanes_f, c_x[t], flags=fast), d, flags=fast)
                acc = b.fadd(acc, term, flags=fast)
                isum = None
            row_accs.append(acc)
        new_accs.append(row_accs)
    g_next = b.add(g0, ir.Constant(I64, per_step))
    b.cbranch(b.icmp_signed("<", g_next, n_groups), loop, done)
    g0.add_incoming(ir.Constant(I64, 0), entry)
    g0.add_incoming(g_next, loop)
    for r in range(n_rows):
        for t in range(n_tokens):
            accs[r][t].add_incoming(zero, entry)
            accs[r][t].add_incoming(new_accs[r][t], loop)

    b = ir.IRBuilder(done)
    for t in range(n_tokens):
        base = b.gep(out, [b.mul(out_stride, ir.Constant(I64, t))])
        for r in range(n_rows):
            b.store(_hsum(b, new_accs[r][t]), b.gep(base, [ir.Constant(I64, r)]))
    b.ret_void()
    return fn


def _int_dot(b, w, x, bits, path, unsigned_q8):
    """Weight codes . activation codes -> i32 lanes (8, or 16 for avx512)."""
    if path == AVX512:
        return _vnni(b, w, x)                      # 4-bit codes and biased 8-bit codes are unsigned
    if bits == 4:
        return _x86_madd(b, w, x) if path == AVX2 else _int_dot_u8s8_portable(b, w, x)
    return _int_dot_s8s8_x86(b, w, x) if path == AVX2 else _int_dot_s8s8_portable(b, w, x)


def best_path(features: set[str] | None = None) -> int:
    """The fastest path this CPU has."""
    features = host_features() if features is None else features
    if {"avx512f", "avx512bw", "avx512vnni"} <= features:
        return AVX512
    return AVX2 if "avx2" in features else PORTABLE


def variant(fmt, path: int) -> int:
    """The number that picks a kernel at run time: the format's place in the FORMATS table, times
    three, plus the path. (jit.py keys the on-disk cache by the table's source too, so a number
    never finds another format's machine code.)"""
    return len(PATHS) * FORMAT_LIST.index(fmt) + path


def unpack_variant(number: int):
    """variant() backwards: (format, path)."""
    return FORMAT_LIST[number // len(PATHS)], number % len(PATHS)


def tile_dot(n_rows: int, n_tokens: int):
    """A Numba intrinsic  f(qweight, scales, mins, row, xq, xd, xsum, token, out, variant)  that writes
    out[token + t, row + r] = (row + r of W) . (token + t of x) for r < n_rows, t < n_tokens, in
    the format and path of `variant` (see variant()), which must be a compile-time constant (a
    Numba literal, see numba.literally): only the kernels a model uses are compiled.
    qweight (rows, n_groups * qbytes) uint8; scales and mins (rows, n_groups) fp16 bits as uint16
    (mins unused by symmetric formats); xq (tokens, n_groups * G) int8, xd and xsum (tokens,
    n_groups) float32; out (tokens, rows) float32; all C-contiguous."""
    features = host_features()
    best = best_path(features)
    exact_half = "sse2" not in features or "f16c" in features     # x86 without F16C: the multiply

    @intrinsic
    def dot(typingctx, qweight, scales, mins, row, xq, xd, xsum, token, out, variant_id):
        if not isinstance(variant_id, types.IntegerLiteral):
            return None
        fmt, path = unpack_variant(variant_id.literal_value)
        bits, group, has_mins = fmt.bits, fmt.group_size, not fmt.symmetric
        emitted = min(path, best)                  # a path the host lacks: the next one down
        name = f"qllama_tile_dot_{n_rows}x{n_tokens}_{bits}_{group}_{int(has_mins)}_{PATHS[emitted]}_{int(exact_half)}"
        sig = types.void(qweight, scales, mins, row, xq, xd, xsum, token, out, variant_id)

        def codegen(context, b, signature, args):
            qw_t, sc_t, mn_t, _, xq_t, xd_t, xs_t, _, out_t, _ = signature.args
            qw, sc, mn, r, xq_, xd_, xs_, tok, out_, _ = args
            arrays = [context.make_array(t)(context, b, a) for t, a in
                      ((qw_t, qw), (sc_t, sc), (mn_t, mn), (xq_t, xq_), (xd_t, xd_), (xs_t, xs_), (out_t, out_))]
            qwa, sca, mna, xqa, xda, xsa, outa = arrays
            w_stride, s_stride = b.extract_value(qwa.shape, 1), b.extract_value(sca.shape, 1)
            xq_stride, out_stride = b.extract_value(xqa.shape, 1), b.extract_value(outa.shape, 1)

            def at(arr, elt, index):
                return b.gep(b.bitcast(arr.data, elt.as_pointer()), [index])
            fn = b.module.globals.get(name) or _define_tile_dot(
                b.module, name, n_rows, n_tokens, bits, group, has_mins, fmt.family.offset, emitted, exact_half)
            b.call(fn, [
                at(qwa, I8, b.mul(r, w_stride)), w_stride, at(sca, I16, b.mul(r, s_stride)),
                at(mna, I16, b.mul(r, s_stride)), s_stride, at(xqa, I8, b.mul(tok, xq_stride)), xq_stride,
                at(xda, F32, b.mul(tok, s_stride)), at(xsa, F32, b.mul(tok, s_stride)), s_stride, s_stride,
                at(outa, F32, b.add(b.mul(tok, out_stride), r)), out_stride])
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


@intrinsic
def as_float(typingctx, value):
    """float32 -> itself, uint16 (fp16 bits) -> float32: one kernel serves float16 and float32 caches."""
    if value == types.float32:
        return types.float32(value), lambda context, b, signature, args: args[0]
    if value == types.uint16:
        features = host_features()
        exact = "sse2" not in features or "f16c" in features
        return types.float32(value), lambda context, b, signature, args: _half_to_float(b, args[0], exact)
    return None


@intrinsic
def pow2(typingctx, n):
    """2.0 ** n as float32 for an integer n in [-126, 127], built from the exponent bits: plain IR
    that loops around it can vectorize (a call to expf cannot)."""
    def codegen(context, b, signature, args):
        e = b.add(b.trunc(args[0], I32), ir.Constant(I32, 127))
        return b.bitcast(b.shl(e, ir.Constant(I32, 23)), F32)

    return types.float32(types.int64), codegen
