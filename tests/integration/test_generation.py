"""Sampling, streaming, threads, prompts and the reliability record."""

import threading

import pytest
from compare import same_numbers

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
    us = [(i + 0.5) / 200 for i in range(200)]
    drawn = [int(sample(logp, SamplingParams(temperature=1.0, top_p=0.7), u)) for u in us]
    assert set(drawn) == {0, 1}  # 0.5 < 0.7 so token 1 (crossing 0.7) is kept, 2 and 3 are not
    assert drawn.count(0) == 125  # inverse CDF: 0.5 / 0.8 of evenly spread uniforms
    drawn = [int(sample(logp, SamplingParams(temperature=1.0, top_k=3), u)) for u in us]
    assert set(drawn) == {0, 1, 2}


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
    assert all(same_numbers(r.reliability, s.reliability) for r, s in zip(results, sequential))


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
    # ignore_eos decodes past the end of turn, as past an EOS; a stop asked for still applies
    on = plain.generate(PROMPT, max_new_tokens=30, ignore_eos=True)
    assert on.finish_reason == "length" and prefix.rstrip() in on.text
    asked = plain.generate(PROMPT, max_new_tokens=30, ignore_eos=True, stop=prefix.rstrip())
    assert asked.finish_reason == "stop" and asked.text == res.text
    assert free.turn_stops == ()


def _in_thread(fn, timeout=60):
    """fn() in a thread; its result, or a failure (not a hang) when it does not return."""
    out = []
    t = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    t.start()
    t.join(timeout)
    assert out, f"did not return within {timeout} s"
    return out[0]


def test_a_partly_read_stream_does_not_block_other_calls(make_llm):
    llm = make_llm(gamma=0.5)
    solo = llm.generate(PROMPT, max_new_tokens=8)
    s = llm.stream(PROMPT, max_new_tokens=8)
    next(s)  # kept, half read, as a saved traceback would keep it
    res = _in_thread(lambda: llm.generate(PROMPT, max_new_tokens=8))  # another thread
    assert res.token_ids == solo.token_ids
    assert llm.generate(PROMPT, max_new_tokens=8).token_ids == solo.token_ids  # same thread
    rest = list(s)
    assert rest[-1].result.token_ids == solo.token_ids


@pytest.mark.parametrize("kw", [dict(), dict(temperature=1.0, seed=11)])
def test_interleaved_streams_give_their_solo_outputs(make_llm, kw):
    llm = make_llm(gamma=0.5)
    prompts = [PROMPT, "The quick brown fox", "Question: what is 12 + 30?"]
    solo = [llm.generate(p, max_new_tokens=20, trace=True, **kw) for p in prompts]
    streams = [llm.stream(p, max_new_tokens=20, trace=True, **kw) for p in prompts]
    finals: list = [None] * 3
    texts = [""] * 3
    while any(f is None for f in finals):  # round robin, one token of each in turn
        for i, s in enumerate(streams):
            if finals[i] is None:
                e = next(s)
                texts[i] += e.text
                if e.done:
                    finals[i] = e.result
    for f, t, ref in zip(finals, texts, solo):
        assert f.token_ids == ref.token_ids and t == ref.text
        assert same_numbers(f.reliability, ref.reliability)
    assert solo[0].reliability.interventions > 0  # the guide took part


def test_interleaved_streams_across_vocabularies(base_model, tok):
    from blendin_llm import BlendedLLM
    from tiny import make_model, make_sentencepiece_tokenizer

    sp = make_sentencepiece_tokenizer()
    llm = BlendedLLM((base_model, tok), [(make_model(sp, seed=5), sp)],
                     BlendConfig(gamma=0.6))
    prompts = [PROMPT, "The quick brown fox"]
    solo = [llm.generate(p, max_new_tokens=15, ignore_eos=True) for p in prompts]
    pairs = list(zip(*(llm.stream(p, max_new_tokens=15, ignore_eos=True) for p in prompts)))
    res = pairs[-1]  # one event of each in turn; both run the whole budget
    assert all(r.done for r in res)
    assert [r.result.token_ids for r in res] == [r.token_ids for r in solo]
    assert solo[0].reliability.interventions > 0


def test_streams_in_threads_give_their_solo_outputs(make_llm):
    llm = make_llm(gamma=0.5)
    jobs = [dict(seed=s, temperature=0.9 if s % 2 else 0.0, max_new_tokens=12) for s in range(4)]
    solo = [llm.generate(PROMPT, **j) for j in jobs]
    results: list = [None] * len(jobs)
    barrier = threading.Barrier(len(jobs))

    def work(i):
        barrier.wait()
        results[i] = [e for e in llm.stream(PROMPT, **jobs[i])][-1].result

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [r.token_ids for r in results] == [r.token_ids for r in solo]


def test_waiting_for_a_turn_is_bounded(make_llm):
    from blendin_llm import BusyError, ConfigError

    llm = make_llm()
    llm.lock_timeout = 0.2
    with llm._lock:  # another call's step that never ends
        with pytest.raises(BusyError, match="lock_timeout"):
            llm.generate(PROMPT, max_new_tokens=3)
    assert llm.generate(PROMPT, max_new_tokens=3).usage.completion_tokens == 3
    with pytest.raises(ConfigError, match="lock_timeout"):
        BlendedLLM(llm.base, llm.guides, lock_timeout=0)


# -- seeds -------------------------------------------------------------------------------------
def _sampled(llm, seed, n=12):
    return llm.generate(PROMPT, max_new_tokens=n, temperature=1.0, seed=seed,
                        ignore_eos=True).token_ids


@pytest.mark.parametrize("a, b", [
    (5, 5 + 2**32), (5, 5 + 2**64), (2**64, 2**64 + 2**100), (1, -1), (0, -1),
    (-(2**63) - 1, -(2**63) - 1 - 2**70), (10**40, 10**40 + 1),
])
def test_every_bit_of_a_seed_matters(make_llm, a, b):
    llm = make_llm(strategy="base_only")
    sa = _sampled(llm, a)
    assert sa == _sampled(llm, a)  # reproducible, however large or negative
    assert sa != _sampled(llm, b)


def test_numpy_seeds_and_numbers_are_accepted(make_llm):
    np = pytest.importorskip("numpy")
    llm = make_llm(gamma=0.5)
    ref = llm.generate(PROMPT, max_new_tokens=10, temperature=0.5, seed=7, top_k=5)
    got = llm.generate(PROMPT, max_new_tokens=np.int64(10), temperature=np.float32(0.5),
                       seed=np.uint64(7), top_k=np.int32(5))
    assert got.token_ids == ref.token_ids


def test_unseeded_calls_differ(make_llm):
    llm = make_llm(strategy="base_only")
    runs = {tuple(_sampled(llm, None)) for _ in range(4)}
    assert len(runs) == 4
    from blendin_llm.sampling import SeedStream

    assert len({tuple(SeedStream(None).key) for _ in range(100)}) == 100


def test_a_steps_uniform_depends_only_on_seed_and_step():
    from blendin_llm.sampling import SeedStream

    a, b = SeedStream(3), SeedStream(3)
    ua = [a.uniform(k) for k in range(50)]
    assert [b.uniform(k) for k in reversed(range(50))] == ua[::-1]  # any order
    assert len(set(ua)) == 50 and all(0.0 <= u < 1.0 for u in ua)
    assert SeedStream(4).uniform(0) != ua[0]


@pytest.mark.parametrize("kw", [dict(temperature=1e-39), dict(temperature=5e-324),
                                dict(temperature=1.0, top_p=5e-324),
                                dict(temperature=1e-39, top_p=1e-30, top_k=3)])
def test_extreme_temperature_and_top_p_act_as_greedy(make_llm, kw):
    llm = make_llm(gamma=0.5)
    greedy = llm.generate(PROMPT, max_new_tokens=20)
    res = llm.generate(PROMPT, max_new_tokens=20, seed=1, **kw)
    assert res.token_ids == greedy.token_ids
