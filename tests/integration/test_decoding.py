"""Decoding correctness: equivalence with transformers, caching, strategies and their limits."""

import pytest
import torch

from blendin_llm import BlendConfig, BlendedLLM, ModelSpec

from compare import hf_greedy

PROMPT = "User: hello there\nAssistant:"
N = 40


def _prefix_of_hf(res, hf, eos):
    ids = res.token_ids
    assert ids == hf[: len(ids)]
    assert len(ids) == len(hf) or ids[-1] in eos


def test_base_only_greedy_equals_transformers_generate(make_llm, base_model, tok):
    llm = make_llm(strategy="base_only")
    res = llm.generate(PROMPT, max_new_tokens=N)
    _prefix_of_hf(res, hf_greedy(base_model, tok, PROMPT, N), llm.base.eos_token_ids)
    assert res.reliability.interventions == 0
    assert res.usage.guide_tokens_computed == 0


def test_guide_only_greedy_equals_transformers_generate(make_llm, guide_model, tok):
    llm = make_llm(strategy="guide_only")
    res = llm.generate(PROMPT, max_new_tokens=N)
    _prefix_of_hf(res, hf_greedy(guide_model, tok, PROMPT, N), llm.guides[0].eos_token_ids)
    assert res.reliability.interventions == res.reliability.tokens


def test_gamma_zero_never_consults_and_gamma_above_one_always_does(make_llm):
    llm = make_llm()
    never = llm.generate(PROMPT, max_new_tokens=N, gamma=0.0)
    assert never.reliability.interventions == 0
    assert never.usage.guide_tokens_computed == 0  # the guide never even ran its prompt
    always = llm.generate(PROMPT, max_new_tokens=N, gamma=1.5)
    assert always.reliability.interventions == always.reliability.tokens == N
    assert always.reliability.intervention_rate == 1.0


def test_blendin_alpha_zero_is_base_only_and_alpha_one_is_guide_only(make_llm):
    llm = make_llm()
    base = llm.generate(PROMPT, max_new_tokens=N, strategy="base_only")
    guide = llm.generate(PROMPT, max_new_tokens=N, strategy="guide_only")
    assert base.token_ids != guide.token_ids  # otherwise the test proves nothing
    a0 = llm.generate(PROMPT, max_new_tokens=N, gamma=2.0, alpha=0.0)
    a1 = llm.generate(PROMPT, max_new_tokens=N, gamma=2.0, alpha=1.0)
    assert a0.token_ids == base.token_ids
    assert a1.token_ids == guide.token_ids
    assert a0.reliability.mean_alpha == 0.0 and a1.reliability.mean_alpha == 1.0


def _reference_blendin(base_model, guide_model, ids, gamma, n, eos):
    """Recompute every prefix from scratch (no cache) and apply the paper's formula."""
    ids = list(ids)
    out, consulted = [], 0
    for _ in range(n):
        with torch.no_grad():
            pb = base_model(torch.tensor([ids])).logits[0, -1].float().softmax(-1)
        mb = pb.max()
        if mb < gamma:
            consulted += 1
            with torch.no_grad():
                pg = guide_model(torch.tensor([ids])).logits[0, -1].float().softmax(-1)
            mg, g_arg = pg.max(-1)
            alpha = (mg / (mb + mg) + 0.1 * pb[g_arg]).clamp(0, 1)
            tok = int((alpha * pg + (1 - alpha) * pb).argmax())
        else:
            tok = int(pb.argmax())
        out.append(tok)
        ids.append(tok)
        if tok in eos:
            break
    return out, consulted


def test_cached_decoding_equals_full_recompute_with_guide_catch_up(make_llm, base_model,
                                                                     guide_model, tok):
    llm = make_llm()
    # a gamma where the guide is skipped on some steps, so it must catch up on several tokens
    res = llm.generate(PROMPT, max_new_tokens=N, gamma=0.4)
    assert 0 < res.reliability.interventions < res.reliability.tokens
    ref, consulted = _reference_blendin(base_model, guide_model, tok(PROMPT).input_ids, 0.4, N,
                                        llm.base.eos_token_ids)
    assert res.token_ids == ref
    assert res.reliability.interventions == consulted
    # the guide computed each token at most once: its prompt plus tokens up to its last consult
    assert res.usage.guide_tokens_computed <= res.usage.prompt_tokens + res.usage.completion_tokens


def test_two_identical_guides_reduce_to_one(base_model, guide_model, tok):
    spec = lambda m, n: ModelSpec(model=m, tokenizer=tok, prompt_format="raw", name=n)  # noqa: E731
    one = BlendedLLM(spec(base_model, "b"), [spec(guide_model, "g")], BlendConfig(gamma=0.5))
    two = BlendedLLM(spec(base_model, "b"), [spec(guide_model, "g1"), spec(guide_model, "g2")],
                     BlendConfig(gamma=0.5))
    r1, r2 = one.generate(PROMPT, max_new_tokens=N), two.generate(PROMPT, max_new_tokens=N)
    assert r1.token_ids == r2.token_ids
    assert [g.name for g in r2.reliability.guides] == ["g1", "g2"]
    g1, g2 = r2.reliability.guides
    assert abs(g1.mean_alpha - r1.reliability.mean_alpha) < 1e-6
    assert abs(g1.mean_weight - r1.reliability.mean_alpha / 2) < 1e-6
    assert g1.mean_alpha == g2.mean_alpha


def test_several_guides_each_get_their_own_alpha(make_llm, guide_model, guide2_model, tok):
    guides = [ModelSpec(model=m, tokenizer=tok, prompt_format="raw", name=n)
              for m, n in ((guide_model, "g1"), (guide2_model, "g2"))]
    res = make_llm(guides=guides, gamma=2.0).generate(PROMPT, max_new_tokens=20)
    a1, a2 = (g.mean_alpha for g in res.reliability.guides)
    assert a1 != a2
    assert abs(res.reliability.mean_alpha - (a1 + a2) / 2) < 1e-9


def _first_step_probs(tok, *models):
    ids = torch.tensor([tok(PROMPT).input_ids])
    with torch.no_grad():
        return [m(ids).logits[0, -1].float().softmax(-1) for m in models]


def test_auto_alpha_is_the_papers_formula_per_guide(make_llm, base_model, guide_model,
                                                     guide2_model, tok):
    pb, pg1, pg2 = _first_step_probs(tok, base_model, guide_model, guide2_model)

    def alpha(pg):
        return float((pg.max() / (pb.max() + pg.max()) + 0.1 * pb[pg.argmax()]).clamp(0, 1))

    a1, a2 = alpha(pg1), alpha(pg2)
    one = make_llm(gamma=2.0).generate(PROMPT, max_new_tokens=1, trace=True)
    assert one.reliability.mean_alpha == pytest.approx(a1, abs=1e-6)
    guides = [ModelSpec(model=m, tokenizer=tok, prompt_format="raw", name=n)
              for m, n in ((guide_model, "g1"), (guide2_model, "g2"))]
    two = make_llm(guides=guides, gamma=2.0).generate(PROMPT, max_new_tokens=1, trace=True)
    assert [g.mean_alpha for g in two.reliability.guides] == pytest.approx([a1, a2], abs=1e-6)
    # p = 1/2 [a1 pg1 + (1 - a1) pb] + 1/2 [a2 pg2 + (1 - a2) pb]
    mixed = 0.5 * (a1 * pg1 + (1 - a1) * pb) + 0.5 * (a2 * pg2 + (1 - a2) * pb)
    step = two.reliability.trace[0]
    assert step.token_id == int(mixed.argmax())
    assert step.prob == pytest.approx(float(mixed.max()), abs=1e-6)


def test_ensemble_and_nudging_follow_their_rules(make_llm, base_model, guide_model, tok):
    llm = make_llm()
    ids = tok(PROMPT).input_ids
    with torch.no_grad():
        pb = base_model(torch.tensor([ids])).logits[0, -1].softmax(-1)
        pg = guide_model(torch.tensor([ids])).logits[0, -1].softmax(-1)
    ens = llm.generate(PROMPT, max_new_tokens=1, strategy="ensemble", trace=True)
    assert ens.token_ids[0] == int((0.5 * pb + 0.5 * pg).argmax())
    assert ens.reliability.mean_alpha == 0.5
    nud = llm.generate(PROMPT, max_new_tokens=1, strategy="nudging", gamma=2.0)
    assert nud.token_ids[0] == int(pg.argmax())


def test_trace_records_every_step(make_llm):
    res = make_llm().generate(PROMPT, max_new_tokens=N, gamma=0.4, trace=True)
    tr = res.reliability.trace
    assert [t.token_id for t in tr] == res.token_ids
    assert sum(t.source == "blend" for t in tr) == res.reliability.interventions
    assert all((t.alpha is None) == (t.source == "base") for t in tr)
    assert "".join(t.text for t in tr) == res.text  # no stop strings: every piece is released
    assert make_llm().generate(PROMPT, max_new_tokens=3).reliability.trace is None


def test_local_directory_source_loads_and_matches(tmp_path, base_model, tok):
    base_model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    from_dir = BlendedLLM(ModelSpec(source=str(tmp_path / "base"), prompt_format="raw"),
                          config=BlendConfig(strategy="base_only"))
    in_mem = BlendedLLM(ModelSpec(model=base_model, tokenizer=tok, prompt_format="raw"),
                        config=BlendConfig(strategy="base_only"))
    assert from_dir.generate(PROMPT, max_new_tokens=10).token_ids == \
        in_mem.generate(PROMPT, max_new_tokens=10).token_ids
    assert BlendedLLM((base_model, tok), config=BlendConfig(strategy="base_only")).base.name


def test_rollback_past_a_sliding_window(tok):
    """Gemma-style sliding-window layers cannot be cropped once past their window; rollback then
    recomputes the kept prefix, and decoding goes on as if never rolled back."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from blendin_llm import TransformersBackend

    cfg = Gemma3TextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                           head_dim=16, sliding_window=8,
                           layer_types=["sliding_attention", "full_attention"],
                           max_position_embeddings=128)
    torch.manual_seed(0)
    backend = TransformersBackend(Gemma3ForCausalLM(cfg).eval(), tok)
    ids = list(range(10, 40))
    state = backend.new_state()
    with torch.inference_mode():
        backend.forward(state, ids[:25])
        backend.rollback(state, 20)  # 25 > window 8: crop alone would raise
        assert state.tokens == ids[:20]
        got = backend.forward(state, ids[20:30])
        fresh = backend.new_state()
        want = backend.forward(fresh, ids[:30])
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
