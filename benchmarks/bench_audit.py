"""What the audit log costs: one append (a whole record, committed durably) on SQLite and on
PostgreSQL, and a ``BlendedLLM`` answer with ``audit=`` next to the same answer without it.

    python benchmarks/bench_audit.py [--appends 300] [--answers 20] [--tokens 16]
                                     [--postgres URL | --start-postgres]

``--start-postgres`` starts a throw-away PostgreSQL server as the tests do (tests/pgserver.py;
initdb and pg_ctl must be installed). The answers come from the tests' tiny random models
(tests/tiny.py), so the ratio is an upper bound: a real pair's answer takes far longer than the
tiny one while an append costs the same. Prints medians in milliseconds: ``make_entry`` and
``append`` (what an audited answer adds), and the answer time audited / not audited (interleaved,
so machine load hits both alike; on the tiny pair the difference is within the noise).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from blendin_llm import AuditLog, BlendConfig, BlendedLLM, ModelSpec, make_entry  # noqa: E402


def tiny_llm(audit=None) -> BlendedLLM:
    from tiny import make_model, make_tokenizer

    tok = make_tokenizer()
    base = ModelSpec(model=make_model(tok, seed=0), tokenizer=tok, prompt_format="raw",
                     name="base")
    guide = ModelSpec(model=make_model(tok, seed=1, hidden=48), tokenizer=tok,
                      prompt_format="raw", name="guide")
    return BlendedLLM(base, [guide], BlendConfig(), audit=audit)


def time_appends(url: str, entry: dict, n: int) -> list[float]:
    times = []
    with AuditLog(url) as log:
        for i in range(n):
            e = {**entry, "id": f"bench-{i}"}
            t0 = time.perf_counter()
            log.append(e)
            times.append(time.perf_counter() - t0)
        assert log.verify().ok
    return times


def concurrent_rate(url: str, entry: dict, n: int, threads: int = 4) -> float:
    """Appends per second with ``threads`` threads sharing one AuditLog."""
    import threading

    with AuditLog(url) as log:
        def work(t: int) -> None:
            for i in range(n // threads):
                log.append({**entry, "id": f"conc-{t}-{i}"})

        ths = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
        t0 = time.perf_counter()
        for th in ths:
            th.start()
        for th in ths:
            th.join()
        rate = threads * (n // threads) / (time.perf_counter() - t0)
        assert log.verify().ok
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--appends", type=int, default=300)
    ap.add_argument("--answers", type=int, default=20)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--postgres", help="a postgresql:// URL of an empty database")
    ap.add_argument("--start-postgres", action="store_true")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-audit-"))
    plain = tiny_llm()
    res = plain.generate("hello there", max_new_tokens=args.tokens, ignore_eos=True)
    entry = make_entry(id="x", llm=plain, config=plain.config,
                       request={"prompt": "hello there", "params": {"max_new_tokens": 16}},
                       result=res, latency_s=res.elapsed_s)
    print(f"one record: {len(str(entry))} characters of JSON")
    t = []
    for _ in range(args.appends):
        t0 = time.perf_counter()
        make_entry(id="x", llm=plain, config=plain.config, request={"prompt": "hello there"},
                   result=res, latency_s=res.elapsed_s)
        t.append(time.perf_counter() - t0)
    print(f"make_entry: median {1e3 * statistics.median(t):.2f} ms (fingerprints cached)")

    server = None
    urls = {"sqlite": f"sqlite:///{tmp}/bench.db"}
    if args.start_postgres:
        from pgserver import PostgresServer, bindir

        server = PostgresServer(bindir()).start()
        args.postgres = server.new_database()
    if args.postgres:
        urls["postgresql"] = args.postgres
    try:
        for kind, url in urls.items():
            t = time_appends(url, entry, args.appends)
            print(f"append, {kind}: median {1e3 * statistics.median(t):.2f} ms, "
                  f"p95 {1e3 * sorted(t)[int(0.95 * len(t))]:.2f} ms "
                  f"({args.appends} appends, each committed durably)")
            print(f"append, {kind}, 4 threads sharing one log: "
                  f"{concurrent_rate(url, entry, args.appends):.0f} appends/s")

        audited = tiny_llm(audit=f"sqlite:///{tmp}/answers.db")
        kw = dict(max_new_tokens=args.tokens, ignore_eos=True)
        a, b = [], []
        for i in range(args.answers):
            for llm, out in ((plain, a), (audited, b)) if i % 2 else ((audited, b), (plain, a)):
                t0 = time.perf_counter()
                llm.generate("hello there", **kw)
                out.append(time.perf_counter() - t0)
        ma, mb = statistics.median(a), statistics.median(b)
        print(f"answer of {args.tokens} tokens on the tiny pair: {1e3 * ma:.1f} ms without, "
              f"{1e3 * mb:.1f} ms with audit=sqlite (median of {args.answers}): ratio "
              f"{mb / ma:.3f}")
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
