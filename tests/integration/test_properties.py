"""Property-based: whatever a caller passes to generate(), the library raises only its own typed
errors, and every answer it gives is well-formed; the instance keeps answering afterwards."""

import math

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from blendin_llm import BlendConfig, BlendedLLM, BlendInError, ModelSpec

from tiny import make_model, make_sentencepiece_tokenizer

FINISH = {"stop", "length", "tool_calls"}

# text with what breaks naive code: control characters, specials, odd spaces, and (in one text of
# four) lone surrogates, which json.loads('"\\ud800"') and surrogateescape'd argv make
_chars = st.one_of(
    st.characters(exclude_categories=["Cs"]),
    st.sampled_from(list("\x00\x01\x1b\x7f\n\r\t \u200b\u2028\ufeff\ufffd😀é東")),
    st.sampled_from(["<|im_start|>", "<eos>", "User:", "\nAssistant:", "{", "}"]),
)
_clean = st.lists(_chars, max_size=12).map("".join)
_broken = st.lists(st.one_of(_chars, st.characters(categories=["Cs"])), min_size=1,
                   max_size=12).map("".join)
odd = st.one_of(st.none(), st.booleans(), st.just("yes"), st.just([1]), st.just({"a": 1}),
                st.just(b"bytes"), st.just(2.5))
any_float = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                      st.integers(-(10**400), 10**400), odd)


def mostly(valid, weird):
    """Valid values five times in six: an example whose every argument is valid reaches the
    decoding loop, and one weird argument tests its error."""
    return st.one_of(valid, valid, valid, valid, valid, weird)


text = mostly(_clean, _broken)
ARGS = {
    "max_new_tokens": mostly(st.integers(1, 6), st.one_of(st.integers(-(10**30), 0), odd)),
    "temperature": mostly(st.one_of(st.floats(0, 2), st.sampled_from([1e-39, 5e-324, 2.0])),
                          any_float),
    "top_p": mostly(st.one_of(st.floats(0, 1, exclude_min=True),
                              st.sampled_from([5e-324, 1e-30, 1.0])), any_float),
    "top_k": mostly(st.integers(0, 500), st.one_of(st.integers(-(10**30), -1), odd)),
    "seed": mostly(st.integers(-(2**200), 2**200), odd),
    "stop": mostly(st.lists(_clean.filter(bool), max_size=3), st.one_of(text, odd)),
    "ignore_eos": mostly(st.booleans(), odd),
    "logprobs": mostly(st.booleans(), odd),
    "top_logprobs": mostly(st.integers(0, 20), st.one_of(st.integers(-5, 100), odd)),
    "trace": mostly(st.booleans(), odd),
    "repetition_penalty": mostly(st.floats(0.01, 5), any_float),
    "frequency_penalty": mostly(st.floats(-2, 2), any_float),
    "presence_penalty": mostly(st.floats(-2, 2), any_float),
    "no_repeat_ngram_size": mostly(st.integers(0, 4), st.one_of(st.integers(-(10**30), -1), odd)),
    "gamma": mostly(st.floats(0, 2), any_float),
    "alpha": mostly(st.one_of(st.floats(0, 1), st.just("auto")), any_float),
    "strategy": mostly(st.sampled_from(["blendin", "nudging", "base_only", "guide_only",
                                        "ensemble"]), st.one_of(st.just("bogus"), odd)),
    "temprature": any_float,  # a typo'd option
}
kwargs = st.lists(st.sampled_from(sorted(ARGS)), max_size=5, unique=True).flatmap(
    lambda keys: st.fixed_dictionaries({k: ARGS[k] for k in keys}))

message = st.fixed_dictionaries({
    "role": mostly(st.sampled_from(["user", "system", "assistant", "human", "ai"]),
                   st.one_of(st.just("robot"), odd)),
    "content": mostly(text, odd),
})
prompt = mostly(st.one_of(text, st.lists(message, min_size=1, max_size=3),
                          st.lists(st.tuples(st.just("user"), text), min_size=1, max_size=2)),
                odd)


@pytest.fixture(scope="module")
def llms(base_model, guide_model, tok, chat_tok):
    """A plain-format base with a chat-format guide of the same vocabulary, and the same base
    with a guide of another vocabulary (SentencePiece)."""
    sp = make_sentencepiece_tokenizer()
    base = ModelSpec(model=base_model, tokenizer=tok, name="base")
    same = BlendedLLM(base, [ModelSpec(model=guide_model, tokenizer=chat_tok, name="guide")],
                      BlendConfig(gamma=0.5))
    cross = BlendedLLM(base, [ModelSpec(model=make_model(sp, seed=5), tokenizer=sp,
                                        prompt_format="plain", name="sp")], BlendConfig(gamma=0.5))
    return [same, cross]


def _check(res, kw):
    assert isinstance(res.text, str)
    assert res.finish_reason in FINISH
    u = res.usage
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert u.completion_tokens == len(res.token_ids) <= max(kw.get("max_new_tokens", 128), 1)
    score = res.reliability.score
    assert math.isfinite(score) and 0.0 <= score <= 1.0


@example(which=0, prompt="a\ud800b", kw={})  # the reproducers of the hardening issue
@example(which=1, prompt=[{"role": "user", "content": "hi\udfff"}], kw={})
@example(which=0, prompt="hi", kw={"stop": ["\ud800"]})
@example(which=0, prompt="hi", kw={"seed": 2**64, "temperature": 1.0})
@example(which=0, prompt="hi", kw={"seed": -(2**63) - 1, "temperature": 1.0})
@example(which=0, prompt="hi", kw={"temperature": 1e-39, "seed": 0})
@example(which=1, prompt="hi", kw={"temperature": 1.0, "top_p": 5e-324, "seed": 0})
@example(which=0, prompt="hi", kw={"temperature": float("inf")})
@example(which=0, prompt=[{"role": ["user"], "content": "hi"}], kw={})
@example(which=0, prompt="hi", kw={"ignore_eos": "no"})
@settings(max_examples=60, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(which=st.integers(0, 1), prompt=prompt, kw=kwargs)
def test_generate_raises_only_typed_errors_and_answers_are_well_formed(llms, which, prompt, kw):
    llm = llms[which]
    kw.setdefault("max_new_tokens", 6)  # keep the run short
    try:
        res = llm.generate(prompt, **kw)
    except BlendInError as e:
        event(f"typed error: {type(e).__name__}")
        with pytest.raises(BlendInError):  # stream() checks the same arguments up front
            llm.stream(prompt, **kw)
        assert llm.generate("hello", max_new_tokens=2).usage.completion_tokens == 2
        return
    event("answered")
    _check(res, kw)
    events = list(llm.stream(prompt, **kw))
    final = events[-1]
    assert final.done and not any(e.done for e in events[:-1])
    assert "".join(e.text for e in events) == final.result.text
    _check(final.result, kw)
    if kw.get("seed") is not None or not kw.get("temperature"):  # the same answer again
        assert final.result.text == res.text and final.result.token_ids == res.token_ids
