"""Strategies and the consult policy on hand-made distributions: the blend formulas, the gamma
gate and the intervention cap, without any model."""

import math

import pytest
import torch

from blendin_llm import BlendConfig
from blendin_llm.errors import ConfigError
from blendin_llm.strategies import (
    _REGISTRY,
    BlendInStrategy,
    ConsultPolicy,
    StepView,
    Strategy,
    available_strategies,
    get_strategy,
    register_strategy,
    unsure,
)


def view(base, guides, weight=None):
    base = torch.tensor(base, dtype=torch.float64)
    guides = torch.tensor(guides, dtype=torch.float64)
    argmax = guides.argmax(-1)
    return StepView(base_probs=base, guide_probs=guides, base_top1=base.max(),
                    guide_top1=guides.max(-1).values, guide_argmax=argmax,
                    base_at_guide_top=base[argmax],
                    guide_weight=None if weight is None else torch.tensor(weight,
                                                                           dtype=torch.float64))


BASE = [0.3, 0.25, 0.25, 0.2]
GUIDE = [0.1, 0.7, 0.1, 0.1]


def test_one_guide_blend_is_alpha_guide_plus_one_minus_alpha_base():
    s = get_strategy(BlendConfig(alpha=0.3))
    p, a = s.combine(view(BASE, [GUIDE]))
    want = 0.3 * torch.tensor(GUIDE, dtype=torch.float64) + 0.7 * torch.tensor(BASE,
                                                                                dtype=torch.float64)
    assert torch.allclose(p, want) and a.tolist() == pytest.approx([0.3])
    assert p.sum().item() == pytest.approx(1.0)


def test_auto_alpha_follows_the_confidence_rule_per_guide():
    v = view(BASE, [GUIDE, [0.4, 0.2, 0.2, 0.2]])
    a = BlendInStrategy(BlendConfig()).alphas(v)
    m_b = 0.3
    want = [0.7 / (m_b + 0.7) + 0.1 * 0.25, 0.4 / (m_b + 0.4) + 0.1 * 0.3]
    assert a.tolist() == pytest.approx(want)
    p, _ = get_strategy(BlendConfig()).combine(v)  # two guides: the mean of the pairwise blends
    pair = [a[i] * v.guide_probs[i] + (1 - a[i]) * v.base_probs for i in range(2)]
    assert torch.allclose(p, (pair[0] + pair[1]) / 2)


def test_mitigation_weights_scale_the_alphas():
    p, a = get_strategy(BlendConfig(alpha=0.8)).combine(view(BASE, [GUIDE], weight=[0.5]))
    assert a.tolist() == pytest.approx([0.4])
    assert torch.allclose(p, 0.4 * torch.tensor(GUIDE, dtype=torch.float64)
                          + 0.6 * torch.tensor(BASE, dtype=torch.float64))


@pytest.mark.parametrize("name, consults, alpha", [
    ("base_only", [False, False], None),
    ("guide_only", [True, True], 1.0),
    ("nudging", [True, False], 1.0),
    ("blendin", [True, False], None),
    ("ensemble", [True, True], 0.5),
])
def test_each_strategy_gates_and_weighs_as_documented(name, consults, alpha):
    s = get_strategy(BlendConfig(strategy=name, gamma=0.4))
    assert [s.consult(0.39), s.consult(0.4)] == consults
    if alpha is not None:
        assert s.alphas(view(BASE, [GUIDE])).tolist() == pytest.approx([alpha])


def test_the_gamma_rule_is_strictly_below():
    assert unsure(0.39, 0.4) and not unsure(0.4, 0.4)
    assert not unsure(0.0, 0.0) and unsure(1.0, 1.01)


def test_the_intervention_cap_keeps_the_consulted_share_under_it():
    policy = ConsultPolicy(get_strategy(BlendConfig(strategy="guide_only")), cap=0.25)
    asked = [policy(0.9) for _ in range(40)]
    assert sum(asked) == 10 and policy.capped == 30 and policy.steps == 40
    for n in range(1, 41):  # at most ceil(cap * n) of the first n steps
        assert sum(asked[:n]) == math.ceil(0.25 * n)
    free = ConsultPolicy(get_strategy(BlendConfig(gamma=0.5)))
    assert [free(x) for x in (0.1, 0.9, 0.2)] == [True, False, True] and free.capped == 0


def test_a_registered_strategy_is_selectable_by_name():
    @register_strategy
    class Half(Strategy):
        name = "half_for_test"

        def alphas(self, v):
            return torch.full_like(v.guide_top1, 0.5)

    try:
        assert "half_for_test" in available_strategies()
        s = get_strategy(BlendConfig(strategy="half_for_test"))
        p, _ = s.combine(view(BASE, [GUIDE]))
        assert torch.allclose(p, 0.5 * (torch.tensor(BASE, dtype=torch.float64)
                                        + torch.tensor(GUIDE, dtype=torch.float64)))
    finally:
        _REGISTRY.pop("half_for_test")
    with pytest.raises(ConfigError, match="unknown strategy 'half_for_test'"):
        BlendConfig(strategy="half_for_test")
