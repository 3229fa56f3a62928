"""Repetition penalties: off changes nothing, each matches its reference rule, and they act."""

import pytest
import torch

from blendin_llm import SamplingParams
from blendin_llm.sampling import (
    FrequencyPresencePenalty,
    NoRepeatNGram,
    RepetitionPenalty,
    apply_processors,
    build_processors,
)

PROMPT = "User: hello there\nAssistant:"
OFF = dict(repetition_penalty=1.0, frequency_penalty=0.0, presence_penalty=0.0,
           no_repeat_ngram_size=0)


def _repeats(ids, n):
    grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
    return len(grams) - len(set(grams))


@pytest.mark.parametrize("kw", [dict(), dict(temperature=0.9, seed=4), dict(strategy="base_only"),
                                dict(gamma=2.0, logprobs=True, top_logprobs=2)])
def test_penalties_off_change_nothing(make_llm, kw):
    llm = make_llm(gamma=0.5)
    a = llm.generate(PROMPT, max_new_tokens=25, trace=True, **kw)
    b = llm.generate(PROMPT, max_new_tokens=25, trace=True, **OFF, **kw)
    assert a.token_ids == b.token_ids and a.text == b.text
    assert a.reliability == b.reliability and a.logprobs == b.logprobs
    assert build_processors(SamplingParams(**OFF), 400, 400, torch.device("cpu")) == []


def _history_and_logp(seed=0, v=50, n=30, distinct=12):
    g = torch.Generator().manual_seed(seed)
    hist = torch.randint(0, distinct, (n,), generator=g).tolist()  # many repeats
    logp = torch.log_softmax(torch.randn(v, generator=g) * 3, -1)
    return hist, logp


@pytest.mark.parametrize("penalty", [1.3, 0.7, 2.0])
def test_repetition_penalty_is_transformers_rule_on_log_probs(penalty):
    from transformers import RepetitionPenaltyLogitsProcessor

    hist, logp = _history_and_logp()
    proc = RepetitionPenalty(penalty, logp.shape[0], logp.device)
    for t in hist:
        proc.push(t)
    ref = RepetitionPenaltyLogitsProcessor(penalty)(torch.tensor([hist]), logp[None].clone())[0]
    assert torch.allclose(apply_processors([proc], logp), torch.log_softmax(ref, -1))


@pytest.mark.parametrize("n", [1, 2, 3])
def test_no_repeat_ngram_is_transformers_rule(n):
    from transformers import NoRepeatNGramLogitsProcessor

    hist, logp = _history_and_logp(seed=n, distinct=3)
    proc = NoRepeatNGram(n)
    for t in hist:
        proc.push(t)
    ref = NoRepeatNGramLogitsProcessor(n)(torch.tensor([hist]), logp[None].clone())[0]
    got = apply_processors([proc], logp)
    assert torch.equal(torch.isinf(got), torch.isinf(ref)) and torch.isinf(ref).any()
    assert torch.allclose(got[~torch.isinf(got)], torch.log_softmax(ref, -1)[~torch.isinf(ref)])


def test_no_repeat_ngram_lifts_a_ban_that_leaves_nothing():
    proc = NoRepeatNGram(1)
    for t in range(4):
        proc.push(t)
    logp = torch.tensor([0.4, 0.3, 0.2, 0.1]).log()
    assert torch.allclose(apply_processors([proc], logp), logp)


def test_frequency_and_presence_are_openais_rule():
    hist, logp = _history_and_logp()
    proc = FrequencyPresencePenalty(0.5, 1.5, logp.shape[0], logp.device)
    for t in hist:
        proc.push(t)
    counts = torch.bincount(torch.tensor(hist), minlength=logp.shape[0]).float()
    ref = logp - counts * 0.5 - (counts > 0).float() * 1.5
    assert torch.allclose(apply_processors([proc], logp), torch.log_softmax(ref, -1))


@pytest.fixture(scope="module")
def looping_llm(tok):
    """A tiny pair whose greedy answers loop (small weights), like the default pair's base can."""
    from blendin_llm import BlendedLLM, ModelSpec

    from tiny import make_model

    spec = lambda m, name: ModelSpec(model=m, tokenizer=tok, prompt_format="raw", name=name)
    return BlendedLLM(spec(make_model(tok, seed=0, init=0.1), "base"),
                      [spec(make_model(tok, seed=2, init=0.1), "guide")])


@pytest.mark.parametrize("blend", [dict(strategy="base_only"), dict(gamma=2.0)])
def test_penalties_stop_the_answer_repeating_itself(looping_llm, blend):
    llm = looping_llm
    kw = dict(max_new_tokens=40, ignore_eos=True, **blend)
    free = llm.generate(PROMPT, **kw).token_ids
    assert _repeats(free, 2) > 3  # the tiny model loops: otherwise this proves nothing
    assert _repeats(llm.generate(PROMPT, no_repeat_ngram_size=2, **kw).token_ids, 2) == 0
    assert _repeats(llm.generate(PROMPT, no_repeat_ngram_size=3, **kw).token_ids, 3) == 0
    for pen in (dict(repetition_penalty=3.0), dict(frequency_penalty=2.0),
                dict(presence_penalty=2.0)):
        ids = llm.generate(PROMPT, **pen, **kw).token_ids
        assert len(set(ids)) > len(set(free)), pen
    seeded = dict(temperature=0.8, seed=5, no_repeat_ngram_size=2)
    a = llm.generate(PROMPT, **seeded, **kw)
    assert a.token_ids == llm.generate(PROMPT, **seeded, **kw).token_ids
    assert _repeats(a.token_ids, 2) == 0


def test_log_probs_report_the_distribution_the_token_is_chosen_from(make_llm):
    llm = make_llm(strategy="base_only")
    res = llm.generate(PROMPT, max_new_tokens=30, ignore_eos=True, no_repeat_ngram_size=1,
                       logprobs=True, top_logprobs=5)
    seen = set()
    for tid, lp in zip(res.token_ids, res.logprobs):
        assert tid not in seen and lp.logprob > float("-inf")
        seen.add(tid)
    assert res.reliability.tokens == 30
