"""The whole model on the CUDA backend (in the simulator) against the CPU's numpy float32 reference
forward pass (itself tested against transformers and llama2.c's sample): stories260K, greedy."""
import numpy as np
import pytest

import qllama
from paths import MODELS

STORIES = MODELS / "stories260K" / "stories260K.bin"
PROMPT = [1, 403, 407]                  # BOS and two ids of the 512-token vocabulary
N_TOKENS = 4                            # a prompt and three decode steps: the simulator takes ~12 s a step


@pytest.fixture(scope="module")
def models():
    return qllama.load(STORIES, ctx=32, device="cuda"), qllama.load(STORIES, ctx=32, reference=True)


def test_greedy_tokens_match_the_cpu_reference(models):
    gpu, ref = models
    assert type(gpu.session.cache).__name__ == "DeviceKVCache"
    want = list(ref.generate(PROMPT, max_tokens=N_TOKENS, temperature=0))
    got = list(gpu.generate(PROMPT, max_tokens=N_TOKENS, temperature=0))
    assert len(want) == N_TOKENS and got == want


def test_batched_decoding_of_two_sessions_matches_each_alone(models):
    gpu, ref = models
    gpu_sessions, ref_sessions = [gpu.new_session() for _ in range(2)], [ref.new_session() for _ in range(2)]
    for g, r, prompt in zip(gpu_sessions, ref_sessions, ([1, 403], [1, 30, 60, 90])):
        g.prefill(prompt)
        r.prefill(prompt)
    got = gpu.decode_batch(gpu_sessions, [50, 70])
    want = ref.decode_batch(ref_sessions, [50, 70])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_a_k_quant_model_matches_the_cpu_reference_of_the_same_file(tmp_path):
    """Q4_K matrices (rows of 64 and 172 padded to a super-block of 256), a q8 embedding looked up
    from its planes: the GPU's tokens vs the float32 reference over the same file's dequantized weights."""
    from qllama.quantize.convert import convert
    path = tmp_path / "stories260K-q4_k.safetensors"
    convert(STORIES, path, format="q4_k", embeddings_format="q8_g32", search=False)
    gpu, ref = qllama.load(path, ctx=16, device="cuda"), qllama.load(path, ctx=16, reference=True)
    want = list(ref.generate(PROMPT, max_tokens=2, temperature=0))
    assert len(want) == 2 and list(gpu.generate(PROMPT, max_tokens=2, temperature=0)) == want
