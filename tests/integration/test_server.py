"""`blendin serve`'s app against the official openai client and raw HTTP, on loopback."""

import asyncio
import json
import threading
import time

import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
import httpx  # noqa: E402
import uvicorn  # noqa: E402
from serving import Served  # noqa: E402
from tiny import make_model, make_tokenizer  # noqa: E402

from blendin_llm import BlendConfig, BlendedLLM, ModelSpec, RawPrompt  # noqa: E402
from blendin_llm.audit import AuditLog  # noqa: E402
from blendin_llm.server import create_app  # noqa: E402

KEY = "sk-test"
MSGS = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def llm():
    tok = make_tokenizer(chat=True)
    base = ModelSpec(model=make_model(tok, seed=0), tokenizer=tok, name="base")
    guide = ModelSpec(model=make_model(tok, seed=1, hidden=48), tokenizer=tok, name="guide")
    return BlendedLLM(base, [guide], BlendConfig(gamma=0.5))


@pytest.fixture(scope="module")
def served(llm, tmp_path_factory):
    log = AuditLog.open(f"sqlite:///{tmp_path_factory.mktemp('audit')}/a.db")
    s = Served(create_app(llm, api_keys={KEY: "acme"}, audit=log, max_body_bytes=20_000))
    s.audit = log
    yield s
    s.stop()


@pytest.fixture
def client(served):
    return openai.OpenAI(base_url=served.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def test_chat_completion_is_the_engines_answer_with_its_reliability(client, served, llm):
    ref = llm.generate(MSGS, max_new_tokens=12)
    raw = client.chat.completions.with_raw_response.create(model=llm.name, messages=MSGS,
                                                           max_tokens=12)
    resp = raw.parse()
    assert resp.choices[0].message.content == ref.text
    assert resp.choices[0].finish_reason == ref.finish_reason
    assert resp.usage.completion_tokens == ref.usage.completion_tokens
    rel = resp.model_extra["reliability"]
    assert rel["tokens"] == ref.reliability.tokens
    assert rel["interventions"] == ref.reliability.interventions
    assert raw.headers["x-blendin-flagged"] in ("true", "false")
    assert float(raw.headers["x-blendin-reliability-score"]) == pytest.approx(rel["score"],
                                                                              abs=1e-4)
    rec = served.audit.get(resp.id)  # committed before the answer was sent
    assert rec is not None and rec.tenant == "acme"
    assert rec.record["response"]["text"] == ref.text


def test_streaming_gives_the_same_text_and_ends_with_reliability_and_usage(client, llm):
    ref = client.chat.completions.create(model=llm.name, messages=MSGS, max_tokens=12,
                                         seed=3, temperature=0.7)
    chunks = list(client.chat.completions.create(
        model=llm.name, messages=MSGS, max_tokens=12, seed=3, temperature=0.7, stream=True,
        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ref.choices[0].message.content
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].model_extra["reliability"]["tokens"] > 0
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == \
        ref.usage.completion_tokens


def test_async_client_and_concurrent_requests(served, llm):
    async def main():
        aclient = openai.AsyncOpenAI(base_url=served.url + "/v1", api_key=KEY, max_retries=0)
        prompts = [[{"role": "user", "content": p}] for p in ("hi", "the sea", "a fox", "tea")]
        return await asyncio.gather(*(aclient.chat.completions.create(
            model=llm.name, messages=m, max_tokens=8) for m in prompts)), prompts

    got, prompts = asyncio.run(main())
    for resp, m in zip(got, prompts):
        assert resp.choices[0].message.content == llm.generate(m, max_new_tokens=8).text


def test_blendin_settings_ride_in_extra_body_and_unknown_fields_are_refused(client, llm):
    resp = client.chat.completions.create(model=llm.name, messages=MSGS, max_tokens=6,
                                          extra_body={"strategy": "base_only"})
    assert resp.model_extra["reliability"]["strategy"] == "base_only"
    with pytest.raises(openai.BadRequestError, match="unknown field"):
        client.chat.completions.create(model=llm.name, messages=MSGS,
                                       extra_body={"gama": 0.3})
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model=llm.name, messages=MSGS, temperature=7)


def test_logprobs_and_completions(client, llm):
    resp = client.chat.completions.create(model=llm.name, messages=MSGS, max_tokens=5,
                                          logprobs=True, top_logprobs=2)
    content = resp.choices[0].logprobs.content
    assert len(content) == resp.usage.completion_tokens
    assert all(len(x.top_logprobs) == 2 and x.logprob <= 0 for x in content)
    # a completion continues the prompt as it is (no chat template), as vLLM's does
    comp = client.completions.create(model=llm.name, prompt="The quick brown fox",
                                     max_tokens=6)
    raw = llm.generate(RawPrompt(text="The quick brown fox"), max_new_tokens=6)
    assert comp.choices[0].text == raw.text
    assert raw.token_ids != llm.generate("The quick brown fox", max_new_tokens=6).token_ids
    assert comp.model_extra["reliability"]["tokens"] == comp.usage.completion_tokens
    # a prompt of token ids, and tokens read back as ids with their top log-probs
    ids = llm.base.encode_text("The quick brown fox")
    comp = client.completions.create(model=llm.name, prompt=ids, max_tokens=6, logprobs=3,
                                     extra_body={"return_tokens_as_token_ids": True})
    lp = comp.choices[0].logprobs
    assert [int(t.split(":")[1]) for t in lp.tokens] == raw.token_ids[:len(lp.tokens)]
    assert all(len(top) == 3 and all(k.startswith("token_id:") for k in top)
               for top in lp.top_logprobs)
    with pytest.raises(openai.BadRequestError, match="token id"):
        client.completions.create(model=llm.name, prompt=[10**6], max_tokens=2)


def test_errors_have_openais_shape_and_status(served, llm):
    url = served.url + "/v1/chat/completions"
    auth = {"Authorization": f"Bearer {KEY}"}
    ok = {"model": llm.name, "messages": MSGS, "max_tokens": 2}
    cases = [
        (dict(json=ok), 401, "invalid_api_key"),
        (dict(json=ok, headers={"Authorization": "Bearer nope"}), 401, "invalid_api_key"),
        (dict(json={**ok, "model": "gpt-9"}, headers=auth), 404, "model_not_found"),
        (dict(json={**ok, "messages": "hi"}, headers=auth), 400, None),
        (dict(json={**ok, "n": 2}, headers=auth), 400, None),
        (dict(content=b"{not json", headers=auth), 400, None),
        (dict(json={**ok, "messages": [{"role": "user", "content": "x" * 30_000}]},
              headers=auth), 413, "body_too_large"),
    ]
    with httpx.Client(timeout=30) as h:
        for kwargs, status, code in cases:
            r = h.post(url, **kwargs)
            assert r.status_code == status, (kwargs, r.text)
            err = r.json()["error"]
            assert err["message"] and err["type"] and err["code"] == code
        assert h.get(served.url + "/health").json()["status"] == "ok"
        models = h.get(served.url + "/v1/models", headers=auth).json()
        assert [m["id"] for m in models["data"]] == [llm.name]
        metrics = h.get(served.url + "/metrics").text
        assert "blendin_requests_total" in metrics and 'status="401"' in metrics
        assert "blendin_tokens_total" in metrics


def test_a_full_queue_answers_429(llm):
    s = Served(create_app(llm, max_queue=1))
    try:
        body = {"model": llm.name, "messages": MSGS, "max_tokens": 4}
        url = s.url + "/v1/chat/completions"
        first: list = []
        with httpx.Client(timeout=60) as h:
            with llm._lock:  # the models are busy: the first request waits in flight
                t = threading.Thread(target=lambda: first.append(h.post(url, json=body)))
                t.start()
                deadline = time.time() + 20
                while h.get(s.url + "/health").json()["in_flight"] < 1 and \
                        time.time() < deadline:
                    time.sleep(0.02)
                r = h.post(url, json=body)
                assert r.status_code == 429 and r.json()["error"]["code"] == "queue_full"
            t.join(60)
            assert first[0].status_code == 200  # served once the models were free
            assert h.post(url, json=body).status_code == 200  # and the place is free again
    finally:
        s.stop()


def test_a_client_that_leaves_mid_stream_frees_its_row(served, llm):
    body = {"model": llm.name, "messages": MSGS, "max_tokens": 200, "ignore_eos": True,
            "stream": True}
    steps0 = llm.scheduler.steps
    with httpx.Client(timeout=60) as h:
        with h.stream("POST", served.url + "/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {KEY}"}) as r:
            for line in r.iter_lines():
                if line.startswith("data: {") and json.loads(line[6:])["choices"][0][
                        "delta"].get("content"):
                    llm._lock.acquire()  # hold the decoding while the client goes away
                    break
        try:
            time.sleep(0.5)  # the server notices the closed connection and cancels the stream
        finally:
            llm._lock.release()
        deadline = time.time() + 20
        while llm.scheduler.running and time.time() < deadline:
            time.sleep(0.05)
    assert llm.scheduler.running == 0
    assert llm.scheduler.steps - steps0 < 150  # dropped, not decoded to its 200 tokens


def test_langchain_openai_and_llama_index_openai_like_get_the_engines_answer(served, llm):
    langchain_openai = pytest.importorskip("langchain_openai")
    openai_like = pytest.importorskip("llama_index.llms.openai_like")
    from llama_index.core.llms import ChatMessage

    ref = llm.generate(MSGS, max_new_tokens=8).text
    chat = langchain_openai.ChatOpenAI(base_url=served.url + "/v1", api_key=KEY, model=llm.name,
                                       max_tokens=8, temperature=0, max_retries=0)
    msg = chat.invoke("hello there")
    assert msg.content == ref
    assert "".join(c.content for c in chat.stream("hello there")) == ref
    li = openai_like.OpenAILike(api_base=served.url + "/v1", api_key=KEY, model=llm.name,
                                is_chat_model=True, max_tokens=8, temperature=0, max_retries=0)
    assert li.chat([ChatMessage(role="user", content="hello there")]).message.content == ref


def test_tool_calls_and_json_answers_through_the_server():
    from scripted import ScriptedBackend, oracle

    tok = make_tokenizer(chat=True)
    llm = BlendedLLM(ScriptedBackend(tok, oracle, 0.35, name="s-base"),
                     [ScriptedBackend(tok, oracle, 0.9, name="s-guide")])
    weather = {"type": "function", "function": {
        "name": "get_weather", "description": "weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}}
    s = Served(create_app(llm))
    try:
        client = openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0)
        ask = [{"role": "user", "content": "what is the weather in 'Paris'?"}]
        resp = client.chat.completions.create(model=llm.name, messages=ask, tools=[weather],
                                              max_tokens=60)
        (call,) = resp.choices[0].message.tool_calls
        assert resp.choices[0].finish_reason == "tool_calls"
        assert call.function.name == "get_weather"
        assert json.loads(call.function.arguments) == {"city": "Paris"}
        chunks = list(client.chat.completions.create(model=llm.name, messages=ask,
                                                     tools=[weather], max_tokens=60,
                                                     stream=True))
        streamed = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
        assert [tc.function.name for tc in streamed] == ["get_weather"]
        follow = ask + [{"role": "assistant", "content": None, "tool_calls": [
            {"id": call.id, "type": "function", "function": {
                "name": "get_weather", "arguments": call.function.arguments}}]},
            {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
        answer = client.chat.completions.create(model=llm.name, messages=follow,
                                                tools=[weather], max_tokens=60)
        assert "sunny" in answer.choices[0].message.content
        js = client.chat.completions.create(model=llm.name, messages=[
            {"role": "user", "content": "give 'Rome' as JSON"}], max_tokens=60,
            response_format={"type": "json_object"})
        assert isinstance(json.loads(js.choices[0].message.content), dict)
    finally:
        s.stop()


def test_the_openapi_document_describes_requests_with_the_engines_own_bounds(served):
    doc = httpx.get(served.url + "/openapi.json", timeout=30).json()
    for path, first in (("/v1/chat/completions", "messages"), ("/v1/completions", "prompt")):
        body = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        props = body["properties"]
        assert body["required"] == [first]
        assert props["temperature"]["maximum"] == 2.0 and props["top_p"]["exclusiveMinimum"] == 0
        assert props["gamma"]["description"] == BlendConfig.model_fields["gamma"].description
        assert props["max_tokens"]["minimum"] == 1
        assert "$ref" not in json.dumps(body)  # self-contained: every field resolves
