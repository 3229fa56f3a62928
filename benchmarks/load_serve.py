"""Load and fault test of `blendin serve` on loopback (tiny random models, bounded in time).

    python benchmarks/load_serve.py [--clients 32] [--requests 4] [--tokens 24]

1. Load: ``--clients`` concurrent streaming clients each send ``--requests`` chat requests one after
   another. Printed: errors, p50/p95 time to first token, aggregate completion tokens/s, and
   whether every answer is in the audit log exactly once.
2. Fault: a burst of streaming requests (short and long), the server SIGKILLed once a quarter of
   them have received their end, then restarted
   on the same audit database: ``blendin audit verify`` must pass and every answer whose client
   received its end must have its record.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import httpx  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def save_models(where: Path) -> tuple[str, str]:
    from tiny import make_model, make_tokenizer

    tok = make_tokenizer(chat=True)
    for name, seed, hidden in (("base", 0, 64), ("guide", 1, 48)):
        make_model(tok, seed=seed, hidden=hidden).save_pretrained(where / name)
        tok.save_pretrained(where / name)
    return str(where / "base"), str(where / "guide")


def start(base: str, guide: str, port: int, db: str) -> subprocess.Popen:
    env = {**os.environ, "BLENDIN_CPU_DTYPE": "float32", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "blendin_llm.cli", "serve", "--base", base, "--guide", guide,
         "--port", str(port), "--audit", f"sqlite:///{db}", "--max-batch-size", "16",
         "--max-queue", "512", "--gamma", "0.5"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not start: " + proc.stderr.read().decode()[-2000:])


async def one(client: httpx.AsyncClient, url: str, i: int, tokens: int) -> dict:
    """A streaming chat request: its id, time to first token, tokens, whether its end came."""
    body = {"messages": [{"role": "user", "content": f"question {i}: the quick brown fox?"}],
            "max_tokens": tokens, "stream": True, "stream_options": {"include_usage": True},
            "seed": i, "temperature": 0.8}
    t0 = time.perf_counter()
    out = {"id": None, "ttft": None, "tokens": 0, "done": False, "error": None}
    try:
        async with client.stream("POST", url, json=body) as r:
            if r.status_code != 200:
                out["error"] = f"HTTP {r.status_code}"
                return out
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    out["done"] = True
                    break
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    out["error"] = chunk["error"]["message"]
                    break
                out["id"] = chunk["id"]
                if chunk.get("usage"):
                    out["tokens"] = chunk["usage"]["completion_tokens"]
                for c in chunk["choices"]:
                    if c["delta"].get("content") and out["ttft"] is None:
                        out["ttft"] = time.perf_counter() - t0
    except httpx.HTTPError as e:
        out["error"] = type(e).__name__
    return out


async def load(url: str, clients: int, requests: int, tokens: int) -> list[dict]:
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=clients)) as c:
        async def client(k: int) -> list[dict]:
            return [await one(c, url, k * requests + j, tokens) for j in range(requests)]

        return [r for rs in await asyncio.gather(*(client(k) for k in range(clients)))
                for r in rs]


async def burst(url: str, n: int, kill: callable) -> list[dict]:
    """n streaming requests at once, half short (4 tokens) and half long (200); the server is
    killed once a quarter of them have received their end (or after 20 s)."""
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=n)) as c:
        tasks = [asyncio.create_task(one(c, url, 10_000 + i, 4 if i % 2 else 200))
                 for i in range(n)]
        deadline = time.time() + 20
        while time.time() < deadline and sum(
                t.done() and t.result()["done"] for t in tasks) < n // 4:
            await asyncio.sleep(0.02)
        kill()
        return list(await asyncio.gather(*tasks))


def audited_ids(db: str) -> list[str]:
    from blendin_llm.audit import AuditLog

    with AuditLog(f"sqlite:///{db}") as log:
        return [r.id for r in log.records()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=24)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base, guide = save_models(Path(tmp))
        db = str(Path(tmp) / "audit.db")
        port = free_port()
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        server = start(base, guide, port, db)
        try:
            t = time.perf_counter()
            results = asyncio.run(load(url, args.clients, args.requests, args.tokens))
            wall = time.perf_counter() - t
        except BaseException:
            server.kill()
            raise
        errors = [r for r in results if r["error"] or not r["done"]]
        ttfts = sorted(r["ttft"] for r in results if r["ttft"] is not None)
        ids = audited_ids(db)
        done_ids = [r["id"] for r in results if r["done"]]
        print(f"load: {args.clients} streaming clients x {args.requests} requests x "
              f"{args.tokens} tokens on tiny models, in {wall:.1f} s")
        print(f"  errors: {len(errors)}")
        print(f"  time to first token: p50 {statistics.median(ttfts) * 1000:.0f} ms, p95 "
              f"{ttfts[int(0.95 * (len(ttfts) - 1))] * 1000:.0f} ms")
        print(f"  aggregate: {sum(r['tokens'] for r in results) / wall:.0f} completion tokens/s")
        print(f"  audited exactly once: {sorted(ids) == sorted(done_ids)} "
              f"({len(ids)} records, {len(done_ids)} answers)")

        n = 32
        before = set(ids)
        got = asyncio.run(burst(url, n, lambda: server.send_signal(signal.SIGKILL)))
        server.wait(30)
        finished = [r["id"] for r in got if r["done"]]
        server = start(base, guide, port, db)
        try:
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            verify = subprocess.run([sys.executable, "-m", "blendin_llm.cli", "audit", "verify",
                                     "--audit", f"sqlite:///{db}"], capture_output=True,
                                    text=True, env=env)
            after = set(audited_ids(db)) - before
            missing = [i for i in finished if i not in after]
            print(f"fault: a burst of {n} streaming requests (4 or 200 tokens), the server "
                  "SIGKILLed once a quarter had received their end, then restarted")
            print(f"  answers whose client received the end: {len(finished)}; with a record: "
                  f"{len(finished) - len(missing)}; records of the burst: {len(after)}")
            print(f"  blendin audit verify: exit {verify.returncode}: "
                  f"{(verify.stdout or verify.stderr).strip()}")
            print(f"  after the restart a request is answered: "
                  f"{asyncio.run(load(url, 1, 1, 4))[0]['done']}")
        finally:
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    main()
