"""Continuous batching: concurrent calls decode in one batch and each gives its solo result."""

import asyncio
import threading
import time

import pytest
import torch
from compare import same_numbers
from tiny import make_model, make_sentencepiece_tokenizer

from blendin_llm import BlendConfig, BlendedLLM, ConfigError, ModelSpec, PromptError
from blendin_llm.backends.transformers import TransformersBackend

PROMPTS = ["User: hello there\nAssistant:", "The quick brown fox", "Question: what is 12 + 30?",
           "naïve café 東京", "I cannot help with that.", "Sure, here is a short poem"]
TOOL = {"type": "function", "function": {"name": "add", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}}}}}


def _kw(i):
    """Per-request settings that differ: greedy and seeded sampling, stops, logprobs, trace."""
    return [dict(), dict(temperature=0.9, seed=i), dict(stop=["e"], logprobs=True, top_logprobs=2),
            dict(temperature=0.7, top_p=0.8, seed=100 + i, trace=True),
            dict(repetition_penalty=1.3, no_repeat_ngram_size=2), dict(max_new_tokens=5)][i % 6]


def _same(a, b):
    assert a.token_ids == b.token_ids and a.text == b.text
    assert a.finish_reason == b.finish_reason and a.usage == b.usage
    assert same_numbers(a.reliability, b.reliability)
    assert same_numbers(a.logprobs, b.logprobs)


@pytest.fixture
def sp_pair(tok):
    """A cross-vocabulary pair: SentencePiece-style base, byte-level BPE guide."""
    sp = make_sentencepiece_tokenizer()
    base = ModelSpec(model=make_model(sp, seed=0), tokenizer=sp, prompt_format="raw", name="sp")
    guide = ModelSpec(model=make_model(tok, seed=1, hidden=48), tokenizer=tok,
                      prompt_format="raw", name="bl")
    return base, guide


@pytest.mark.parametrize("cross", [False, True])
def test_threads_get_their_solo_results(make_llm, sp_pair, cross):
    llm = BlendedLLM(*sp_pair[:1], [sp_pair[1]], BlendConfig(gamma=0.5)) if cross else \
        make_llm(gamma=0.5)
    solo = [llm.generate(p, **{"max_new_tokens": 16, **_kw(i)})
            for i, p in enumerate(PROMPTS)]
    assert sum(r.reliability.interventions for r in solo) > 0  # the guide takes part
    out: list = [None] * len(PROMPTS)
    barrier = threading.Barrier(len(PROMPTS))

    def work(i):
        barrier.wait()
        out[i] = llm.generate(PROMPTS[i], **{"max_new_tokens": 16, **_kw(i)})

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for a, b in zip(out, solo):
        _same(a, b)
    assert llm.scheduler.max_rows > 1  # they did share steps


def test_asyncio_tasks_and_generate_batch_get_their_solo_results(make_llm):
    llm = make_llm(gamma=0.5)
    kw = dict(max_new_tokens=12, temperature=0.8, seed=3, logprobs=True)
    solo = [llm.generate(p, **kw) for p in PROMPTS]

    async def main():
        return await asyncio.gather(*(llm.agenerate(p, **kw) for p in PROMPTS))

    for a, b in zip(asyncio.run(main()), solo):
        _same(a, b)
    for a, b in zip(llm.generate_batch(PROMPTS, **kw), solo):
        _same(a, b)


def test_tool_calls_in_a_batch(chat_tok):
    from scripted import ScriptedBackend, oracle

    llm = BlendedLLM(ScriptedBackend(chat_tok, oracle, 0.35, name="s-base"),
                     [ScriptedBackend(chat_tok, oracle, 0.9, name="s-guide")])
    msgs = [[{"role": "user", "content": f"add {i} and 2"}] for i in range(4)]
    solo = [llm.generate(m, tools=[TOOL], tool_choice="required", max_new_tokens=60)
            for m in msgs]
    batch = llm.generate_batch(msgs, tools=[TOOL], tool_choice="required", max_new_tokens=60)
    assert all(r.tool_calls for r in solo)
    calls = [[(c.name, c.arguments) for c in r.tool_calls] for r in batch]
    assert calls == [[(c.name, c.arguments) for c in r.tool_calls] for r in solo]


def test_a_short_request_finishes_before_a_long_one_that_started_first(make_llm):
    llm = make_llm(gamma=0.5)
    done: dict = {}
    long = llm.stream(PROMPTS[0], max_new_tokens=200, ignore_eos=True)
    next(long)  # the long answer is decoding

    def short():
        done["short"] = llm.generate(PROMPTS[1], max_new_tokens=3, ignore_eos=True)
        done["short_at"] = time.perf_counter()

    t = threading.Thread(target=short)
    t.start()
    events = list(long)
    done["long_at"] = time.perf_counter()
    t.join(60)
    assert done["short"].usage.completion_tokens == 3
    assert done["short_at"] < done["long_at"]
    assert events[-1].result.usage.completion_tokens == 200


def test_an_abandoned_stream_frees_its_row_and_leaves_the_others_alone(make_llm):
    llm = make_llm(gamma=0.5)
    solo = [llm.generate(p, max_new_tokens=20) for p in PROMPTS[:3]]
    streams = [llm.stream(p, max_new_tokens=20) for p in PROMPTS[:3]]
    firsts = [next(s) for s in streams]  # all three decoding together
    streams[1].close()  # abandoned after one token
    results = [None, None, None]
    for i in (0, 2):
        rest = list(streams[i])
        results[i] = rest[-1].result
        assert firsts[i].text + "".join(e.text for e in rest) == solo[i].text
    for i in (0, 2):
        _same(results[i], solo[i])
    deadline = time.time() + 10
    while llm.scheduler.running and time.time() < deadline:
        time.sleep(0.01)
    assert llm.scheduler.running == 0  # the closed stream's row is gone too


@pytest.mark.parametrize("size", [1, 2])
def test_requests_beyond_max_batch_size_wait_in_arrival_order(base_model, guide_model, tok,
                                                              size):
    import queue

    llm = BlendedLLM((base_model, tok), [(guide_model, tok)], max_batch_size=size)
    done: queue.SimpleQueue = queue.SimpleQueue()
    started = [llm._start(p, max_new_tokens=6, ignore_eos=True) for p in PROMPTS]
    with llm._lock:  # the models are busy while all six arrive
        reqs = [llm._submit(gen, active, lambda e, err, i=i: e is not None and e.done and
                            done.put(i)) for i, (gen, active, _) in enumerate(started)]
        time.sleep(0.05)
        assert llm.scheduler.queued + llm.scheduler.running == 6
    order = [done.get(timeout=60) for _ in reqs]
    assert llm.scheduler.max_rows == size
    admitted = [r.admitted for r in reqs]  # in arrival order
    assert None not in admitted and admitted == sorted(admitted)
    assert order == sorted(order)  # equal lengths: done in arrival order too


def test_arguments_are_checked_before_anything_decodes(make_llm):
    llm = make_llm()
    with pytest.raises(PromptError):
        llm.generate_batch(PROMPTS[0])
    from blendin_llm import GenerationArgumentError

    with pytest.raises(GenerationArgumentError):
        llm.generate_batch(PROMPTS, temperature=5.0)
    assert llm.scheduler.steps == 0
    for bad in (0, -1, 1.5, True, "8"):
        with pytest.raises(ConfigError, match="max_batch_size"):
            BlendedLLM(llm.base, llm.guides, max_batch_size=bad)
    assert len(llm.generate_batch(PROMPTS[:2], max_new_tokens=2)) == 2  # still usable


def test_a_failing_request_does_not_disturb_the_others(make_llm):
    llm = make_llm(gamma=0.5)
    solo = llm.generate(PROMPTS[0], max_new_tokens=10)
    bad = llm.stream(PROMPTS[1], max_new_tokens=10)
    good = llm.stream(PROMPTS[0], max_new_tokens=10)
    next(bad), next(good)
    req = next(r for r in llm.scheduler._active
               if llm.base.decode(r.gen.base_prompt).startswith("The quick"))

    def boom():
        raise RuntimeError("row failed")
        yield

    req.gen._choose = boom  # its next step fails
    with pytest.raises(RuntimeError, match="row failed"):
        list(bad)
    _same(list(good)[-1].result, solo)
    assert llm.generate(PROMPTS[0], max_new_tokens=10).token_ids == solo.token_ids


# -- the batched KV layout ---------------------------------------------------------------------
def _solo_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1].float()


def test_batched_rows_equal_a_recompute_through_rollbacks(base_model, tok):
    be = TransformersBackend(base_model, tok)
    be.prefix_cache = None
    prompts = [tok(p).input_ids for p in PROMPTS[:4]]
    states = [be.new_state() for _ in prompts]
    be.forward_batch(states, prompts, [1] * 4)
    g = torch.Generator().manual_seed(0)
    for step in range(12):
        ids = [[int(torch.randint(5, 300, (1,), generator=g))] for _ in states]
        if step == 5:  # one row rolls back 3 tokens and feeds 3: the others keep stepping
            be.rollback(states[2], len(states[2].tokens) - 3)
            ids[2] = [7, 8, 9]
        out = be.forward_batch(states, ids, [1] * 4)
        for s, o in zip(states, out):
            torch.testing.assert_close(o, _solo_logits(base_model, s.tokens), atol=1e-4,
                                       rtol=1e-4)


def test_a_sliding_window_model_past_its_window_equals_a_recompute():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    cfg = Gemma3TextConfig(vocab_size=300, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1,
                           head_dim=16, sliding_window=4, layer_types=[
                               "sliding_attention", "sliding_attention", "full_attention"],
                           max_position_embeddings=256)
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(cfg).eval()
    from tiny import make_tokenizer

    be = TransformersBackend(model, make_tokenizer(300))
    states = [be.new_state() for _ in range(3)]
    be.forward_batch(states, [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15]], [1] * 3)
    for step in range(10):
        ids = [[20 + step], [40 + step], [60 + step]]
        if step == 4:
            be.rollback(states[1], len(states[1].tokens) - 6)  # back past the window
        out = be.forward_batch(states, ids, [1] * 3)
        for s, o in zip(states, out):
            torch.testing.assert_close(o, _solo_logits(model, s.tokens), atol=1e-4, rtol=1e-4)


def test_a_shared_prompt_prefix_is_computed_once(base_model, guide_model, tok):
    system = "User: hello there\nAssistant: Hi! How can I help you today?\n" * 2
    prompts = [system + q for q in ("User: 12 + 30?", "User: the fox?", "User: the sea?")]
    cold = BlendedLLM((base_model, tok), [(guide_model, tok)], BlendConfig(gamma=0.5),
                      prefix_cache_tokens=0)
    warm = BlendedLLM((base_model, tok), [(guide_model, tok)], BlendConfig(gamma=0.5))
    warm.base.prefix_cache.clear()
    ref = [cold.generate(p, max_new_tokens=10) for p in prompts]
    got = [warm.generate(p, max_new_tokens=10) for p in prompts]
    assert [r.token_ids for r in got] == [r.token_ids for r in ref]
    n_system = len(tok(system).input_ids)
    cache = warm.base.prefix_cache
    assert cache.hits >= 2 * (n_system - 2)  # the 2nd and 3rd prompts reused the system part
    again = warm.generate(prompts[0], max_new_tokens=10)  # the same prompt: same bits
    assert again.token_ids == got[0].token_ids and again.reliability == got[0].reliability
    with pytest.raises(ConfigError, match="prefix_cache_tokens"):
        BlendedLLM((base_model, tok), [(guide_model, tok)], prefix_cache_tokens=-1)


def test_prompts_of_different_lengths_share_one_left_padded_pass(base_model, tok):
    be = TransformersBackend(base_model, tok)
    be.prefix_cache = None
    prompts = [tok(p).input_ids for p in PROMPTS]
    assert len({len(p) for p in prompts}) > 2
    states = [be.new_state() for _ in prompts]
    calls = []
    run = be._run_group
    be._run_group = lambda *a, **k: calls.append(len(a[0])) or run(*a, **k)
    out = be.forward_batch(states, prompts, [1] * len(prompts))
    assert calls == [len(prompts)]  # one pass for all the prompts
    for s, o in zip(states, out):
        assert torch.isfinite(o).all()
        torch.testing.assert_close(o, _solo_logits(base_model, s.tokens), atol=1e-4, rtol=1e-4)
    for step in range(4):  # then they decode together, each as alone
        out = be.forward_batch(states, [[10 + step]] * len(states), [1] * len(states))
        for s, o in zip(states, out):
            torch.testing.assert_close(o, _solo_logits(base_model, s.tokens), atol=1e-4,
                                       rtol=1e-4)


def test_finished_and_abandoned_rows_let_go_of_their_caches(make_llm):
    llm = make_llm(gamma=0.5)
    started = [llm._start(p, max_new_tokens=6) for p in PROMPTS[:3]]
    done = []
    reqs = [llm._submit(gen, active, lambda e, err: e is not None and e.done and done.append(e))
            for gen, active, _ in started]
    deadline = time.time() + 30
    while len(done) < 3 and time.time() < deadline:
        time.sleep(0.01)
    assert len(done) == 3
    for gen, _, _ in started:  # still referenced here, but holding no keys and values
        assert gen.base_state.cache is None
        assert all(g.state.cache is None for g in gen.guides)
    stream = llm.stream(PROMPTS[0], max_new_tokens=50)
    next(stream)
    gen = llm.scheduler._active[0].gen
    stream.close()
    while gen.base_state.cache is not None and time.time() < deadline:
        time.sleep(0.01)
    assert gen.base_state.cache is None
    assert all(r.over for r in reqs)


def test_rows_catching_up_on_different_numbers_of_tokens_share_one_pass(base_model, tok):
    be = TransformersBackend(base_model, tok)
    be.prefix_cache = None
    assert not be._sliding
    states = [be.new_state() for _ in PROMPTS[:4]]
    be.forward_batch(states, [tok(p).input_ids for p in PROMPTS[:4]], [1] * 4)
    calls = []
    run = be._run_group
    be._run_group = lambda *a, **k: calls.append(len(a[0])) or run(*a, **k)
    for step in range(3):  # a guide consulted after 1, 2, 3 or 5 skipped tokens, then decoding
        new = [[20 + step + j for j in range(n)] for n in (1, 2, 3, 5)]
        out = be.forward_batch(states, new, [1, 2, 1, 3])
        for s, o, n in zip(states, out, (1, 2, 1, 3)):
            with torch.no_grad():
                ref = base_model(torch.tensor([s.tokens])).logits[0, -n:].float()
            torch.testing.assert_close(o, ref[-1] if n == 1 else ref, atol=1e-4, rtol=1e-4)
        out = be.forward_batch(states, [[7]] * 4, [1] * 4)
        for s, o in zip(states, out):
            torch.testing.assert_close(o, _solo_logits(base_model, s.tokens), atol=1e-4,
                                       rtol=1e-4)
    assert calls == [1, 3, 4] * 3  # the single token alone, the catch-ups together, then all


EXIT_WHILE_DECODING = r"""
import sys, threading, time
sys.path[:0] = sys.argv[1:]
import torch
from tiny import make_model, make_tokenizer
from blendin_llm import BlendConfig, BlendedLLM, ModelSpec
torch.set_num_threads(1)
tok = make_tokenizer()
llm = BlendedLLM(ModelSpec(model=make_model(tok, seed=0, hidden=256, layers=4), tokenizer=tok,
                           prompt_format="raw"), config=BlendConfig(strategy="base_only"))
for _ in range(4):
    threading.Thread(target=llm.generate, args=("The quick brown fox",),
                     kwargs=dict(max_new_tokens=100000, ignore_eos=True), daemon=True).start()
deadline = time.time() + 60  # the rows start decoding once their prompts are encoded
while llm.scheduler.running < 4 and time.time() < deadline:
    time.sleep(0.05)
assert llm.scheduler.running == 4, llm.scheduler.running
time.sleep(0.3)  # a few steps in
print("exiting while decoding", flush=True)
"""


@pytest.mark.slow  # interpreters in subprocesses
def test_the_interpreter_exits_cleanly_while_rows_are_decoding():
    # a daemon thread still inside a torch operation when Python finalizes is killed in C++ code
    # and aborts the process; the decoding thread stops at its next step boundary instead
    import os
    import subprocess
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    roots = [os.path.dirname(here), os.path.dirname(os.path.dirname(here))]
    for _ in range(2):  # without the stop at exit, each run aborts (almost) every time
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-c", EXIT_WHILE_DECODING, *roots],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        assert "exiting while decoding" in r.stdout
        assert time.perf_counter() - t < 90
