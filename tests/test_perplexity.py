"""`qllama perplexity`: llama.cpp's windowing and scoring, KL divergence against a reference, errors.

Oracles: an independent plain-numpy scoring of `model.logits` per window (the indices), a model
against itself (KL exactly 0, argmaxes all agree), and the model's own training domain: stories260K
learned TinyStories, so a children's story must read far more easily to it than the GPL's legal prose.
"""
import math
import os

import numpy as np
import pytest

import qllama
from qllama.linear import DenseLinear
from cli_helpers import assert_one_line_error, qllama as qllama_cli
from paths import REPO, MODELS
from qllama.errors import QllamaError
from qllama.perplexity import perplexity, read_text, split_windows

STORIES_BIN = MODELS / "stories260K" / "stories260K.bin"
GPL = REPO / "bench" / "data" / "gpl-3.txt"
# written for this test in the style of TinyStories (222 tokens with tok512)
STORY = ("Once upon a time, there was a little boy named Tom. Tom had a red ball. He liked to play with his ball "
         "in the park every day. One day, Tom saw a small dog under a big tree. The dog was sad because it was lost. "
         "Tom wanted to help the dog. He gave the dog some of his bread and said, \"Do not be sad, little dog. "
         "I will help you find your home.\" The dog wagged its tail and was happy. Tom and the dog walked and walked "
         "until they found a kind lady. \"That is my dog!\" said the lady. She gave Tom a big hug. Tom was very happy.")


@pytest.fixture(scope="module")
def model():
    return qllama.load(STORIES_BIN)


@pytest.fixture(scope="module")
def story_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "story.txt"
    path.write_text(STORY + "\n")
    return path


def independent_nll(model, text, ctx):
    """llama.cpp's scoring written out plainly: per window, -log softmax(logits[j])[w[j+1]] for j >= ctx//2."""
    ids = model.tokenizer.encode(text)
    nll, n_windows = [], 0
    for start in range(0, len(ids), ctx):
        w = [model.tokenizer.bos_id] + ids[start + 1:start + ctx]
        scored = range(ctx // 2, len(w) - 1)
        if not scored:
            continue
        n_windows += 1
        logits = model.logits(w).astype(np.float64)
        for j in scored:
            row = logits[j]
            nll.append(np.log(np.sum(np.exp(row - row.max()))) + row.max() - row[w[j + 1]])
    return np.array(nll), n_windows


@pytest.mark.parametrize("ctx", [16, 20, 48])  # 222 tokens: final partial windows of 14 (kept), 2 (dropped), 30 (kept)
def test_nll_equals_an_independent_computation(model, ctx):
    nll, n_windows = independent_nll(model, STORY, ctx)
    r = perplexity(model, STORY, ctx=ctx)
    assert (r.n_tokens, r.n_windows, r.ctx) == (len(nll), n_windows, ctx)
    assert r.ppl == pytest.approx(math.exp(nll.mean()), rel=1e-9)
    assert r.ppl_se == pytest.approx(r.ppl * nll.std(ddof=1) / math.sqrt(len(nll)), rel=1e-9)
    assert r.kl is None and r.top1 is None


def test_windows_are_llama_cpp_chunks_with_bos_first():
    windows = split_windows(list(range(2, 16)), 5, bos_id=1)  # 14 tokens: 5 + 5 + a tail of 4 >= 5//2 + 2
    assert [w.tolist() for w in windows] == [[1, 3, 4, 5, 6], [1, 8, 9, 10, 11], [1, 13, 14, 15]]
    assert len(split_windows(list(range(13)), 5, bos_id=None)) == 2  # a tail of 3 would score nothing
    assert split_windows(list(range(13)), 5, bos_id=None)[1].tolist() == [5, 6, 7, 8, 9]


def test_model_against_itself_has_zero_kl_and_full_agreement(model):
    r = perplexity(model, STORY, ctx=64, reference=qllama.load(STORIES_BIN))
    assert abs(r.kl) < 1e-9 and r.kl_se < 1e-9
    assert r.top1 == 1.0 and r.top1_se == 0.0
    assert r.ref_ppl == pytest.approx(r.ppl, rel=1e-12)


def test_perturbed_model_diverges_from_the_reference(model):
    noisy = qllama.load(STORIES_BIN)
    name = "model.layers.0.mlp.down_proj.weight"
    w = noisy.weights[name].weight  # read-only (memory-mapped): replace the array, do not write into it
    noisy.weights[name] = DenseLinear(w + np.random.default_rng(0).normal(0, 0.5 * w.std(), w.shape).astype(np.float32))
    r = perplexity(noisy, STORY, ctx=64, reference=model)
    assert r.kl > 0.01 and r.kl > 3 * r.kl_se
    assert 0 < r.top1 < 1
    assert r.ref_ppl == pytest.approx(perplexity(model, STORY, ctx=64).ppl, rel=1e-12)
    assert r.ppl == pytest.approx(perplexity(noisy, STORY, ctx=64).ppl, rel=1e-12)


def test_story_is_far_easier_than_legal_prose(model):
    # Sanity oracle: stories260K is a TinyStories model; on a TinyStories-like story its perplexity
    # must be far lower than on the GPL text (measured: about 3 vs about 90 at ctx 64).
    story = perplexity(model, STORY, ctx=64)
    legal = perplexity(model, read_text(GPL)[:6000], ctx=64)
    assert story.ppl * 5 < legal.ppl
    assert story.ppl + 3 * story.ppl_se < legal.ppl - 3 * legal.ppl_se


def test_reference_with_another_tokenizer_is_refused(model):
    # the same weights from GGUF: its SentencePiece model keeps runs of spaces, tok512.model collapses them
    other = qllama.load(MODELS / "stories260K" / "stories260K.gguf")
    with pytest.raises(QllamaError, match="do not share a tokenizer"):
        perplexity(model, STORY.replace(" ", "  "), ctx=64, reference=other)


def test_reference_with_another_vocabulary_is_refused(model):
    # a random tiny HF model with 320 tokens (no tokenizer of its own) beside stories260K's 512
    other = qllama.load(REPO / "tests" / "fixtures" / "hf" / "llama3_untied_f32")
    with pytest.raises(QllamaError, match="do not share a vocabulary: 512 tokens vs 320"):
        perplexity(model, STORY, ctx=64, reference=other)


def test_cli_on_the_bench_text():
    # one BLAS thread: this model's matrices are tiny, and OpenBLAS threads on a busy 2-core machine
    # made this run 4-10x slower (3 s -> 14-30 s)
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    result = qllama_cli("perplexity", GPL, "-m", STORIES_BIN, "--ctx", 128, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("perplexity: ")
    ppl = float(result.stdout.split()[1])
    assert 20 < ppl < 500  # far from the training domain, yet far better than uniform over 512 tokens
    assert "windows of 128" in result.stdout
    assert result.stderr == ""  # no progress lines when stderr is not a terminal


def test_cli_with_a_reference(story_file):
    result = qllama_cli("perplexity", story_file, "-m", STORIES_BIN, "--ctx", 64, "--reference", STORIES_BIN)
    assert result.returncode == 0, result.stderr
    assert "KL(ref||model):  0.000000" in result.stdout and "same top token:  100.000" in result.stdout


def test_cli_missing_and_empty_text(tmp_path):
    assert_one_line_error(qllama_cli("perplexity", tmp_path / "nope.txt", "-m", STORIES_BIN), "nope.txt", "no such file")
    (tmp_path / "empty.txt").write_text("\n \n")
    assert_one_line_error(qllama_cli("perplexity", tmp_path / "empty.txt", "-m", STORIES_BIN), "empty.txt", "empty")


def test_cli_text_shorter_than_one_window(story_file):
    result = qllama_cli("perplexity", story_file, "-m", STORIES_BIN, "--ctx", 256)
    assert_one_line_error(result, "222 tokens", "fewer than one window of 256", "--ctx 222")


def test_cli_ctx_beyond_the_model_context(story_file):
    # stories260K.bin was trained at (and so loads with) a context of 512
    result = qllama_cli("perplexity", story_file, "-m", STORIES_BIN, "--ctx", 1024)
    assert_one_line_error(result, "--ctx 1024", "context of 512")


def test_cli_reference_with_another_vocabulary(story_file):
    # a random tiny HF model with 320 tokens, given stories260K's tokenizer: refused at load, naming both
    tok = MODELS / "stories260K" / "tok512.model"
    tiny = REPO / "tests" / "fixtures" / "hf" / "llama3_untied_f32"
    result = qllama_cli("perplexity", story_file, "-m", STORIES_BIN, "--ctx", 64, "--reference", tiny, "--tokenizer", tok)
    assert_one_line_error(result, "tok512.model", "512 tokens", "320 rows")
