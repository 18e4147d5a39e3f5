"""The sampler: greedy, seeds, and that each filter keeps exactly the tokens it should."""
import numpy as np
import pytest

from qllama.errors import QllamaError
from qllama.sampling import SamplingParams, apply_repeat_penalty, make_sampler

LOGITS = np.log(np.array([0.5, 0.25, 0.15, 0.07, 0.03]))


def draws(n=3000, **kw):
    sample = make_sampler(SamplingParams(seed=0, **{"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, **kw}))
    return np.bincount([sample(LOGITS) for _ in range(n)], minlength=len(LOGITS)) / n


def test_greedy_is_argmax():
    assert make_sampler(SamplingParams(temperature=0))(np.array([0.1, 3.0, 2.9])) == 1


def test_plain_sampling_follows_the_distribution():
    assert np.abs(draws() - np.exp(LOGITS)).max() < 0.03


def test_top_k_keeps_k():
    freq = draws(top_k=2)
    assert freq[2:].sum() == 0 and abs(freq[0] - 2 / 3) < 0.03


def test_top_p_keeps_smallest_set_reaching_p():
    assert draws(top_p=0.7)[2:].sum() == 0      # 0.5 + 0.25 >= 0.7
    assert draws(top_p=0.76)[3:].sum() == 0 and draws(top_p=0.76)[2] > 0


def test_min_p_drops_unlikely():
    freq = draws(min_p=0.2)                      # keeps p >= 0.1: tokens 0, 1, 2
    assert freq[3:].sum() == 0 and freq[2] > 0


def test_low_temperature_sharpens():
    assert draws(temperature=0.3)[0] > 0.85


def test_same_seed_same_draws_and_other_seed_differs():
    s1, s2, s3 = (make_sampler(SamplingParams(seed=s, top_k=0, min_p=0)) for s in (7, 7, 8))
    seq1, seq2, seq3 = ([s(LOGITS) for _ in range(50)] for s in (s1, s2, s3))
    assert seq1 == seq2 and seq1 != seq3


def test_repeat_penalty_matches_llama_cpp_rule():
    out = apply_repeat_penalty(np.array([2.0, -2.0, 1.0]), [0, 1, 0], 2.0)
    assert out.tolist() == [1.0, -4.0, 1.0]


@pytest.mark.parametrize("bad", [{"temperature": -1}, {"top_p": 0}, {"top_p": 1.5}, {"min_p": 2}, {"top_k": -1},
                                 {"repeat_penalty": 0}])
def test_bad_parameters_are_refused(bad):
    with pytest.raises(QllamaError):
        SamplingParams(**bad)
