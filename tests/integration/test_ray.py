"""Ray Serve replicas of the OpenAI-compatible app, on a local Ray cluster started here: answers
are the engine's, and a replica killed mid-burst loses no request that the client retries once."""

import concurrent.futures
import os
import threading
import time

import pytest

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")
openai = pytest.importorskip("openai")
import httpx  # noqa: E402
from serving import free_port  # noqa: E402
from tiny import make_model, make_tokenizer  # noqa: E402

from blendin_llm import BlendConfig, BlendedLLM, ModelSpec  # noqa: E402
from blendin_llm.errors import ConfigError  # noqa: E402
from blendin_llm.server.ray_serve import deployment, run  # noqa: E402

pytestmark = pytest.mark.slow
MSGS = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray-models")
    tok = make_tokenizer(chat=True)
    for name, seed, hidden in (("base", 0, 32), ("guide", 1, 48)):
        make_model(tok, seed=seed, hidden=hidden).save_pretrained(root / name)
        tok.save_pretrained(root / name)
    env = {k: os.environ[k] for k in ("BLENDIN_CPU_DTYPE", "HF_HUB_OFFLINE",
                                      "TRANSFORMERS_OFFLINE", "PYTHONPATH") if k in os.environ}
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": env})
    port = free_port()
    try:
        run(deployment(str(root / "base"), [str(root / "guide")], gamma=0.5, replicas=2,
                       served_name="blend"), port=port, blocking=False)
        yield {"url": f"http://127.0.0.1:{port}/v1", "root": root}
    finally:
        serve.shutdown()
        ray.shutdown()


def replicas() -> list[str]:
    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith("SERVE_REPLICA::blendin#")]


def running() -> int:
    return serve.status().applications["blendin"].deployments["blendin"] \
        .replica_states.get("RUNNING", 0)


def test_replicas_answer_as_the_engine_does(cluster):
    root = cluster["root"]
    llm = BlendedLLM(ModelSpec(str(root / "base")), [ModelSpec(str(root / "guide"))],
                     BlendConfig(gamma=0.5))
    client = openai.OpenAI(base_url=cluster["url"], api_key="none", max_retries=0, timeout=120)
    prompts = ["hello there", "the sea", "a fox", "tea"]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda p: client.chat.completions.create(
            model="blend", messages=[{"role": "user", "content": p}], max_tokens=8), prompts))
    for resp, p in zip(got, prompts):
        ref = llm.generate(p, max_new_tokens=8)
        assert resp.choices[0].message.content == ref.text
        assert resp.model_extra["reliability"]["interventions"] == ref.reliability.interventions
    assert len(replicas()) == 2


def test_a_killed_replica_is_replaced_and_retried_requests_are_answered(cluster):
    client = openai.OpenAI(base_url=cluster["url"], api_key="none", max_retries=1, timeout=120)
    before = replicas()
    started = threading.Semaphore(0)
    retried = []

    def stream(i: int, first: bool) -> str | None:
        finish = None
        for chunk in client.chat.completions.create(
                model="blend", messages=[{"role": "user", "content": f"story {i}"}],
                max_tokens=200, stream=True, extra_body={"ignore_eos": True}):
            if first and chunk.choices and chunk.choices[0].delta.content:
                started.release()
                first = False
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
        return finish

    def ask(i: int) -> str | None:
        try:
            finish = stream(i, True)
            if finish is not None:
                return finish
        except (openai.APIError, httpx.HTTPError):
            pass
        retried.append(i)  # the client retries once, as a client of any server would
        return stream(i, False)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(ask, i) for i in range(8)]
        for _ in range(8):  # every request is decoding: mid-burst
            assert started.acquire(timeout=120)
        ray.kill(ray.get_actor(before[0], namespace="serve"), no_restart=True)
        finished = [f.result() for f in futures]
    assert finished == ["length"] * 8  # every request answered, some after one retry
    assert retried  # the killed replica was answering some of them
    deadline = time.time() + 120
    while time.time() < deadline and (running() < 2 or before[0] in replicas()):
        time.sleep(0.5)
    assert running() == 2 and before[0] not in replicas()  # replaced by a new replica


def test_a_sqlite_audit_log_is_refused_for_several_replicas(cluster):
    with pytest.raises(ConfigError, match="PostgreSQL"):
        deployment("base", replicas=2, audit="sqlite:///a.db")
    with pytest.raises(ConfigError, match="PostgreSQL"):  # autoscaling may add replicas later
        deployment("base", replicas=1, max_replicas=3, audit="sqlite:///a.db")
