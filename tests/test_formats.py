"""Every entry of the FORMATS table: round trip, packing, sizes, the search, and ggml's exact layouts.

Oracle for the ggml-compatible formats: the `gguf` package's own quantize/dequantize (its Python
port of ggml-quants.c), which qllama did not write.
"""
import gguf
import numpy as np
import pytest

from qllama.errors import QllamaError
from qllama.quantize.formats import FORMATS, get_format
from qllama.quantize.planes import join_ggml_blocks, split_ggml_blocks
from qllama.quantize.tensor import from_ggml_blocks, plane_shapes, quantize_matrix, relative_error

RNG = np.random.default_rng(0)
SEARCHED = {name: f for name, f in FORMATS.items() if f.searchable}   # the group-wise formats
KQUANTS = {name: f for name, f in FORMATS.items() if f.kind == "k-quant"}
W = RNG.standard_normal((48, 172)).astype(np.float32)      # 172 columns: not a multiple of any group
W[3, 17] = 9.0                                              # an outlier, as real weights have


@pytest.mark.parametrize("fmt", FORMATS.values(), ids=FORMATS.keys())
def test_round_trip_error_within_tolerance(fmt):
    gauss = RNG.standard_normal((64, 256)).astype(np.float32)
    q = quantize_matrix(gauss, fmt)
    assert q.dequantize().shape == gauss.shape
    assert relative_error(q, gauss) <= fmt.tolerance


@pytest.mark.parametrize("fmt", FORMATS.values(), ids=FORMATS.keys())
def test_planes_have_the_table_sizes(fmt):
    q = quantize_matrix(W, fmt)
    n_groups = -(-W.shape[1] // fmt.group_size)
    assert q.nbytes == W.shape[0] * n_groups * fmt.bytes_per_group
    assert {k: (v.shape, v.dtype.kind) for k, v in q.planes.items()} == \
        {k: (s, {"U8": "u", "F16": "f"}[d]) for k, (s, d) in plane_shapes(fmt, W.shape).items()}


@pytest.mark.parametrize("fmt", SEARCHED.values(), ids=SEARCHED.keys())
def test_pack_unpack_round_trip(fmt):
    levels = RNG.integers(fmt.family.qmin, fmt.family.qmax + 1, size=(10, fmt.group_size))
    assert np.array_equal(fmt.unpack(fmt.pack(levels)), levels)


@pytest.mark.parametrize("fmt", SEARCHED.values(), ids=SEARCHED.keys())
def test_search_never_worse_than_absmax_per_row(fmt):
    searched = quantize_matrix(W, fmt).dequantize()
    absmax = quantize_matrix(W, fmt, search=False).dequantize()
    err_s = ((searched - W) ** 2).sum(axis=1)
    err_a = ((absmax - W) ** 2).sum(axis=1)
    assert np.all(err_s <= err_a * (1 + 1e-6)) and err_s.sum() < err_a.sum()


@pytest.mark.parametrize("fmt", SEARCHED.values(), ids=SEARCHED.keys())
def test_importance_moves_error_to_unimportant_columns(fmt):
    importance = np.ones(W.shape[1], np.float32)
    importance[::2] = 100.0                 # within every group, even columns matter more
    plain = quantize_matrix(W, fmt).dequantize()
    weighted = quantize_matrix(W, fmt, importance).dequantize()
    assert ((weighted - W)[:, ::2] ** 2).sum() < ((plain - W)[:, ::2] ** 2).sum()


@pytest.mark.parametrize("name, ggml_type", [("q8_g32", "Q8_0"), ("q4_g32", "Q4_0"), ("q4a_g32", "Q4_1")])
def test_ggml_formats_are_bit_exact(name, ggml_type):
    fmt, qtype = FORMATS[name], gguf.GGMLQuantizationType[ggml_type]
    x = RNG.standard_normal((16, 256)).astype(np.float32)
    blocks = gguf.quants.quantize(x, qtype).reshape(16, 8, -1)        # ggml's blocks, 8 per row
    q = quantize_matrix(x, fmt, search=False)
    scale_bytes = 2 if fmt.symmetric else 4
    assert np.array_equal(q.scales.view(np.uint8).reshape(16, 8, 2), blocks[..., :2])
    if not fmt.symmetric:
        assert np.array_equal(q.mins.view(np.uint8).reshape(16, 8, 2), blocks[..., 2:4])
    assert np.array_equal(q.qweight.reshape(16, 8, -1), blocks[..., scale_bytes:])
    assert np.array_equal(q.dequantize(), gguf.quants.dequantize(blocks.reshape(16, -1), qtype))


def random_kquant_blocks(fmt, n: int, rng) -> np.ndarray:
    """n valid ggml blocks of fmt: random bytes (any codes and sub-block scales are valid), with
    finite fp16 super-block scales (random bytes there could be inf or NaN)."""
    blocks = rng.integers(0, 256, size=(n, fmt.bytes_per_group), dtype=np.uint8)
    planes = split_ggml_blocks(blocks, n, 1, fmt.planes, fmt.ggml_fields)
    for name in ("scales", "mins"):
        if name in planes:
            planes[name][:] = (rng.standard_normal(planes[name].shape) * 0.02).astype(np.float16)
    return join_ggml_blocks(planes, 1, fmt.planes, fmt.ggml_fields)


@pytest.mark.parametrize("fmt", KQUANTS.values(), ids=KQUANTS.keys())
def test_kquant_reference_dequantize_is_ggml_bit_for_bit(fmt):
    """Random blocks, converted to planes as a GGUF tensor is, dequantize exactly as the gguf
    package's port of ggml's dequantize_row_q*_K; and the planes join back into the same bytes."""
    rows, n_blocks = 6, 3
    blocks = random_kquant_blocks(fmt, rows * n_blocks, RNG).reshape(rows, -1)
    q = from_ggml_blocks(blocks, (rows, n_blocks * 256), fmt)
    expected = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType[fmt.ggml_type])
    assert expected.shape == (rows, n_blocks * 256) and np.isfinite(expected).all()
    assert np.array_equal(q.dequantize(), expected)
    assert np.array_equal(join_ggml_blocks(q.planes, n_blocks, fmt.planes, fmt.ggml_fields).reshape(rows, -1), blocks)
    # extreme codes: every code at its maximum, and at zero
    for fill in (0, 255):
        planes = split_ggml_blocks(blocks, rows, n_blocks, fmt.planes, fmt.ggml_fields)
        for name in ("qweight", "qh"):
            if name in planes:
                planes[name][:] = fill
        full = join_ggml_blocks(planes, n_blocks, fmt.planes, fmt.ggml_fields).reshape(rows, -1)
        expected = gguf.quants.dequantize(full, gguf.GGMLQuantizationType[fmt.ggml_type])
        assert np.array_equal(from_ggml_blocks(full, (rows, n_blocks * 256), fmt).dequantize(), expected)


@pytest.mark.parametrize("fmt", KQUANTS.values(), ids=KQUANTS.keys())
def test_kquant_codes_pack_and_unpack(fmt):
    codes = RNG.integers(0, 1 << fmt.bits, size=(9, 256))
    packed = fmt.pack_codes(codes)
    assert {k: v.shape[1] for k, v in packed.items()} == {p.name: p.per_block for p in fmt.planes if p.name in packed}
    assert np.array_equal(fmt.codes(packed["qweight"], packed.get("qh")), codes)
    lo, hi = fmt.sub_range                # and the sub-block scales (and mins) over their whole range
    sc = RNG.integers(lo, hi + 1, size=(9, fmt.n_sub))
    m = RNG.integers(0, hi + 1, size=(9, fmt.n_sub)) if fmt.has_mins else None
    packed = fmt.pack_subscales(sc, m)
    assert packed.shape == (9, next(p.per_block for p in fmt.planes if p.name == "subscales"))
    got_sc, got_m = fmt.unpack_subscales(packed)
    assert np.array_equal(got_sc, sc) and (m is None and got_m is None or np.array_equal(got_m, m))


def test_get_format_names():
    assert get_format("q4", 64).name == "q4_g64"
    assert get_format("Q4_1").name == "q4a_g32"
    assert get_format("q8_g128").group_size == 128
    assert get_format("Q6_K").name == "q6_k" and get_format("q4_k").bits_per_weight == 4.5
    with pytest.raises(QllamaError, match="unknown format"):
        get_format("q3")
    with pytest.raises(QllamaError, match="group size 48"):
        get_format("q4", 48)
