"""The reliability record: features, answer-only counting, minimum evidence for flags."""

import math

import pytest

from blendin_llm.uncertainty import FEATURES

PROMPT = "User: hello there\nAssistant:"


def test_stop_string_tokens_are_not_counted_or_scored(make_llm):
    llm = make_llm(strategy="base_only")
    free = llm.generate(PROMPT, max_new_tokens=30, trace=True)
    pieces = [t.text for t in free.reliability.trace]
    starts = [sum(len(p) for p in pieces[:i]) for i in range(len(pieces))]
    # a stop string that starts inside token 5's text and runs into the tokens after it
    start = starts[5] + max(0, len(pieces[5]) - 1)
    stop = free.text[start:start + 6]
    assert len(stop) == 6 and free.text.find(stop) == start
    res = llm.generate(PROMPT, max_new_tokens=30, stop=[stop], trace=True)
    assert res.text == free.text[:start]
    in_answer = sum(1 for s in starts if s < start)  # tokens with text before the stop string
    decoded = len(res.token_ids)
    assert decoded > in_answer  # the match needed tokens after the answer's last one
    assert res.usage.completion_tokens == res.reliability.tokens == in_answer
    assert res.usage.total_tokens == res.usage.prompt_tokens + in_answer
    assert res.reliability.unscored_tokens == decoded - in_answer
    assert [e.scored for e in res.reliability.trace] == \
        [True] * in_answer + [False] * (decoded - in_answer)
    # the features are those of the answer's tokens only
    probs = [e.prob for e in free.reliability.trace[:in_answer]]
    assert res.reliability.features["min_prob"] == pytest.approx(min(probs))
    assert res.reliability.features["norm_prob"] == pytest.approx(
        math.exp(sum(math.log(p) for p in probs) / in_answer))
    # without a stop string every decoded token counts
    assert free.usage.completion_tokens == free.reliability.tokens == len(free.token_ids)
    assert free.reliability.unscored_tokens == 0


def test_features_are_recorded_for_blended_answers(make_llm):
    r = make_llm().generate(PROMPT, max_new_tokens=20, gamma=0.6, trace=True).reliability
    assert r.interventions > 0
    f = r.features
    assert set(f) == set(FEATURES) and all(v is not None and math.isfinite(v) for v in f.values())
    blended = [e for e in r.trace if e.source == "blend"]
    # final and base distributions differ where the guide was consulted
    assert f["norm_prob"] == pytest.approx(math.exp(
        sum(math.log(e.prob) for e in r.trace) / len(r.trace)), rel=1e-5)
    assert f["base_norm_prob"] == pytest.approx(math.exp(
        sum(math.log(e.base_prob) for e in r.trace) / len(r.trace)), rel=1e-5)
    assert f["intervention_rate"] == pytest.approx(len(blended) / len(r.trace))
    assert f["alpha_mean"] == pytest.approx(sum(e.alpha for e in blended) / len(blended))
    assert 0 <= f["min_negentropy"] <= f["mean_negentropy"] <= 1
