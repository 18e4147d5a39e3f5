"""Each CUDA kernel against its numpy reference, on small shapes (the simulator is slow).

Oracles: the FORMATS table's numpy dequantize (tested bit for bit against the gguf package) for
every format's GEMV, GEMM and row lookup; qllama.model's rmsnorm, silu, attention and
qllama.rope.apply_rope for the rest."""
import numpy as np
import pytest
from numba import cuda

from qllama.cuda.launch import MAX_BATCH
from qllama.cuda.linear import CudaDenseLinear, CudaQuantLinear
from qllama.cuda.ops import CudaOps
from qllama.cuda.tensor import Tensor
from qllama.model import attention, rmsnorm, silu
from qllama.quantize.formats import FORMATS
from qllama.quantize.planes import NUMPY
from qllama.quantize.tensor import QuantizedTensor, plane_shapes
from qllama.rope import apply_rope


def random_planes(fmt, shape, rng) -> QuantizedTensor:
    """Random codes, high bits and sub-block scales over their whole ranges; fp16 scales (and
    mins) of either sign and several magnitudes."""
    planes = {}
    for name, (s, dtype) in plane_shapes(fmt, shape).items():
        if NUMPY[dtype] == np.float16:
            planes[name] = (rng.standard_normal(s) * 10.0 ** rng.integers(-3, 0, s)).astype(np.float16)
        else:
            planes[name] = rng.integers(0, 256, s, dtype=np.uint8)
    return QuantizedTensor(fmt, shape, planes)


def device(x) -> Tensor:
    return Tensor(cuda.to_device(np.ascontiguousarray(x, dtype=np.float32)))


def close(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("name", list(FORMATS))
def test_every_format_gemv_gemm_and_rows_match_its_numpy_dequantize(name):
    fmt = FORMATS[name]
    rng = np.random.default_rng(len(name))
    # 5 rows (not a whole tile), a row length that ends inside a group or super-block (padded planes)
    shape = (5, fmt.group_size + fmt.group_size // 2 + 8)
    q = random_planes(fmt, shape, rng)
    w = q.dequantize().astype(np.float64)                        # the oracle: (out, in)
    lin = CudaQuantLinear(q)
    for n in (1, 3, MAX_BATCH + 2):                              # decode, batched decode, prefill
        x = rng.standard_normal((n, shape[1])).astype(np.float32)
        close(np.asarray(lin(device(x))), x @ w.T)
    close(np.asarray(lin.rows(np.array([4, 0, 4]))), w[[4, 0, 4]])


def test_dense_gemv_gemm_and_rows_match_numpy():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((7, 45)).astype(np.float32)
    lin = CudaDenseLinear(w)
    for n in (1, MAX_BATCH + 1):
        x = rng.standard_normal((n, 45)).astype(np.float32)
        close(np.asarray(lin(device(x))), x.astype(np.float64) @ w.T)
    assert np.array_equal(np.asarray(lin.rows(np.array([6, 1]))), w[[6, 1]])


def test_rmsnorm_rope_silu_add_and_row_gather_match_the_reference():
    rng = np.random.default_rng(1)
    ops = CudaOps()
    x, weight = rng.standard_normal((3, 20)).astype(np.float32), rng.standard_normal(20).astype(np.float32)
    close(np.asarray(ops.rmsnorm(device(x), cuda.to_device(weight), 1e-5)), rmsnorm(x, weight, 1e-5))
    heads = rng.standard_normal((3, 2, 8)).astype(np.float32)
    angles = rng.uniform(0, 7, (3, 4))
    cos, sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
    close(np.asarray(ops.rope(device(heads), cos, sin)), apply_rope(heads, cos, sin))
    gate, up = rng.standard_normal((2, 9)).astype(np.float32), rng.standard_normal((2, 9)).astype(np.float32)
    close(np.asarray(ops.silu_mul(device(gate), device(up))), silu(gate) * up)
    close(np.asarray(device(gate) + device(up)), gate + up)
    close(np.asarray(device(x)[np.array([2, 0])]), x[[2, 0]])
    close(np.asarray(ops.concat([device(x[:1]), device(x[1:])])), x)


@pytest.mark.parametrize("n, pos", [(1, 0), (1, 6), (4, 3)])
def test_attention_with_grouped_query_heads_matches_the_reference(n, pos):
    rng = np.random.default_rng(n + pos)
    n_heads, kv_heads, hd = 4, 2, 8                              # n_rep 2: pairs of query heads share
    q = rng.standard_normal((n, n_heads, hd)).astype(np.float32)
    k = rng.standard_normal((pos + n, kv_heads, hd)).astype(np.float32)
    v = rng.standard_normal((pos + n, kv_heads, hd)).astype(np.float32)
    got = CudaOps().attend(device(q), cuda.to_device(k), cuda.to_device(v), pos, n_heads // kv_heads)
    close(np.asarray(got), attention(q, k, v, pos, n_heads // kv_heads))
