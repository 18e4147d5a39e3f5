"""karpathy's stories260K, a real trained LLaMA, read from llama2.c .bin and from GGUF.

Oracle: the temperature-0 sample documented in llama2.c doc/stories260K.md (listed in
tests/models/README.md), and the two files must agree with each other.
"""
import numpy as np
import pytest

import qllama
from cli_helpers import qllama as qllama_cli
from paths import MODELS

STORIES = MODELS / "stories260K"
KARPATHY_IDS = [1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338, 401, 396,
                267, 337, 410, 408, 419, 292, 411, 322, 265, 282, 295, 433, 426, 385, 328, 432, 358, 394, 261,
                370, 432, 352, 266, 268, 388, 426]
KARPATHY_TEXT = ("Once upon a time, there was a little girl named Lily. She loved to play outside in the park. "
                 "One day, she saw a big, red ball.")
SOURCES = ["stories260K.bin", "stories260K.gguf"]


@pytest.fixture(scope="module", params=SOURCES)
def model(request):
    return qllama.load(STORIES / request.param)


def test_prompt_tokenizes_like_llama2c(model):
    assert model.tokenizer.encode("Once upon a time") == KARPATHY_IDS[:5]


def test_greedy_sample_matches_karpathy(model):
    out = list(model.generate("Once upon a time", max_tokens=len(KARPATHY_IDS) - 5, temperature=0))
    assert KARPATHY_IDS[:5] + out == KARPATHY_IDS
    assert model.tokenizer.decode(KARPATHY_IDS) == KARPATHY_TEXT


def test_bin_and_gguf_give_the_same_logits():
    a, b = (qllama.load(STORIES / name).logits(KARPATHY_IDS) for name in SOURCES)
    assert np.abs(a - b).max() < 1e-5


def test_gguf_context_length_is_its_metadata():
    # the GGUF says 2048 (a converter default); the .bin says the trained 512
    assert qllama.load(STORIES / "stories260K.gguf").args.max_seq_len == 2048
    assert qllama.load(STORIES / "stories260K.bin").args.max_seq_len == 512


def test_cli_run_streams_the_greedy_story():
    result = qllama_cli("run", "Once upon a time", "-m", STORIES / "stories260K.bin", "--temperature", "0",
                        "--max-tokens", len(KARPATHY_IDS) - 5)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == KARPATHY_TEXT


def test_cli_info_describes_the_model():
    result = qllama_cli("info", STORIES / "stories260K.gguf")
    assert result.returncode == 0, result.stderr
    for fact in ("format:      gguf", "n_kv_heads", "sentencepiece, 512 tokens", "parameters:  "):
        assert fact in result.stdout
