"""The Numba kernels against the numpy reference of every format, and the fast model against the
reference forward pass (same greedy tokens on real models)."""
import numpy as np
import pytest

import qllama
from paths import SHARED_MODELS
from qllama.linear import QuantLinear
from qllama.quantize.formats import FORMATS
from qllama.quantize.tensor import quantize_matrix

RNG = np.random.default_rng(2)


@pytest.mark.parametrize("fmt", FORMATS.values(), ids=FORMATS.keys())
@pytest.mark.parametrize("rows, cols", [(37, 172), (64, 256), (5, 40)])    # odd rows, ragged groups
def test_kernels_match_the_reference_dequantize(fmt, rows, cols):
    w = RNG.standard_normal((rows, cols)).astype(np.float32)
    q = quantize_matrix(w, fmt)
    lin, ref = QuantLinear(q), q.dequantize()
    for n in (1, 2, 9):                                   # decode GEMV and prefill tiles
        x = RNG.standard_normal((n, cols)).astype(np.float32)
        expected = x.astype(np.float64) @ ref.T.astype(np.float64)
        # float32 sums of `cols` products: error ~ sqrt(cols) * eps * |terms|
        assert np.abs(lin(x) - expected).max() <= 1e-5 * (np.abs(x) @ np.abs(ref).T).max() + 1e-4
    ids = [rows - 1, 0, rows // 2]
    assert np.array_equal(lin.rows(ids), ref[ids])


def greedy(model, prompt, n):
    return list(model.generate(prompt, max_tokens=n, temperature=0))


def test_fast_quantized_stories_matches_reference(tmp_path):
    from qllama.quantize.convert import convert
    out = tmp_path / "s.safetensors"
    convert(SHARED_MODELS / "stories260K" / "stories260K.bin", out, format="q4")
    fast, ref = qllama.load(out), qllama.load(out, reference=True)
    assert isinstance(fast.weights["model.layers.0.mlp.up_proj.weight"], QuantLinear)
    ids = fast.tokenizer.encode("Once upon a time there was a big dog")
    # with a float32 cache, only float32 reassociation differs: logits agree to ~1e-5 of their scale
    assert np.abs(qllama.load(out, kv_dtype="f32").logits(ids) - ref.logits(ids)).max() < 1e-3
    assert greedy(fast, "Once upon a time", 32) == greedy(ref, "Once upon a time", 32)


def test_fast_smollm2_matches_reference(smollm2_gguf):
    fast, ref = qllama.load(smollm2_gguf), qllama.load(smollm2_gguf, reference=True)
    assert isinstance(fast.weights["model.layers.0.self_attn.q_proj.weight"], QuantLinear)
    ids = fast.tokenizer.encode("The capital of France is")
    assert np.abs(qllama.load(smollm2_gguf, kv_dtype="f32").logits(ids) - ref.logits(ids)).max() < 1e-2
    assert greedy(fast, "The capital of France is", 32) == greedy(ref, "The capital of France is", 32)


def test_bench_command_reports_speeds():
    from cli_helpers import qllama as qllama_cli
    result = qllama_cli("bench", "-m", SHARED_MODELS / "stories260K" / "stories260K.bin", "--decode-tokens", "4",
                        "--threads", "1")
    assert result.returncode == 0, result.stderr
    for fact in ("prefill  128 tokens", "decode:", "GB/s", "peak RSS", "1 threads"):
        assert fact in result.stdout, fact
