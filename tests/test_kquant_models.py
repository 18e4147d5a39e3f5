"""GGUF files in k-quants and other GGML types: native planes and kernels, requantizing at load, bad
input. Models are tiny random LLaMAs written with the gguf package (tests/kquant_gguf.py); the
oracle is the float32 reference forward pass over the gguf package's dequantize of the same tensors."""
import gguf
import numpy as np
import pytest

import qllama
from kquant_gguf import VOCAB, random_blocks, write_model
from qllama.errors import QllamaError
from qllama.kernels.vector_ir import PATHS
from qllama.linear import QuantLinear
from qllama.quantize.formats import FORMATS
from qllama.quantize.tensor import from_ggml_blocks
from test_kernels import HOST_PATHS, quantize_activation_numpy, relative_rms

RNG = np.random.default_rng(5)
KQUANTS = {name: f for name, f in FORMATS.items() if f.kind == "k-quant"}
Q5_K_M = {"attn_q": "Q5_K", "attn_k": "Q5_K", "attn_output": "Q5_K", "ffn_gate": "Q5_K", "ffn_up": "Q5_K",
          "token_embd": "Q5_K"}
# llama.cpp's smallest k-quants (its Q2_K / Q3_K_M files mix them with Q4_K .. Q6_K)
Q2_Q3 = {"attn_q": "Q2_K", "attn_k": "Q3_K", "attn_output": "Q3_K", "ffn_gate": "Q2_K", "ffn_up": "Q3_K",
         "token_embd": "Q2_K"}
IDS = np.random.default_rng(1).integers(0, VOCAB, 13)          # a prompt: token tiles of 8, 4 and 1


@pytest.mark.parametrize("path", HOST_PATHS, ids=PATHS[:len(HOST_PATHS)])
@pytest.mark.parametrize("fmt", KQUANTS.values(), ids=KQUANTS.keys())
def test_kernels_on_random_ggml_blocks(fmt, path):
    """Random codes and sub-block scales (the full ranges, which a quantizer may not produce), 13
    rows (a padded block of eight), against the table's reference dequantize times x_hat."""
    rows, cols = 13, 512
    q = from_ggml_blocks(random_blocks(fmt.ggml_type, rows, cols, RNG), (rows, cols), fmt)
    lin, ref = QuantLinear(q, path=path), q.dequantize().astype(np.float64)
    for n in (1, 13):
        x = RNG.standard_normal((n, cols)).astype(np.float32)
        x_hat = np.stack([quantize_activation_numpy(row, fmt.act_group)[2] for row in x])
        expected = x_hat.astype(np.float64) @ ref.T
        assert np.abs(lin(x) - expected).max() <= 1e-5 * (np.abs(x_hat) @ np.abs(ref).T).max()
    assert np.array_equal(lin.rows([12, 0, 7]), ref[[12, 0, 7]].astype(np.float32))


@pytest.fixture(scope="module")
def q4_k_m(tmp_path_factory):
    path = tmp_path_factory.mktemp("kq") / "q4_k_m.gguf"
    write_model(path)
    return path


@pytest.mark.parametrize("types", [None, Q5_K_M, Q2_Q3], ids=["Q4_K_M", "Q5_K_M", "Q2_K+Q3_K"])
def test_kquant_model_runs_natively_and_matches_the_reference(tmp_path, q4_k_m, types):
    path = q4_k_m
    if types is not None:
        path = tmp_path / "model.gguf"
        write_model(path, types)
    fast, ref = qllama.load(path, kv_dtype="f32"), qllama.load(path, reference=True)
    expected = {"model.embed_tokens.weight": "q4_k", "lm_head.weight": "q6_k", "model.layers.1.mlp.down_proj.weight": "q6_k",
                "model.layers.1.self_attn.v_proj.weight": "q6_k", "model.layers.1.mlp.gate_up_proj.weight": "q4_k"}
    if types is Q5_K_M:
        expected.update({"model.embed_tokens.weight": "q5_k", "model.layers.1.mlp.gate_up_proj.weight": "q5_k"})
    if types is Q2_Q3:       # gate and up are fused only in one format: here each is its own matrix
        del expected["model.layers.1.mlp.gate_up_proj.weight"]
        expected.update({"model.embed_tokens.weight": "q2_k", "model.layers.1.mlp.gate_proj.weight": "q2_k",
                         "model.layers.1.mlp.up_proj.weight": "q3_k", "model.layers.1.self_attn.o_proj.weight": "q3_k"})
    assert {n: fast.weights[n].fmt.name for n in expected} == expected
    # the planes hold the file's bytes, no more: no float copy of any matrix
    reader = gguf.GGUFReader(path)
    matrices = {id(w): w for w in fast.weights.values() if not isinstance(w, np.ndarray)}.values()
    assert all(isinstance(w, QuantLinear) for w in matrices)
    assert sum(w.nbytes for w in matrices) == sum(int(t.n_bytes) for t in reader.tensors if len(t.shape) == 2)
    # int8 activations: measured 1.0% (Q4_K_M) against the reference
    logits, expected_logits = fast.logits(IDS), ref.logits(IDS)
    assert relative_rms(logits, expected_logits) < 0.04
    assert (logits.argmax(1) == expected_logits.argmax(1)).mean() >= 0.9
    # one prompt at once, or its head then one token at a time: every token's matmuls are the same sums
    session = fast.new_session()
    session.forward(IDS[:9], 0)
    steps = [session.forward(IDS[i:i + 1], i)[-1] for i in range(9, len(IDS))]
    assert np.abs(np.stack(steps) - logits[9:]).max() <= 1e-4 * np.abs(logits).max()


REQUANTIZED = {"attn_q": "Q5_0", "attn_k": "IQ4_NL", "attn_v": "Q5_1", "attn_output": "IQ4_XS",
               "ffn_gate": "IQ2_XXS", "ffn_up": "IQ3_XXS", "token_embd": "Q4_0", "output": "Q8_0"}
NEAREST = {"q_proj": "q5_k", "k_proj": "q4_k", "v_proj": "q6_k", "o_proj": "q4_g64"}


def test_other_types_are_requantized_at_load_with_one_notice(tmp_path, capfd):
    path = tmp_path / "mixed.gguf"
    write_model(path, REQUANTIZED)
    capfd.readouterr()
    fast = qllama.load(path)
    notice = [line for line in capfd.readouterr().err.splitlines() if "requantized" in line]
    assert len(notice) == 1 and "mixed.gguf" in notice[0]
    for source, target in (("Q5_0", "q5_k"), ("IQ4_NL", "q4_k"), ("Q5_1", "q6_k"), ("IQ4_XS", "q4_g64"),
                           ("IQ2_XXS", "q2_k"), ("IQ3_XXS", "q3_k")):
        assert f"{source} (2 tensors, requantized to {target})" in notice[0]
    assert "Q4_0" not in notice[0] and "Q8_0" not in notice[0]       # table types: bit for bit
    ckpt = fast.checkpoint
    for proj, target in NEAREST.items():
        name = f"model.layers.0.self_attn.{proj}.weight"
        lin, source = fast.weights[name], ckpt.tensors[name].float32()
        assert lin.fmt.name == target
        # rounding as the target's quantize_ref: within its round-trip tolerance on Gaussian weights
        assert relative_rms(lin.rows(np.arange(lin.shape[0])), source) <= FORMATS[target].tolerance
    ref = qllama.load(path, reference=True)
    assert relative_rms(fast.logits(IDS), ref.logits(IDS)) < 0.3      # measured 0.12: IQ2/IQ3 to Q2_K/Q3_K lose most


def _patch_tensor_info(path, name: str, dim0=None, type_id=None):
    """Rewrites a tensor's first dimension or its type id in the GGUF header, in place."""
    data = bytearray(path.read_bytes())
    key = name.encode()
    at = data.index(len(key).to_bytes(8, "little") + key) + 8 + len(key)
    n_dims = int.from_bytes(data[at:at + 4], "little")
    if dim0 is not None:
        data[at + 4:at + 12] = dim0.to_bytes(8, "little")
    if type_id is not None:
        data[at + 4 + 8 * n_dims:at + 8 + 8 * n_dims] = type_id.to_bytes(4, "little")
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("change, fragment", [
    ({"dim0": 200}, "blk.0.ffn_down.weight (Q6_K) has rows of 200 weights, not a whole number of Q6_K blocks of 256"),
    ({"type_id": 99}, "blk.0.ffn_down.weight has unknown GGML type 99"),
    ({"type_id": int(gguf.GGMLQuantizationType.Q8_1)}, "blk.0.ffn_down.weight has GGML type Q8_1, which qllama cannot decode"),
])
def test_bad_tensor_info_is_one_clear_error(tmp_path, q4_k_m, change, fragment):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(q4_k_m.read_bytes())
    _patch_tensor_info(bad, "blk.0.ffn_down.weight", **change)
    with pytest.raises(QllamaError) as info:
        qllama.load(bad)
    message = str(info.value)
    assert message.startswith(str(bad)) and fragment in message and "\n" not in message


def test_truncated_super_block_is_one_clear_error(tmp_path):
    path = tmp_path / "cut.gguf"
    write_model(path, last="blk.1.ffn_gate")
    data = path.read_bytes()
    path.write_bytes(data[:len(data) - 100])            # less than one 144-byte Q4_K super-block
    with pytest.raises(QllamaError, match=r"cut.gguf: tensor blk.1.ffn_gate.weight \(Q4_K\) runs past the end"):
        qllama.load(path)
