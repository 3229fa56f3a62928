"""Remote models (``RemoteModel``) against real ``blendin serve`` processes on loopback: a remote
base, a remote guide (same and other vocabulary), sampling, batching, and the server's failures
(through a real HTTP proxy in front of the real server that fails, stalls or strips answers)."""

import asyncio
import json
import time

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
import torch  # noqa: E402
from fastapi import FastAPI, Request  # noqa: E402
from fastapi.responses import JSONResponse, Response  # noqa: E402
from compare import TopK  # noqa: E402
from serving import Served, ServeProcess, free_port  # noqa: E402
from tiny import make_model, make_sentencepiece_tokenizer, make_tokenizer  # noqa: E402

from blendin_llm import (  # noqa: E402
    BlendConfig,
    BlendedLLM,
    ModelSpec,
    RawPrompt,
    RemoteModel,
    RemoteModelError,
    RemoteTimeoutError,
)

pytestmark = pytest.mark.slow  # server processes
PROMPTS = ["hello there", "what is 12 + 30?", "Write a poem about the sea"]
CFG = BlendConfig(gamma=0.5)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("remote")
    tok = make_tokenizer(chat=True)
    out = {}
    for name, t, seed, hidden in (("base", tok, 0, 32), ("guide", tok, 1, 48),
                                  ("xguide", make_sentencepiece_tokenizer(), 2, 48)):
        make_model(t, seed=seed, hidden=hidden).save_pretrained(root / name)
        t.save_pretrained(root / name)
        out[name] = str(root / name)
    return out


@pytest.fixture(scope="module")
def servers(dirs, tmp_path_factory):
    """One ``blendin serve`` process per model, each serving it alone (``base_only``)."""
    logs = tmp_path_factory.mktemp("logs")
    procs = {name: ServeProcess("--base", path, "--strategy", "base_only",
                                "--served-model-name", name, log_path=str(logs / name)).start()
             for name, path in dirs.items()}
    try:
        for p in procs.values():
            p.wait()
        yield {name: p.url + "/v1" for name, p in procs.items()}
    finally:
        for p in procs.values():
            p.stop()


def remote(servers, dirs, name, **kw):
    return RemoteModel(servers[name], name, tokenizer=dirs[name], **kw)


def test_remote_base_gives_the_in_process_answers_in_few_round_trips(servers, dirs):
    local = BlendedLLM(ModelSpec(dirs["base"]), [ModelSpec(dirs["guide"])], CFG)
    base = remote(servers, dirs, "base")
    llm = BlendedLLM(base, [ModelSpec(dirs["guide"])], CFG)
    for p in PROMPTS:
        want = local.generate(p, max_new_tokens=24)
        before = base.requests
        got = llm.generate(p, max_new_tokens=24)
        assert got.token_ids == want.token_ids and got.text == want.text
        assert got.reliability.interventions == want.reliability.interventions
        assert got.reliability.top_k_approximation == 20
        assert want.reliability.top_k_approximation is None
        # a round trip per token where a guide changed the base's token (or every chunk's
        # end); fewer than one per token
        assert base.requests - before < len(got.token_ids)
    # base_only: the chunks are taken whole, one request per 16 tokens
    base = remote(servers, dirs, "base", chunk=16)
    alone = BlendedLLM(base, [], BlendConfig(strategy="base_only"))
    before = base.requests
    res = alone.generate(PROMPTS[0], max_new_tokens=32, ignore_eos=True)
    assert base.requests - before == 2
    assert res.token_ids == BlendedLLM(ModelSpec(dirs["base"]), [], BlendConfig(
        strategy="base_only")).generate(PROMPTS[0], max_new_tokens=32, ignore_eos=True).token_ids


def test_one_request_per_token_is_the_reference_pattern(servers, dirs):
    base = remote(servers, dirs, "base", chunk=1)
    llm = BlendedLLM(base, [], BlendConfig(strategy="base_only"))
    res = llm.generate(PROMPTS[1], max_new_tokens=10, ignore_eos=True)
    assert base.requests == 10 and len(res.token_ids) == 10


def test_remote_guides_same_and_other_vocabulary(servers, dirs):
    local = BlendedLLM(ModelSpec(dirs["base"]), [ModelSpec(dirs["guide"])], CFG)
    guide = remote(servers, dirs, "guide")
    llm = BlendedLLM(ModelSpec(dirs["base"]), [guide], CFG)
    for p in PROMPTS:
        assert llm.generate(p, max_new_tokens=20).token_ids == \
            local.generate(p, max_new_tokens=20).token_ids
    # another vocabulary: exactly the in-process blend with the guide known by its top 20
    xguide = remote(servers, dirs, "xguide")
    llm = BlendedLLM(ModelSpec(dirs["base"]), [xguide], CFG)
    assert llm.vocab_maps[0] is not None
    truncated = BlendedLLM(ModelSpec(dirs["base"]),
                           [TopK.load(ModelSpec(dirs["xguide"]))], CFG)
    for p in PROMPTS:
        got = llm.generate(p, max_new_tokens=20)
        assert got.token_ids == truncated.generate(p, max_new_tokens=20).token_ids
        assert got.reliability.interventions > 0 and got.reliability.top_k_approximation == 20


def test_sampling_takes_the_servers_own_draws_and_is_reproducible(servers, dirs):
    base = remote(servers, dirs, "base")
    llm = BlendedLLM(base, [], BlendConfig(strategy="base_only"))
    kw = dict(max_new_tokens=16, temperature=0.9, seed=7, ignore_eos=True)
    a, b = llm.generate(PROMPTS[0], **kw), llm.generate(PROMPTS[0], **kw)
    assert a.token_ids == b.token_ids
    assert llm.generate(PROMPTS[0], **{**kw, "seed": 8}).token_ids != a.token_ids
    # not consulted: every token is the server's own draw from the base's whole distribution
    ids = llm.base.encode_prompt([{"role": "user", "content": PROMPTS[0]}])
    r = httpx.post(servers["base"] + "/completions", timeout=60, json={
        "model": "base", "prompt": ids, "max_tokens": 16, "logprobs": 1, "temperature": 0.9,
        "seed": (7 * 1_000_003 + len(ids)) % 2**31, "ignore_eos": True,
        "return_tokens_as_token_ids": True})
    tokens = [int(t.split(":")[1]) for t in r.json()["choices"][0]["logprobs"]["tokens"]]
    assert a.token_ids == tokens


def test_batched_rows_ask_concurrently_and_match_solo(servers, dirs):
    base = remote(servers, dirs, "base")
    llm = BlendedLLM(base, [ModelSpec(dirs["guide"])], CFG)
    solo = [llm.generate(p, max_new_tokens=16).token_ids for p in PROMPTS]
    got = llm.generate_batch(PROMPTS, max_new_tokens=16)
    assert [g.token_ids for g in got] == solo
    assert llm.scheduler.max_rows == len(PROMPTS)


def test_raw_prompts_and_the_frameworks_face(servers, dirs):
    base = remote(servers, dirs, "base")
    llm = BlendedLLM(base, [], BlendConfig(strategy="base_only"))
    ids = base.encode_text("The quick brown fox")
    a = llm.generate(RawPrompt(ids=ids), max_new_tokens=8)
    assert a.token_ids == llm.generate(RawPrompt(text="The quick brown fox"),
                                       max_new_tokens=8).token_ids
    pytest.importorskip("langchain_core")
    msg = llm.as_langchain(max_tokens=8).invoke("hello there")
    assert msg.content == llm.generate("hello there", max_new_tokens=8).text


def test_text_mode_reads_tokens_by_their_text(servers, dirs):
    by_ids = remote(servers, dirs, "base")
    by_text = remote(servers, dirs, "base", token_ids=False)
    p = by_ids.encode_text("The quick brown fox")
    a, b = by_ids.new_state(), by_text.new_state()
    la, lb = by_ids.forward(a, p), by_text.forward(b, p)
    # the same distribution, except for tokens whose text is not theirs alone (a piece of a
    # character reads as U+FFFD): those cannot be told apart by text and are left out
    unique = set(by_text._text_ids.values())
    top = [i for i in torch.topk(la, 20).indices.tolist() if i in unique]
    assert top and torch.allclose(lb[top], la[top], atol=1e-4)
    llm = BlendedLLM(by_text, [], BlendConfig(strategy="base_only"))
    res = llm.generate(RawPrompt(text="The quick brown fox"), max_new_tokens=8, ignore_eos=True)
    assert len(res.token_ids) == 8 and res.reliability.top_k_approximation == 20


# -- failures: a real HTTP proxy in front of the real server ---------------------------------
class Proxy:
    """Forwards ``/v1/*`` to ``target``; ``mode`` makes it fail: ("fail", n, status) answers
    ``status`` to the next n requests, ("slow", s) waits s seconds first (and notes a client
    that leaves), ("strip",) drops the log-probs, ("fewer", k) keeps k top log-probs."""

    def __init__(self, target: str) -> None:
        self.mode: tuple = ("ok",)
        self.seen = 0
        self.left_at: float | None = None
        app = FastAPI()

        @app.api_route("/v1/{path:path}", methods=["GET", "POST"])
        async def forward(path: str, request: Request):
            self.seen += 1
            mode = self.mode
            if mode[0] == "fail" and mode[1] > 0:
                self.mode = ("fail", mode[1] - 1, mode[2])
                return JSONResponse({"error": {"message": "overloaded"}}, status_code=mode[2],
                                    headers={"Retry-After": "0"})
            if mode[0] == "slow" and request.method == "POST":
                end = time.time() + mode[1]
                while time.time() < end:
                    if await request.is_disconnected():
                        self.left_at = time.time()
                        return JSONResponse({}, status_code=499)
                    await asyncio.sleep(0.05)
            raw = await request.body()
            async with httpx.AsyncClient(timeout=60) as c:
                r = await c.request(request.method, f"{target}/{path}", content=raw,
                                    headers={"content-type": "application/json"})

            def change(body):
                lp = body["choices"][0]["logprobs"] if body.get("choices") else None
                if lp and mode[0] == "strip":
                    body["choices"][0]["logprobs"] = None
                elif lp and mode[0] == "fewer":
                    lp["top_logprobs"] = [dict(list(t.items())[:mode[1]])
                                          for t in lp["top_logprobs"]]
                return body

            if request.method == "POST" and r.status_code == 200 and \
                    json.loads(raw).get("stream"):
                lines = [f"data: {json.dumps(change(json.loads(x[6:])))}"
                         if x.startswith("data: {") else x for x in r.text.split("\n")]
                return Response("\n".join(lines), media_type="text/event-stream")
            return JSONResponse(change(r.json()) if request.method == "POST" else r.json(),
                                status_code=r.status_code)

        self.served = Served(app)
        self.url = self.served.url + "/v1"


@pytest.fixture(scope="module")
def proxy(servers):
    p = Proxy(servers["base"])
    yield p
    p.served.stop()


def test_server_failures_are_retried_then_typed_errors(proxy, dirs):
    base = RemoteModel(proxy.url, "base", tokenizer=dirs["base"], backoff=0.01, retries=2)
    llm = BlendedLLM(base, [], BlendConfig(strategy="base_only"))
    want = llm.generate(PROMPTS[0], max_new_tokens=6).token_ids
    proxy.mode = ("fail", 2, 503)  # two failures, then the answer: retried
    assert llm.generate(PROMPTS[0], max_new_tokens=6).token_ids == want
    assert base.retried == 2
    proxy.mode = ("fail", 2, 429)
    assert llm.generate(PROMPTS[0], max_new_tokens=6).token_ids == want
    proxy.mode = ("fail", 5, 500)  # more failures than retries: the call fails, typed
    with pytest.raises(RemoteModelError, match="answered 500") as e:
        llm.generate(PROMPTS[0], max_new_tokens=6)
    assert e.value.status == 500
    proxy.mode = ("ok",)  # ... and the object answers again
    assert llm.generate(PROMPTS[0], max_new_tokens=6).token_ids == want
    proxy.mode = ("fail", 1, 400)  # a refusal is not retried
    with pytest.raises(RemoteModelError, match="refused the request"):
        llm.generate(PROMPTS[0], max_new_tokens=6)


def test_missing_or_too_few_logprobs_and_too_many_asked(proxy, servers, dirs):
    base = RemoteModel(proxy.url, "base", tokenizer=dirs["base"])
    llm = BlendedLLM(base, [], BlendConfig(strategy="base_only"))
    proxy.mode = ("strip",)
    with pytest.raises(RemoteModelError, match="without top log-probs"):
        llm.generate(PROMPTS[0], max_new_tokens=4)
    proxy.mode = ("fewer", 5)
    with pytest.raises(RemoteModelError, match="returned 5 top log-probs where 20"):
        llm.generate(PROMPTS[0], max_new_tokens=4)
    proxy.mode = ("ok",)
    greedy = BlendedLLM(remote(servers, dirs, "base", top_k=21), [],
                        BlendConfig(strategy="base_only"))
    with pytest.raises(RemoteModelError, match="--max-logprobs"):
        greedy.generate(PROMPTS[0], max_new_tokens=4)


def test_timeouts_unreachable_servers_and_wrong_names(proxy, servers, dirs):
    base = RemoteModel(proxy.url, "base", tokenizer=dirs["base"], timeout=0.5, retries=1,
                       backoff=0.01)
    llm = BlendedLLM(base, [], BlendConfig(strategy="base_only"))
    proxy.mode = ("slow", 3)
    t0 = time.time()
    with pytest.raises(RemoteTimeoutError, match="did not answer within 0.5 s"):
        llm.generate(PROMPTS[0], max_new_tokens=4)
    assert time.time() - t0 < 2.5
    proxy.mode = ("ok",)
    with pytest.raises(RemoteModelError, match="cannot reach"):
        RemoteModel(f"http://127.0.0.1:{free_port()}/v1", "base", tokenizer=dirs["base"])
    with pytest.raises(RemoteModelError, match="does not serve 'nope'.*'base'"):
        RemoteModel(servers["base"], "nope", tokenizer=dirs["base"])
    gone = RemoteModel(f"http://127.0.0.1:{free_port()}/v1", "base", tokenizer=dirs["base"],
                       check=False, retries=0)
    with pytest.raises(RemoteModelError, match="cannot reach"):
        BlendedLLM(gone, [], BlendConfig(strategy="base_only")).generate("hi", max_new_tokens=2)


def test_cancelling_a_stream_stops_its_request_in_flight(proxy, dirs):
    base = RemoteModel(proxy.url, "base", tokenizer=dirs["base"], timeout=30)
    llm = BlendedLLM(base, [], BlendConfig(strategy="base_only"))

    async def main():
        proxy.mode, proxy.left_at = ("slow", 20), None

        async def read():
            async for _ in llm.astream(PROMPTS[0], max_new_tokens=4):
                pass

        task = asyncio.create_task(read())
        await asyncio.sleep(1.0)
        t0 = time.time()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        while proxy.left_at is None and time.time() - t0 < 10:
            await asyncio.sleep(0.05)
        return t0

    t0 = asyncio.run(main())
    assert proxy.left_at is not None and proxy.left_at - t0 < 3  # not the 20 s the server took
    proxy.mode = ("ok",)
    deadline = time.time() + 10
    while llm.scheduler.running and time.time() < deadline:
        time.sleep(0.05)
    assert llm.scheduler.running == 0
    assert len(llm.generate(PROMPTS[0], max_new_tokens=4).token_ids) > 0
