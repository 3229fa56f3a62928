"""Detokenization and stop strings."""

import random

import pytest

from blendin_llm import BlendConfig, BlendedLLM, ModelSpec
from blendin_llm.text import IncrementalDetokenizer

PROMPT = "User: hello there\nAssistant:"









def test_detokenizer_deltas_concatenate_to_decode_with_multibyte(tok):
    rng = random.Random(0)
    text = "naïve café 東京 😀 ümlaut — ellipsis… 12345"
    ids = tok(text).input_ids
    # byte-level pieces of multi-byte characters arrive one token at a time
    assert any("\ufffd" in tok.decode([i]) for i in ids)
    for seq in (ids, [rng.randrange(4, len(tok)) for _ in range(200)]):
        d = IncrementalDetokenizer(tok)
        parts = [d.push(i) for i in seq] + [d.flush()]
        assert "".join(parts) == tok.decode(seq, skip_special_tokens=True)
        assert not any("\ufffd" in p for p in parts[:-1] if p.endswith("\ufffd"))


@pytest.fixture
def free_run(make_llm):
    llm = make_llm(strategy="base_only")
    return llm, llm.generate(PROMPT, max_new_tokens=30, trace=True)


def test_stop_string_across_token_boundary_in_generation(free_run):
    llm, free = free_run
    pieces = [t.text for t in free.reliability.trace]
    # a stop string that starts inside token 5's text and ends inside token 6's or later
    start = sum(len(p) for p in pieces[:5]) + max(0, len(pieces[5]) - 1)
    stop = free.text[start:start + 3]
    assert len(stop) == 3 and free.text.find(stop) == start
    events = list(llm.stream(PROMPT, max_new_tokens=30, stop=[stop]))
    res = events[-1].result
    assert res.text == free.text[:start]
    assert res.finish_reason == "stop" and res.stop_sequence == stop
    assert "".join(e.text for e in events) == res.text
    assert res.token_ids == free.token_ids[: len(res.token_ids)]
    assert len(res.token_ids) >= 7  # the match needed the token after the boundary


def test_stop_string_that_never_occurs_changes_nothing(free_run):
    llm, free = free_run
    res = llm.generate(PROMPT, max_new_tokens=30, stop=["\x00never\x00"])
    assert res.text == free.text and res.finish_reason == "length"


def test_max_new_tokens(make_llm):
    res = make_llm(strategy="base_only").generate(PROMPT, max_new_tokens=7)
    assert len(res.token_ids) == res.usage.completion_tokens == 7
    assert res.finish_reason == "length" and res.stop_sequence is None
    assert res.usage.total_tokens == res.usage.prompt_tokens + 7


def _with_eos(model, eos):
    """Temporarily give a model another EOS token (its weights stay the same)."""
    old = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = eos
    return old


def test_eos_of_base_ends_generation(base_model, tok, free_run):
    _, free = free_run
    eos = free.token_ids[4]
    first = free.token_ids.index(eos)
    old = _with_eos(base_model, eos)
    try:
        llm = BlendedLLM(ModelSpec(model=base_model, tokenizer=tok, prompt_format="raw"),
                         config=BlendConfig(strategy="base_only"))
        res = llm.generate(PROMPT, max_new_tokens=30)
    finally:
        _with_eos(base_model, old)
    assert res.token_ids == free.token_ids[: first + 1]
    assert res.finish_reason == "stop"
    assert res.stop_sequence == tok.convert_ids_to_tokens(eos)
    assert res.text == tok.decode(free.token_ids[:first])


def test_eos_of_guide_ends_generation_only_when_the_guide_was_consulted(make_llm, guide_model,
                                                                          free_run):
    _, base_run = free_run
    guided = make_llm(strategy="guide_only").generate(PROMPT, max_new_tokens=30)
    eos = guided.token_ids[3]
    first = guided.token_ids.index(eos)
    old = _with_eos(guide_model, [eos, base_run.token_ids[2]])
    try:
        llm = make_llm()
        stopped = llm.generate(PROMPT, max_new_tokens=30, strategy="guide_only")
        ignored = llm.generate(PROMPT, max_new_tokens=30, gamma=0.0)  # guide never consulted
    finally:
        _with_eos(guide_model, old)
    assert stopped.token_ids == guided.token_ids[: first + 1]
    assert stopped.finish_reason == "stop"
    # the base emitted the guide's EOS token itself: that does not end the answer
    assert ignored.token_ids == base_run.token_ids
    assert ignored.reliability.interventions == 0 and ignored.finish_reason == "length"


def test_ignore_eos_generates_past_eos(base_model, tok, free_run):
    _, free = free_run
    old = _with_eos(base_model, free.token_ids[2])
    try:
        llm = BlendedLLM(ModelSpec(model=base_model, tokenizer=tok, prompt_format="raw"),
                         config=BlendConfig(strategy="base_only"))
        assert len(llm.generate(PROMPT, max_new_tokens=30).token_ids) == 3
        res = llm.generate(PROMPT, max_new_tokens=30, ignore_eos=True)
    finally:
        _with_eos(base_model, old)
    assert res.token_ids == free.token_ids and res.finish_reason == "length"
