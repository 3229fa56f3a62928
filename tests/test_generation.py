"""Sampling, streaming, threads, prompts and the reliability record."""

import threading

import pytest

from blendin_llm import BlendConfig, BlendedLLM, ModelSpec, ReliabilityConfig

PROMPT = "User: hello there\nAssistant:"


def test_seeded_sampling_is_reproducible(make_llm):
    llm = make_llm(gamma=0.5)
    kw = dict(max_new_tokens=30, temperature=1.0, top_p=0.95)
    a = llm.generate(PROMPT, seed=7, **kw)
    b = llm.generate(PROMPT, seed=7, **kw)
    c = llm.generate(PROMPT, seed=8, **kw)
    assert a.token_ids == b.token_ids and a.text == b.text
    assert a.token_ids != c.token_ids


def test_top_k_one_sampling_is_greedy(make_llm):
    llm = make_llm(gamma=0.5)
    greedy = llm.generate(PROMPT, max_new_tokens=30)
    sampled = llm.generate(PROMPT, max_new_tokens=30, temperature=0.7, top_k=1, seed=3)
    assert sampled.token_ids == greedy.token_ids


def test_sampling_respects_top_p_and_top_k():
    import torch

    from blendin_llm import SamplingParams
    from blendin_llm.sampling import sample

    logp = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    g = torch.Generator().manual_seed(0)
    drawn = {int(sample(logp, SamplingParams(temperature=1.0, top_p=0.7), g)) for _ in range(200)}
    assert drawn == {0, 1}  # 0.5 < 0.7 so token 1 (crossing 0.7) is kept, 2 and 3 are not
    drawn = {int(sample(logp, SamplingParams(temperature=1.0, top_k=3), g)) for _ in range(300)}
    assert drawn == {0, 1, 2}


def test_stream_and_generate_agree(make_llm):
    llm = make_llm(gamma=0.4)
    kw = dict(max_new_tokens=30, stop=["zzz"], temperature=0.8, seed=1, trace=True)
    events = list(llm.stream(PROMPT, **kw))
    res = llm.generate(PROMPT, **kw)
    final = events[-1]
    assert final.done and all(not e.done for e in events[:-1])
    assert "".join(e.text for e in events) == final.result.text == res.text
    assert final.result.token_ids == res.token_ids
    assert final.result.reliability == res.reliability
    assert [e.consulted for e in events[:-1]] == \
        [t.source == "blend" for t in res.reliability.trace][: len(events) - 1]


def test_concurrent_threads_give_sequential_results(make_llm):
    llm = make_llm(gamma=0.4)
    jobs = [dict(prompt=PROMPT, seed=s, temperature=0.9 if s % 2 else 0.0, max_new_tokens=20)
            for s in range(6)]
    sequential = [llm.generate(j["prompt"], **{k: v for k, v in j.items() if k != "prompt"})
                  for j in jobs]
    results = [None] * len(jobs)

    def work(i):
        j = jobs[i]
        results[i] = llm.generate(j["prompt"], **{k: v for k, v in j.items() if k != "prompt"})

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.token_ids for r in results] == [r.token_ids for r in sequential]
    assert [r.reliability for r in results] == [r.reliability for r in sequential]


def test_abandoned_stream_releases_the_model(make_llm):
    llm = make_llm()
    it = llm.stream(PROMPT, max_new_tokens=20)
    next(it)
    it.close()
    done = []
    t = threading.Thread(target=lambda: done.append(llm.generate(PROMPT, max_new_tokens=3)))
    t.start()
    t.join(timeout=30)
    assert done, "the lock was not released by closing the stream"


def test_each_model_renders_the_conversation_its_own_way(base_model, guide_model, tok, chat_tok):
    llm = BlendedLLM(ModelSpec(model=base_model, tokenizer=tok, system_prompt="Be brief."),
                     [ModelSpec(model=guide_model, tokenizer=chat_tok)])
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
            ("human", "and?")]
    norm = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "and?"}]
    base_ids = llm.base.encode_prompt(norm)
    guide_ids = llm.guides[0].encode_prompt(norm)
    assert tok.decode(base_ids) == "Be brief.\nUser: hi\nAssistant: hello\nUser: and?\nAssistant:"
    assert guide_ids == chat_tok.apply_chat_template(norm, add_generation_prompt=True,
                                                      tokenize=True, return_dict=False)
    res = llm.generate(msgs, max_new_tokens=5, gamma=2.0)
    assert res.usage.prompt_tokens == len(base_ids)
    assert res.usage.guide_tokens_computed >= len(guide_ids)


def test_reliability_record_is_consistent(make_llm):
    rc = ReliabilityConfig(max_intervention_rate=0.2, min_score=0.0, min_agreement=0.0,
                           max_divergence=1.0, weights=(0.5, 0.5, 0.0))
    llm = make_llm(config=BlendConfig(gamma=0.4, reliability=rc))
    r = llm.generate(PROMPT, max_new_tokens=40).reliability
    assert r.tokens == 40
    assert r.intervention_rate == pytest.approx(r.interventions / r.tokens)
    assert 0 <= r.score <= 1 and 0 <= r.agreement_top1 <= r.agreement_topk <= 1
    assert 0 <= r.mean_divergence <= 1 and 0 < r.mean_base_top1 <= 1
    assert r.intervention_rate > 0.2
    assert r.flagged and r.reasons == [f"intervention rate {r.intervention_rate:.2f} > 0.20 "
                                       f"({r.interventions} of 40 steps)"]
    assert r.score_source == "weights" and r.threshold is None
    w = rc.weights
    c = r.components
    assert r.score == pytest.approx((w[0] * c.confidence + w[1] * c.stability
                                     + w[2] * c.consensus) / sum(w))
    calm = llm.generate(PROMPT, max_new_tokens=40, gamma=0.0).reliability
    assert calm.interventions == 0 and calm.components.consensus == 1.0
    assert calm.agreement_topk is None and calm.mean_alpha is None
    assert calm.score > r.score


def test_base_only_reports_base_uncertainty_without_consulting(make_llm):
    r = make_llm(strategy="base_only", gamma=0.4).generate(PROMPT, max_new_tokens=40).reliability
    assert r.interventions == 0
    assert any(reason.startswith("base-uncertain step rate") for reason in r.reasons)


def test_plain_format_base_stops_at_the_next_user_turn(base_model, tok):
    free = BlendedLLM(ModelSpec(model=base_model, tokenizer=tok, prompt_format="raw"),
                      config=BlendConfig(strategy="base_only"))
    text = free.generate(PROMPT, max_new_tokens=30).text
    # a plain-format model whose user prefix is a piece of that free-running text
    prefix = text[4:7]
    plain = BlendedLLM(ModelSpec(model=base_model, tokenizer=tok, user_prefix=prefix,
                                 turn_separator=""),
                       config=BlendConfig(strategy="base_only"))
    assert plain.turn_stops == (prefix.rstrip(),)
    res = plain.generate(PROMPT, max_new_tokens=30)
    assert res.finish_reason == "stop" and res.stop_sequence == prefix.rstrip()
    assert prefix.rstrip() not in res.text
    assert free.turn_stops == ()
