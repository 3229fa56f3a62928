"""The reliability record's arithmetic on hand-made steps: features, answer-only counting,
minimum evidence for flags."""

import math

import pytest

from blendin_llm import BlendConfig, ReliabilityConfig
from blendin_llm.errors import ConfigError
from blendin_llm.reliability import ReliabilityTracker
from blendin_llm.uncertainty import FEATURES, NEGENTROPY_K, dist_stats


def _top(ps):
    """Top-K log-probs of a distribution given by its largest probabilities (rest spread)."""
    return [math.log(p) for p in ps]


def _tracker(**rc):
    return ReliabilityTracker(BlendConfig(gamma=0.4, reliability=ReliabilityConfig(**rc)),
                              "blendin", ["g"], gated=True, trace=False)






def _consulted_steps(t, n, total):
    sure = _top([0.9, 0.05] + [0.05 / 13] * 13)
    unsure = _top([0.3, 0.25] + [0.45 / 13] * 13)
    for i in range(total):
        if i < n:
            t.consulted([0.5], [0.9], [0.0], [0.0], [0.99])  # full disagreement
            t.step(unsure, math.log(0.3), sure, math.log(0.9))
        else:
            t.step(sure, math.log(0.9))




def test_dist_stats_matches_the_definitions():
    ps = [0.5, 0.2] + [0.3 / (NEGENTROPY_K - 2)] * (NEGENTROPY_K - 2)
    top1, top2, neg = dist_stats(_top(ps))
    te = -sum(p * math.log(p) for p in ps)  # ps sums to 1: renormalising changes nothing
    assert top1 == pytest.approx(0.5) and top2 == pytest.approx(0.2)
    assert neg == pytest.approx(1 - te / math.log(NEGENTROPY_K))
    assert dist_stats(_top([1.0] + [1e-30] * 14))[2] == pytest.approx(1.0)
    assert dist_stats(_top([1 / 15] * 15))[2] == pytest.approx(0.0, abs=1e-9)
    # only the top-K's shape counts (UQLM renormalises the top-K before the entropy)
    assert dist_stats(_top([0.02] * 15))[2] == pytest.approx(0.0, abs=1e-9)


def test_features_over_hand_made_steps():
    t = _tracker()
    sure = _top([0.9, 0.05] + [0.05 / 13] * 13)
    unsure = _top([0.3, 0.25] + [0.45 / 13] * 13)
    mixed = _top([0.6, 0.2] + [0.2 / 13] * 13)
    t.step(sure, math.log(0.9))
    t.consulted([0.5], [0.7], [0.0], [1.0], [0.4])
    t.step(unsure, math.log(0.25), mixed, math.log(0.6))
    t.step(sure, math.log(0.05))
    t.consulted([0.7], [0.8], [1.0], [0.0], [0.8])
    t.step(unsure, math.log(0.3), mixed, math.log(0.2))
    r = t.finish(stopped=True)
    f = r.features
    assert list(f) == list(FEATURES)
    assert f["norm_prob"] == pytest.approx((0.9 * 0.6 * 0.05 * 0.2) ** 0.25)
    assert f["min_prob"] == pytest.approx(0.05)
    assert f["base_norm_prob"] == pytest.approx((0.9 * 0.25 * 0.05 * 0.3) ** 0.25)
    assert f["mean_margin"] == pytest.approx((0.85 + 0.4 + 0.85 + 0.4) / 4)
    assert f["base_mean_margin"] == pytest.approx((0.85 + 0.05 + 0.85 + 0.05) / 4)
    assert f["base_min_negentropy"] == pytest.approx(dist_stats(unsure)[2])
    assert f["intervention_rate"] == 0.5 and f["base_unsure_rate"] == 0.5
    assert f["alpha_mean"] == pytest.approx(0.6) and f["alpha_std"] == pytest.approx(0.1)
    assert f["guide_weight"] == pytest.approx(1.2 / 4)
    assert f["agreement_topk"] == 0.5
    assert f["divergence_mean"] == pytest.approx(0.6) and f["divergence_max"] == 0.8
    assert f["divergence_early"] == pytest.approx(0.4 / 2)  # steps 0-1
    assert f["divergence_late"] == pytest.approx(0.8 / 2)  # steps 2-3
    assert f["log_tokens"] == pytest.approx(math.log(5)) and f["stopped"] == 1.0
    # the default score is the normalized probability, and says so
    assert r.score == pytest.approx(f["norm_prob"]) and r.score_source == "normalized_probability"


def test_only_the_answer_steps_are_scored():
    t = _tracker()
    sure = _top([0.9, 0.05] + [0.05 / 13] * 13)
    for lp in (0.9, 0.8, 0.01, 0.02):
        t.step(sure, math.log(lp))
    r = t.finish(answer_tokens=2)
    assert r.tokens == 2 and r.unscored_tokens == 2
    assert r.features["min_prob"] == pytest.approx(0.8)
    assert r.features["norm_prob"] == pytest.approx(math.sqrt(0.9 * 0.8))


def test_agreement_and_divergence_flags_need_minimum_evidence():
    # the demo's case: 1 consulted step of 10, agreement 0, divergence 0.99
    one = _tracker()
    _consulted_steps(one, 1, 10)
    r = one.finish()
    assert r.agreement_topk == 0.0 and r.mean_divergence == pytest.approx(0.99)
    assert not r.flagged, r.reasons
    three = _tracker()
    _consulted_steps(three, 3, 10)
    r = three.finish()
    assert r.flagged
    assert any(x.startswith("guide agreement 0.00 < 0.50") and "over 3 consulted steps" in x
               for x in r.reasons)
    assert any(x.startswith("mean divergence 0.99 > 0.50") and "over 3 consulted steps" in x
               for x in r.reasons)
    stricter = _tracker(min_consulted=4)
    _consulted_steps(stricter, 3, 10)
    assert not any("agreement" in x for x in stricter.finish().reasons)
    with pytest.raises(ConfigError, match="min_consulted"):
        ReliabilityConfig(min_consulted=0)
