"""Tool calls, JSON answers, log-probs and asyncio in the framework-free engine."""

import asyncio
import json
import math
import time

import pytest

from heartbeat import Heartbeat
from blendin_llm import BlendedLLM
from blendin_llm.errors import GenerationArgumentError, PromptError
from blendin_llm.filters import FilterChain
from blendin_llm.tools import JsonAnswer, ToolCallCapture, parse_tool_calls

from scripted import ScriptedBackend, oracle

MAGIC = {"type": "function", "function": {
    "name": "magic", "description": "Apply a magic function to an input.",
    "parameters": {"type": "object", "properties": {"input": {"type": "integer"}},
                   "required": ["input"]}}}
WEATHER = {"type": "function", "function": {
    "name": "weather", "description": "Weather at a place.",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}}
TOOLS = [{"name": "magic", "parameters": {}}, {"name": "weather", "parameters": {}}]


@pytest.fixture
def scripted(chat_tok):
    def make(rule=oracle, base_conf=0.35, guide_conf=0.9):
        return BlendedLLM(ScriptedBackend(chat_tok, rule, base_conf, name="s-base"),
                          [ScriptedBackend(chat_tok, rule, guide_conf, name="s-guide")])
    return make


# -- parsing, hand-written cases ---------------------------------------------------------------
@pytest.mark.parametrize("captured, name, args", [
    ('<tool_call>{"name": "magic", "arguments": {"input": 3}}</tool_call>', "magic", {"input": 3}),
    ('<tool_call>\n{"name": "magic", "parameters": {"input": 3}}\n</tool_call>', "magic", {"input": 3}),
    ('<tool_call>{"name": "magic", "arguments": "{\\"input\\": 3}"}</tool_call>', "magic", {"input": 3}),
    ('<tool_call>{"name": "weather", "arguments": {}} and then some chatter', "weather", {}),
    ('<tool_call>{"name": "weather", "arguments": {"location": "東京"}}', "weather", {"location": "東京"}),
    # the call's own object left open: closed after the arguments
    ('<tool_call>{"name": "magic", "arguments": {\n "input": 3\n}</tool_call>', "magic", {"input": 3}),
    ('<tool_call>{"name": "magic", "arguments": {"input": 3})\n', "magic", {"input": 3}),
])
def test_parse_valid_calls(captured, name, args):
    calls, invalid = parse_tool_calls(captured, TOOLS, finished=True)
    assert invalid == []
    assert [(c.name, c.arguments) for c in calls] == [(name, args)]
    assert calls[0].id.startswith("call_")


@pytest.mark.parametrize("captured, finished, error", [
    ('<tool_call>{"name": "nuke", "arguments": {}}</tool_call>', True, "unknown tool 'nuke'"),
    ('<tool_call>{"name": "magic", "arguments": {"input": </tool_call>', True, "not valid JSON"),
    ('<tool_call>{"name": "magic", "arguments": {"inp', False, "ended inside the tool call"),
    ('<tool_call>["magic", 3]</tool_call>', True, '{"name": ..., "arguments": {...}}'),
    ('<tool_call>{"name": "magic", "arguments": [3]}</tool_call>', True, "must be a JSON object"),
])
def test_parse_invalid_calls_say_why(captured, finished, error):
    calls, invalid = parse_tool_calls(captured, TOOLS, finished=finished)
    assert calls == [] and len(invalid) == 1
    assert error in invalid[0].error
    assert invalid[0].arguments  # the raw text is kept for the caller


def test_two_calls_parse_in_order():
    text = ('<tool_call>{"name": "magic", "arguments": {"input": 1}}</tool_call>\n'
            '<tool_call>{"name": "weather", "arguments": {"location": "Oslo"}}</tool_call>')
    calls, _ = parse_tool_calls(text, TOOLS, finished=True)
    assert [c.name for c in calls] == ["magic", "weather"]
    assert len({c.id for c in calls}) == 2


def test_capture_releases_text_before_a_call_and_holds_a_split_tag():
    cap = ToolCallCapture()
    out = [cap.push(d) for d in ["Let me ", "check. <to", "ol_c", 'all>{"name": "magic", ',
                                 '"arguments": {"input": 3}}', " more"]]
    released = "".join(e for e, _ in out)
    assert released == "Let me check. "
    assert out[1] == ("check. ", None)  # "<to" held back: it may start a tag
    assert out[4][1] == ""  # the call's object closed: the answer ends (no parallel calls)
    assert cap.captured == '<tool_call>{"name": "magic", "arguments": {"input": 3}}</tool_call>'


def test_capture_releases_a_held_partial_tag_that_never_completes():
    chain = FilterChain([ToolCallCapture()])
    assert chain.push("a <tool") == ("a ", None)
    assert chain.push("box") == ("<toolbox", None)
    assert chain.push("<") == ("", None)
    assert chain.flush() == "<"


def test_json_answer_ends_where_the_object_closes_even_with_braces_in_strings():
    f = JsonAnswer()
    assert f.push('{"a": "x}y", "b": {"c": 1}') == ('{"a": "x}y", "b": {"c": 1}', None)
    assert f.push('} trailing') == ("}", "")


# -- end to end through the engine ------------------------------------------------------------
def test_tool_call_comes_back_parsed_and_out_of_the_text(scripted):
    llm = scripted()
    events = list(llm.stream("What is magic(3)? Use the tool.", tools=[MAGIC, WEATHER]))
    res = events[-1].result
    assert [(c.name, c.arguments) for c in res.tool_calls] == [("magic", {"input": 3})]
    assert res.finish_reason == "tool_calls" and res.text == ""
    assert "".join(e.text for e in events) == ""
    assert res.reliability.interventions > 0  # the guide was blended in at every step


@pytest.mark.parametrize("choice", ["weather", {"type": "function", "function": {"name": "weather"}}])
def test_a_named_tool_choice_is_prefilled_and_obeyed(scripted, choice):
    llm = scripted()
    res = llm.generate("What is magic(3)?", tools=[MAGIC, WEATHER], tool_choice=choice)
    assert [c.name for c in res.tool_calls] == ["weather"]
    prompt = llm.base.prompts[-1]
    assert prompt.endswith('<tool_call>{"name": "weather", "arguments": {')


def test_required_tool_choice_prefills_the_call_opening(scripted):
    llm = scripted()
    res = llm.generate("Use a tool about the weather.", tools=[MAGIC, WEATHER], tool_choice="any")
    assert [c.name for c in res.tool_calls] == ["weather"]
    assert llm.base.prompts[-1].endswith('<tool_call>{"name": "')


def test_tool_choice_none_keeps_the_text(scripted):
    res = scripted().generate("What is magic(3)?", tools=[MAGIC], tool_choice="none")
    assert res.tool_calls == [] and res.finish_reason == "stop"
    assert res.text == "Hello! How can I help you today?"


def test_tool_results_are_rendered_and_answered(scripted):
    llm = scripted()
    messages = [
        {"role": "user", "content": "What is magic(3)?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "magic", "arguments": '{"input": 3}'}}]},
        {"role": "tool", "tool_call_id": "c1", "name": "magic", "content": "5"},
    ]
    res = llm.generate(messages, tools=[MAGIC])
    assert res.text == "The tool says 5." and res.tool_calls == []
    prompt = llm.base.prompts[-1]
    assert '<tool_call>{"name": "magic", "arguments": {"input": 3}}</tool_call>' in prompt
    assert '<tool_response name="magic">\n5\n</tool_response>' in prompt


@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "x", "content": "5"}],
    [{"role": "user", "content": "hi"},
     {"role": "assistant", "content": "", "tool_calls": [{"id": "a", "name": "magic", "arguments": {}}]},
     {"role": "tool", "tool_call_id": "zzz", "content": "5"}],
])
def test_a_tool_result_without_its_call_is_a_prompt_error(scripted, messages):
    llm = scripted()
    with pytest.raises(PromptError, match="no earlier assistant message made that tool call"):
        llm.generate(messages, tools=[MAGIC])
    assert llm.generate("hi").text == "Hello! How can I help you today?"  # still usable


def test_json_response_format_gives_one_object(scripted):
    schema = {"type": "object", "properties": {"setup": {"type": "string"}, "n": {"type": "integer"}}}
    events = list(scripted().stream("A joke about 7 cats", response_format={
        "type": "json_schema", "json_schema": {"name": "Joke", "schema": schema}}))
    res = events[-1].result
    assert json.loads(res.text) == {"setup": "setup for A joke about 7 cats", "n": 7}
    assert "".join(e.text for e in events) == res.text  # the prefilled "{" is streamed too
    assert res.finish_reason == "stop"


@pytest.mark.parametrize("kwargs, match", [
    ({"tools": [{"function": {"description": "no name"}}]}, "tool 0 must be a dict"),
    ({"tools": [MAGIC, MAGIC]}, "unique"),
    ({"tools": [MAGIC], "tool_choice": "nuke"}, "tool_choice must be"),
    ({"tool_choice": "required"}, "no tools are bound"),
    ({"response_format": {"type": "xml"}}, "response_format must be"),
    ({"logprobs": True, "top_logprobs": 50}, r"top_logprobs must be an integer in \[0, 20\]"),
])
def test_bad_tool_and_format_arguments(scripted, kwargs, match):
    llm = scripted()
    with pytest.raises(GenerationArgumentError, match=match):
        llm.generate("hi", **kwargs)
    assert llm.generate("hi").text == "Hello! How can I help you today?"


# -- log-probs of the blended distribution -------------------------------------------------------
@pytest.mark.parametrize("gamma", [0.0, 1.01])  # never / always blended
def test_logprobs_are_those_of_the_final_distribution(make_llm, gamma):
    llm = make_llm(gamma=gamma)
    events = list(llm.stream("The quick brown", max_new_tokens=12, ignore_eos=True,
                             logprobs=True, top_logprobs=3))
    res = events[-1].result
    tokens = [e for e in events if not e.done]
    assert res.logprobs == [e.logprob for e in tokens] and len(tokens) == 12
    for e in tokens:
        lp = e.logprob
        assert math.isclose(lp.logprob, math.log(e.prob), rel_tol=1e-4, abs_tol=1e-5)
        tops = [t.logprob for t in lp.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True)
        assert math.isclose(tops[0], lp.logprob, rel_tol=1e-5)  # greedy takes the top token
        assert bytes(lp.bytes).decode("utf-8", "replace") == lp.token
    assert [e.consulted for e in tokens] == [gamma > 1] * 12


def test_no_logprobs_unless_asked(make_llm):
    res = make_llm().generate("The quick brown", max_new_tokens=4)
    assert res.logprobs is None


# -- asyncio ---------------------------------------------------------------------------------------
def test_agenerate_does_not_block_the_event_loop(make_llm):
    llm = make_llm(gamma=1.01)
    want = llm.generate("The quick brown", max_new_tokens=40, ignore_eos=True)

    async def main():
        async with Heartbeat() as beat:
            t0 = time.perf_counter()
            res = await llm.agenerate("The quick brown", max_new_tokens=40, ignore_eos=True)
            t1 = time.perf_counter()
        return res, beat.kept_ticking(t0, t1)

    res, free = asyncio.run(main())
    assert res.text == want.text and res.token_ids == want.token_ids
    assert free  # the loop kept ticking all through the call


def test_astream_left_early_frees_the_instance(make_llm):
    llm = make_llm()

    async def main():
        async for event in llm.astream("The quick brown", max_new_tokens=50, ignore_eos=True):
            break
        return await llm.agenerate("The quick brown", max_new_tokens=5)

    res = asyncio.run(main())
    assert res.usage.completion_tokens <= 5
    assert llm.generate("The quick brown", max_new_tokens=5).text == res.text


def test_astream_raises_argument_errors_to_the_caller(make_llm):
    llm = make_llm()

    async def main():
        with pytest.raises(GenerationArgumentError):
            async for _ in llm.astream("hi", max_new_tokens=0):
                pass

    asyncio.run(main())
