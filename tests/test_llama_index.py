"""BlendIn as a LlamaIndex LLM: the contract (LlamaIndex has no standard suite), query engines,
agents, reliability events, errors."""

import asyncio
import json
import re
import time

import pytest

pytest.importorskip("llama_index.core")

from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.base.llms.types import ChatMessage, ImageBlock, MessageRole, TextBlock
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.tools import FunctionTool

from blendin_llm import BlendConfig, BlendedLLM, LowReliabilityError, ModelSpec
from blendin_llm.errors import PromptError
from llama_index.llms.blendin import BlendIn, BlendInReliabilityEvent, with_reliability

from scripted import ScriptedBackend, oracle
from tiny import make_model, make_tokenizer

TOK = make_tokenizer(chat=True)
TINY = BlendedLLM(ModelSpec(model=make_model(TOK, seed=0), tokenizer=TOK, name="tiny-base"),
                  [ModelSpec(model=make_model(TOK, seed=1, hidden=48), tokenizer=TOK,
                             name="tiny-guide")])


def scripted(rule=oracle):
    return BlendedLLM(ScriptedBackend(TOK, rule, 0.35, name="scripted-base"),
                      [ScriptedBackend(TOK, rule, 0.9, name="scripted-guide")])


USER = [ChatMessage(role=MessageRole.USER, content="The quick brown fox")]


SEEN = []


class Events(BaseEventHandler):
    @classmethod
    def class_name(cls):
        return "Events"

    def handle(self, event, **kwargs):
        if isinstance(event, BlendInReliabilityEvent):
            SEEN.append(event)


def test_metadata_comes_from_the_engine():
    llm = BlendIn(llm=TINY, max_new_tokens=33)
    md = llm.metadata
    assert md.context_window == TINY.base.context_length == 256
    assert (md.num_output, md.is_chat_model, md.model_name) == (33, True, "tiny-base+tiny-guide")
    assert TINY.as_llama_index().engine is TINY


def test_every_entry_point_gives_the_same_answer_and_record():
    llm = BlendIn(llm=TINY, max_new_tokens=20)
    chat = llm.chat(USER)
    comp = llm.complete("The quick brown fox")
    chunks = list(llm.stream_chat(USER))
    comp_chunks = list(llm.stream_complete("The quick brown fox"))

    async def both():
        a = await llm.achat(USER)
        b = await llm.acomplete("The quick brown fox")
        s = [r async for r in await llm.astream_chat(USER)]
        return a, b, s

    achat, acomp, achunks = asyncio.run(both())
    text = chat.message.content
    assert text and comp.text == achat.message.content == acomp.text == text
    for stream in (chunks, achunks):
        assert "".join(r.delta for r in stream) == stream[-1].message.content == text
        assert all("reliability" not in r.additional_kwargs for r in stream[:-1])
        assert stream[-1].additional_kwargs == chat.additional_kwargs
    assert comp_chunks[-1].text == text
    kw = chat.additional_kwargs
    assert set(kw) >= {"reliability", "finish_reason", "prompt_tokens", "completion_tokens",
                       "total_tokens", "model_name"}
    assert kw["reliability"] == comp.additional_kwargs["reliability"]
    assert kw["completion_tokens"] == kw["reliability"]["tokens"] == 20


def test_stop_and_logprobs():
    llm = BlendIn(llm=TINY, max_new_tokens=30)
    free = llm.chat(USER).message.content
    stop = free[10:13]
    cut = llm.chat(USER, stop=[stop])
    assert cut.message.content == free[: free.index(stop)]
    assert cut.additional_kwargs["stop_sequence"] == stop
    lp = BlendIn(llm=TINY, max_new_tokens=6, logprobs=True, top_logprobs=2).chat(USER).logprobs
    assert len(lp) == 6 and all(len(row) == 3 for row in lp)  # chosen + 2 alternatives
    assert all(row[1].logprob >= row[2].logprob for row in lp)


def test_async_calls_do_not_block_the_event_loop():
    llm = BlendIn(llm=TINY, max_new_tokens=40, gamma=1.01)

    async def main():
        ticks, done = [], asyncio.Event()

        async def beat():
            while not done.is_set():
                ticks.append(time.perf_counter())
                await asyncio.sleep(0.005)

        task = asyncio.create_task(beat())
        await asyncio.sleep(0.01)
        t0 = time.perf_counter()
        await llm.achat(USER)
        t1 = time.perf_counter()
        done.set()
        await task
        return sum(t0 <= t <= t1 for t in ticks), t1 - t0

    n, took = asyncio.run(main())
    assert n >= max(3, int(took / 0.005 * 0.3))


def test_each_answer_dispatches_its_reliability_event():
    handler = Events()
    root = get_dispatcher()
    root.add_event_handler(handler)
    try:
        SEEN.clear()
        llm = BlendIn(llm=TINY, max_new_tokens=5)
        r1 = llm.chat(USER)
        list(llm.stream_complete("Hello"))
        assert len(SEEN) == 2
        assert SEEN[0].reliability == r1.additional_kwargs["reliability"]
    finally:
        root.event_handlers.remove(handler)


# -- in LlamaIndex's own machinery -------------------------------------------------------------
def test_query_engine_answers_carry_reliability():
    Settings.llm = BlendIn(llm=scripted(), max_new_tokens=60)
    Settings.embed_model = MockEmbedding(embed_dim=8)
    index = VectorStoreIndex.from_documents([Document(text="Paris is the capital of France."),
                                             Document(text="The Seine flows through Paris.")])
    engine = with_reliability(index.as_query_engine())
    response = engine.query("What is the capital of France?")
    assert str(response) == "Hello! How can I help you today?"
    rec = response.metadata["reliability"]
    assert rec["tokens"] > 0 and rec["intervention_rate"] == 1.0  # the base was never sure
    assert response.metadata["flagged"] == rec["flagged"]
    assert len(response.metadata["reliability_records"]) >= 1
    aresp = asyncio.run(engine.aquery("What is the capital of France?"))
    assert aresp.metadata["reliability"] == rec
    with pytest.raises(LowReliabilityError):
        with_reliability(index.as_query_engine(), min_score=1.0).query("capital?")


def _react_rule(prompt):
    turns = re.findall(r"<\|im_start\|>(\w+)\n(.*?)<\|im_end\|>", prompt, re.S)
    observed = [c for r, c in turns if r != "system" and c.startswith("Observation:")]
    if observed:
        seen = observed[-1][len("Observation:"):].strip()
        return f"Thought: I can answer without using any more tools.\nAnswer: It is {seen}."
    return 'Thought: I need to use a tool.\nAction: magic\nAction Input: {"x": 3}'


async def test_react_agent_runs_a_tool_loop():
    from llama_index.core.agent.workflow import ReActAgent

    seen = []

    def magic(x: int) -> int:
        """Apply a magic function to x."""
        seen.append(x)
        return x + 2

    agent = ReActAgent(tools=[FunctionTool.from_defaults(magic)],
                       llm=BlendIn(llm=scripted(_react_rule), max_new_tokens=80))
    out = await agent.run(user_msg="What is magic(3)?")
    assert seen == [3]
    assert str(out).strip() == "It is 5."


async def test_function_agent_uses_native_tool_calls():
    from llama_index.core.agent.workflow import FunctionAgent

    seen = []

    def magic(input: int) -> int:
        """Apply a magic function to an input."""
        seen.append(input)
        return input + 2

    agent = FunctionAgent(tools=[FunctionTool.from_defaults(magic)],
                          llm=BlendIn(llm=scripted(), max_new_tokens=80))
    out = await agent.run(user_msg="What is magic(3)?")
    assert seen == [3]
    assert str(out).strip() == "The tool says 5."


def test_tool_calls_come_back_as_tool_selections():
    llm = BlendIn(llm=scripted())

    def magic(input: int) -> int:
        """Apply a magic function to an input."""
        return input + 2

    tool = FunctionTool.from_defaults(magic)
    resp = llm.chat_with_tools([tool], user_msg="What is magic(3)?", tool_required=True)
    sel = llm.get_tool_calls_from_response(resp)
    assert [(s.tool_name, s.tool_kwargs) for s in sel] == [("magic", {"input": 3})]
    assert resp.additional_kwargs["finish_reason"] == "tool_calls"


# -- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("messages, match", [
    ([ChatMessage(role=MessageRole.USER, blocks=[TextBlock(text="what is this?"),
                                                 ImageBlock(url="http://x/y.png")])], "ImageBlock"),
    ([ChatMessage(role=MessageRole.FUNCTION, content="x")], "role 'function'"),
    ([ChatMessage(role=MessageRole.USER, content="hi"),
      ChatMessage(role=MessageRole.TOOL, content="5", additional_kwargs={"tool_call_id": "c"})],
     "no earlier assistant message"),
])
def test_bad_messages_give_clear_errors_and_the_llm_stays_usable(messages, match):
    llm = BlendIn(llm=TINY, max_new_tokens=5)
    with pytest.raises(PromptError, match=match):
        llm.chat(messages)
    assert llm.chat(USER).message.content == BlendIn(llm=TINY, max_new_tokens=5).chat(USER).message.content


def test_built_from_engine_arguments():
    llm = BlendIn(base=ModelSpec(model=TINY.base.model, tokenizer=TOK, name="b"),
                  config=BlendConfig(strategy="base_only"), max_new_tokens=5)
    assert llm.engine.base.model is TINY.base.model and llm.model_name == "b"
    with pytest.raises(PromptError, match="needs llm="):
        BlendIn()
