"""ChatBlendIn: LangChain's standard suites, and what they do not check (identity of invoke and
stream, a free event loop, callbacks, log-probs, errors, routing on reliability, agents)."""

import asyncio
import time

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
from langchain_tests.unit_tests import ChatModelUnitTests
from pydantic import BaseModel

from blendin_llm import BlendConfig, BlendedLLM, LowReliabilityError, ModelSpec
from blendin_llm.errors import PromptError
from langchain_blendin import ChatBlendIn, reliability_gate

from scripted import ScriptedBackend, oracle
from tiny import make_model, make_tokenizer

TOK = make_tokenizer(chat=True)
TINY = BlendedLLM(ModelSpec(model=make_model(TOK, seed=0), tokenizer=TOK, name="tiny-base"),
                  [ModelSpec(model=make_model(TOK, seed=1, hidden=48), tokenizer=TOK,
                             name="tiny-guide")])
# base unsure at every step (0.35 < gamma), so every token is a blend of the two
SCRIPTED = BlendedLLM(ScriptedBackend(TOK, oracle, 0.35, name="scripted-base"),
                      [ScriptedBackend(TOK, oracle, 0.9, name="scripted-guide")])


class TestChatBlendInUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self):
        return ChatBlendIn

    @property
    def chat_model_params(self):
        return {"llm": TINY}

    @property
    def supports_model_override(self):
        return False  # the models are loaded objects; a name cannot swap them per call


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


def test_callbacks_receive_every_token_once():
    class Collect(BaseCallbackHandler):
        def __init__(self):
            self.tokens = []

        def on_llm_new_token(self, token, **kwargs):
            self.tokens.append(token)

    cb = Collect()
    chat = ChatBlendIn(llm=TINY, max_tokens=20)
    chunks = list(chat.stream("The quick brown fox", config={"callbacks": [cb]}))
    assert cb.tokens == [c.text for c in chunks]
    assert "".join(cb.tokens) == chat.invoke("The quick brown fox").text


# -- asyncio ---------------------------------------------------------------------------------
async def test_ainvoke_and_astream_do_not_block_the_event_loop():
    chat = ChatBlendIn(llm=TINY, max_tokens=40, gamma=1.01)  # blend every step: slowest path
    ticks, done = [], asyncio.Event()

    async def beat():
        while not done.is_set():
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.005)

    task = asyncio.create_task(beat())
    await asyncio.sleep(0.01)
    t0 = time.perf_counter()
    msg = await chat.ainvoke("The quick brown fox")
    t1 = time.perf_counter()
    streamed = "".join([c.text async for c in chat.astream("The quick brown fox")])
    t2 = time.perf_counter()
    done.set()
    await task
    assert msg.text == streamed == chat.invoke("The quick brown fox").text
    for a, b in ((t0, t1), (t1, t2)):
        assert sum(a <= t <= b for t in ticks) >= max(3, int((b - a) / 0.005 * 0.3))


async def test_abatch_gives_the_sequential_answers():
    chat = ChatBlendIn(llm=TINY, max_tokens=15)
    prompts = ["Hello", "The sea", "Question: what", "naïve café"]
    got = await chat.abatch(prompts)
    assert [m.text for m in got] == [chat.invoke(p).text for p in prompts]


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
                        config=BlendConfig(strategy="base_only"), max_tokens=5)
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
