"""Every entry of the FORMATS table: round trip, packing, sizes, the search, and ggml's exact layouts.

Oracle for the ggml-compatible formats: the `gguf` package's own quantize/dequantize (its Python
port of ggml-quants.c), which qllama did not write.
"""
import gguf
import numpy as np
import pytest

from qllama.errors import QllamaError
from qllama.quantize.formats import FORMATS, get_format
from qllama.quantize.tensor import plane_shapes, quantize_matrix, relative_error

RNG = np.random.default_rng(0)
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
    assert {k: (v.shape, v.dtype.kind) for k, v in q.planes().items()} == \
        {k: (s, {"U8": "u", "F16": "f"}[d]) for k, (s, d) in plane_shapes(fmt, W.shape).items()}


@pytest.mark.parametrize("fmt", FORMATS.values(), ids=FORMATS.keys())
def test_pack_unpack_round_trip(fmt):
    levels = RNG.integers(fmt.family.qmin, fmt.family.qmax + 1, size=(10, fmt.group_size))
    assert np.array_equal(fmt.unpack(fmt.pack(levels)), levels)


@pytest.mark.parametrize("fmt", FORMATS.values(), ids=FORMATS.keys())
def test_search_never_worse_than_absmax_per_row(fmt):
    searched = quantize_matrix(W, fmt).dequantize()
    absmax = quantize_matrix(W, fmt, search=False).dequantize()
    err_s = ((searched - W) ** 2).sum(axis=1)
    err_a = ((absmax - W) ** 2).sum(axis=1)
    assert np.all(err_s <= err_a * (1 + 1e-6)) and err_s.sum() < err_a.sum()


@pytest.mark.parametrize("fmt", FORMATS.values(), ids=FORMATS.keys())
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


def test_get_format_names():
    assert get_format("q4", 64).name == "q4_g64"
    assert get_format("Q4_1").name == "q4a_g32"
    assert get_format("q8_g128").group_size == 128
    with pytest.raises(QllamaError, match="unknown format"):
        get_format("q3")
    with pytest.raises(QllamaError, match="group size 48"):
        get_format("q4", 48)
