"""Run-time mitigation: a deliberately bad guide (random weights that disagree with the base) is
detected across responses, down-weighted, then switched off; a good guide is left alone."""

import pytest

from blendin_llm import BlendConfig, BlendedLLM, MitigationConfig, ModelSpec
from blendin_llm.errors import ConfigError

from tiny import make_model

PROMPTS = ["The quick brown fox", "User: hello there", "Question: what is 12 + 30?",
           "I cannot help with", "numbers 12345 and", "Sure, here is a short"]


@pytest.fixture(scope="module")
def bad_guide(tok):
    return make_model(tok, seed=7, init=1.0)  # random weights, another seed: disagrees with the base


def pair(base_model, guide, tok, **mit):
    base = ModelSpec(model=base_model, tokenizer=tok, prompt_format="raw", name="base")
    g = ModelSpec(model=guide, tokenizer=tok, prompt_format="raw", name="guide")
    cfg = BlendConfig(strategy="blendin", gamma=1.1, mitigation=MitigationConfig(**mit))
    return BlendedLLM(base, [g], cfg)


def test_bad_guide_is_downweighted_then_switched_off(base_model, bad_guide, tok):
    llm = pair(base_model, bad_guide, tok, min_agreement=0.6, off_agreement=0.3, min_responses=2,
               decay=0.5, probe_every=100)
    plain = BlendedLLM(ModelSpec(model=base_model, tokenizer=tok, prompt_format="raw"),
                       config=BlendConfig(strategy="base_only"))
    seen = []
    for p in PROMPTS:
        res = llm.generate(p, max_new_tokens=12)
        seen.append((res.reliability.guides[0].weight if res.reliability.guides else 0.0,
                     res.reliability.mitigations, res))
    agreements = [h.agreement for h in llm.guide_monitor.health]
    assert agreements[0] < 0.3, agreements
    # first responses: full weight, no mitigation yet
    assert seen[0][0] == 1.0 and seen[0][1] == []
    # later: switched off, said so, and the answer is the base's own
    w, notes, res = seen[-1]
    assert res.reliability.interventions == 0 and res.reliability.guides == []
    assert any("switched off" in n and "'guide'" in n for n in notes)
    assert res.text == plain.generate(PROMPTS[-1], max_new_tokens=12).text
    assert res.usage.guide_tokens_computed == 0  # an off guide is not run at all
    # reset brings it back
    llm.guide_monitor.reset()
    again = llm.generate(PROMPTS[0], max_new_tokens=12)
    assert again.reliability.mitigations == [] and again.reliability.interventions > 0


def test_downweighting_scales_alpha(base_model, bad_guide, tok):
    llm = pair(base_model, bad_guide, tok, min_agreement=0.99, off_agreement=0.0,
               min_responses=1, downweight=0.25)
    first = llm.generate(PROMPTS[0], max_new_tokens=8)
    second = llm.generate(PROMPTS[0], max_new_tokens=8)
    assert first.reliability.guides[0].weight == 1.0
    assert second.reliability.guides[0].weight == 0.25
    assert any("down-weighted to 0.25" in n for n in second.reliability.mitigations)
    # same first step (same prompt, same distributions): the alpha used is a quarter
    cfg_alpha = first.reliability.trace is None
    a1 = llm.generate(PROMPTS[0], max_new_tokens=1, trace=True).reliability.trace[0].alpha
    llm.guide_monitor.reset()
    a0 = llm.generate(PROMPTS[0], max_new_tokens=1, trace=True).reliability.trace[0].alpha
    assert cfg_alpha and a1 == pytest.approx(0.25 * a0, rel=1e-5)


def test_good_guide_is_left_alone(base_model, tok):
    # the base as its own guide; gamma > 1 makes every step "unsure", so no rate criterion here
    llm = pair(base_model, base_model, tok, min_responses=1, max_intervention_rate=1.0)
    for p in PROMPTS[:4]:
        res = llm.generate(p, max_new_tokens=8)
        assert res.reliability.mitigations == [] and res.reliability.guides[0].weight == 1.0
    assert llm.guide_monitor.health[0].agreement == pytest.approx(1.0)


def test_probe_remeasures_an_off_guide(base_model, bad_guide, tok):
    llm = pair(base_model, bad_guide, tok, min_agreement=0.6, off_agreement=0.5,
               min_responses=1, probe_every=2, downweight=0.5)
    llm.generate(PROMPTS[0], max_new_tokens=6)  # observed -> off
    off = llm.generate(PROMPTS[1], max_new_tokens=6)
    probe = llm.generate(PROMPTS[2], max_new_tokens=6)
    assert off.reliability.interventions == 0
    assert probe.reliability.interventions > 0 and probe.reliability.guides[0].weight == 0.5
    assert any("re-measure" in n for n in probe.reliability.mitigations)


def test_mitigation_off_by_default(make_llm):
    llm = make_llm(strategy="blendin", gamma=1.1)
    for p in PROMPTS[:3]:
        assert llm.generate(p, max_new_tokens=6).reliability.mitigations == []
    assert llm.guide_monitor.health[0].responses == 0


@pytest.mark.parametrize("cap", [0.0, 0.25, 0.5])
def test_intervention_cap(make_llm, cap):
    llm = make_llm(config=BlendConfig(strategy="blendin", gamma=1.1,
                                      mitigation=MitigationConfig(guide_health=False,
                                                                  intervention_cap=cap)))
    res = llm.generate(PROMPTS[0], max_new_tokens=20, ignore_eos=True)
    rel = res.reliability
    assert rel.intervention_rate <= cap + 1 / rel.tokens
    assert rel.interventions >= int(cap * rel.tokens) - 1
    skipped = rel.tokens - rel.interventions
    assert any(f"intervention cap {cap:.2f}" in m and f"at {skipped} step" in m
               for m in rel.mitigations)


@pytest.mark.parametrize("bad", [dict(min_agreement=1.5), dict(off_agreement=0.5, min_agreement=0.2),
                                 dict(min_responses=0), dict(intervention_cap=-0.1),
                                 dict(decay="x")])
def test_bad_mitigation_config(bad):
    with pytest.raises(ConfigError):
        MitigationConfig(**bad)


def test_config_roundtrip():
    cfg = BlendConfig(gamma=0.3, alpha=0.4, mitigation=MitigationConfig(intervention_cap=0.2))
    assert BlendConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError):
        BlendConfig.from_dict({"gama": 0.3})


def test_consult_policy_gates_on_gamma_and_keeps_the_share_under_the_cap():
    from blendin_llm import BlendConfig
    from blendin_llm.strategies import ConsultPolicy, get_strategy, unsure

    assert unsure(0.39, 0.4) and not unsure(0.4, 0.4)
    strategy = get_strategy(BlendConfig(gamma=0.4))
    free = ConsultPolicy(strategy)
    assert [free(p) for p in (0.1, 0.9, 0.3, 0.5)] == [True, False, True, False]
    capped = ConsultPolicy(strategy, cap=0.25)
    asked = [capped(0.1) for _ in range(40)]  # the base is unsure at every step
    assert sum(asked) == 10 and capped.capped == 30
    for n in range(1, 41):  # at no point above the cap (counting the step itself)
        assert sum(asked[:n]) <= 0.25 * n + 1
