"""GPTQ: with correlated inputs it must cut the *output* error below the best per-group rounding."""
import numpy as np
import pytest

from qllama.quantize.formats import FORMATS
from qllama.quantize.gptq import gptq_quantize
from qllama.quantize.tensor import quantize_matrix

RNG = np.random.default_rng(1)


@pytest.mark.parametrize("name", ["q4_g32", "q4a_g64", "q8_g128"])
@pytest.mark.parametrize("n_in", [128, 172])
def test_gptq_output_error_below_search(name, n_in):
    fmt = FORMATS[name]
    mix = RNG.standard_normal((n_in, n_in)) * 0.3 + np.eye(n_in)
    x = (RNG.standard_normal((2048, n_in)) * np.linspace(0.2, 3.0, n_in)) @ mix     # correlated, uneven scales
    w = RNG.standard_normal((96, n_in)).astype(np.float32)
    h = x.T @ x / len(x)
    g = gptq_quantize(w, fmt, h)
    s = quantize_matrix(w, fmt)
    assert g.dequantize().shape == w.shape and g.nbytes == s.nbytes
    out_err = lambda q: np.linalg.norm(x @ (q.dequantize() - w).T)
    assert out_err(g) < 0.9 * out_err(s)
