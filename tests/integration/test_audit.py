"""The audit log against real databases: SQLite files and a PostgreSQL server the tests start
(tests/pgserver.py). Tampering is done behind the log's back with plain SQL, and a writer process
is killed with SIGKILL; BlendedLLM(audit=...) runs the tiny models."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from blendin_llm import AuditError, BlendConfig, BlendedLLM, ConfigError, ModelSpec
from blendin_llm.audit import GENESIS, AuditLog, canonical_json, make_entry
from blendin_llm.score_model import fingerprint
from blendin_llm.cli import app

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["sqlite", "postgresql"])
def log_url(request, tmp_path):
    """A fresh, empty audit log on each kind of database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/audit.db"  # an absolute path: sqlite:////tmp/...
    return request.getfixturevalue("postgres_server").new_database()


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path}/audit.db"


def raw(url: str, sql: str, args: tuple = ()) -> list:
    """Run SQL on the log's database directly, behind the log's back."""
    if url.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            cur = conn.execute(sql.replace("?", "%s"), args)
            return cur.fetchall() if cur.description else []
    conn = sqlite3.connect(url[len("sqlite:///"):], isolation_level=None)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def entry(i: int, tenant: str = "acme", model: str = "m", flagged: bool = False,
          score: float = 0.9, rate: float = 0.1) -> dict:
    return {"id": f"a{i}", "tenant": tenant, "user": "u", "model": {"name": model},
            "config_hash": "c", "request": {"prompt": f"question {i}"},
            "response": {"text": f"answer {i}", "finish_reason": "stop"},
            "reliability": {"flagged": flagged, "score": score, "intervention_rate": rate}}


def filled(url: str, n: int = 5) -> AuditLog:
    log = AuditLog(url)
    for i in range(1, n + 1):
        log.append(entry(i))
    return log


# -- appending and reading --------------------------------------------------------------------------
def test_append_get_and_records_in_chain_order(log_url):
    with AuditLog(log_url) as log:
        recs = [log.append(entry(i, flagged=i % 2 == 0, score=i / 10)) for i in range(1, 5)]
        assert [r.seq for r in recs] == [1, 2, 3, 4]
        assert recs[0].prev_hash == GENESIS
        assert [r.prev_hash for r in recs[1:]] == [r.hash for r in recs[:-1]]
        got = log.get("a3")
        assert got == recs[2]
        assert got.record["request"] == {"prompt": "question 3"} and got.flagged is False
        assert log.get("nope") is None
        assert [r.id for r in log.records()] == ["a1", "a2", "a3", "a4"]
        assert len(log) == 4
    with AuditLog(log_url) as again:  # reopened: the same chain, extended
        assert again.append(entry(5)).prev_hash == recs[-1].hash
        assert again.verify().ok


def test_record_filters(log_url):
    with AuditLog(log_url) as log:
        log.append(entry(1, tenant="acme", model="m1", flagged=True, score=0.2))
        mid = log.append(entry(2, tenant="beta", model="m1", flagged=False))
        log.append(entry(3, tenant="acme", model="m2", flagged=False))
        log.append({**entry(4, model="m2"), "reliability": None})  # e.g. an abandoned stream
        ids = lambda **kw: [r.id for r in log.records(**kw)]  # noqa: E731
        assert ids(tenant="acme") == ["a1", "a3", "a4"]
        assert ids(model="m2") == ["a3", "a4"]
        assert ids(flagged=True) == ["a1"]
        assert ids(flagged=False) == ["a2", "a3"]  # no reliability record: neither
        assert ids(since=mid.created_at) == ["a2", "a3", "a4"]
        assert ids(until=mid.created_at) == ["a1"]
        assert ids(since="2000-01-01", until="2000-01-02") == []
        assert ids(limit=2) == ["a1", "a2"] and ids(limit=0) == []
        with pytest.raises(ConfigError, match="ISO 8601"):
            log.records(since="yesterday")
        with pytest.raises(ConfigError, match="limit"):
            log.records(limit=-1)


def test_many_records_are_read_in_pages(sqlite_url):
    with AuditLog(sqlite_url) as log:
        for i in range(1203):
            log.append(entry(i))
        assert [r.seq for r in log.records()] == list(range(1, 1204))
        assert len(list(log.records(limit=700))) == 700
        assert log.verify().checked == 1203


def test_duplicate_id_is_an_error_and_the_log_stays_usable(log_url):
    with AuditLog(log_url) as log:
        log.append(entry(1))
        with pytest.raises(AuditError, match="'a1' is already in the audit log"):
            log.append(entry(1))
        assert log.append(entry(2)).seq == 2
        assert log.verify().ok and len(log) == 2


def test_entries_that_are_not_make_entry_dicts_are_refused(sqlite_url):
    with AuditLog(sqlite_url) as log:
        with pytest.raises(AuditError, match="no id"):
            log.append({"model": "m"})
        with pytest.raises(AuditError, match="the log sets these"):
            log.append({**entry(1), "seq": 7})
        with pytest.raises(AuditError, match="dict"):
            log.append("a1")
        assert len(log) == 0


def test_closed_log_says_so(sqlite_url):
    log = AuditLog(sqlite_url)
    log.close()
    with pytest.raises(AuditError, match="closed"):
        log.append(entry(1))


# -- URLs and schema --------------------------------------------------------------------------------
def test_url_forms(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for url, path in (("sqlite:///rel.db", tmp_path / "rel.db"),
                      (f"sqlite:///{tmp_path}/abs.db", tmp_path / "abs.db"),
                      ("plain.db", tmp_path / "plain.db"),
                      (tmp_path / "pathobj.db", tmp_path / "pathobj.db")):
        with AuditLog.open(url) as log:
            log.append(entry(1))
        assert path.exists(), url
        assert raw(f"sqlite:///{path}", "SELECT version FROM audit_schema_version") == [(1,)]
        assert raw(f"sqlite:///{path}", "PRAGMA journal_mode") == [("wal",)]


@pytest.mark.parametrize("url", ["", "mysql://u@h/db", "sqlite://", "sqlite:///", ":memory:",
                                 "sqlite:///:memory:", 42])
def test_bad_urls_are_config_errors(url):
    with pytest.raises(ConfigError, match="sqlite:///"):
        AuditLog(url)


def test_bad_content_is_a_config_error(sqlite_url):
    with pytest.raises(ConfigError, match="'full'.*'hash'"):
        AuditLog(sqlite_url, content="sha1")


def test_unreachable_databases_are_audit_errors(tmp_path):
    with pytest.raises(AuditError, match="does not exist"):
        AuditLog(tmp_path / "no" / "such" / "dir.db")
    from pgserver import _free_port

    with pytest.raises(AuditError):
        AuditLog(f"postgresql://nobody:secret@127.0.0.1:{_free_port()}/nodb")
    try:  # the password is not repeated in the message
        AuditLog(f"postgresql://nobody:secret@127.0.0.1:{_free_port()}/nodb")
    except AuditError as e:
        assert "secret" not in str(e)


def test_a_log_from_a_newer_version_is_refused(log_url):
    AuditLog(log_url).close()
    raw(log_url, "UPDATE audit_schema_version SET version = 99")
    with pytest.raises(AuditError, match="schema version 99.*upgrade"):
        AuditLog(log_url)


# -- tampering ------------------------------------------------------------------------------------
def test_verify_names_an_edited_record(log_url):
    with filled(log_url) as log:
        assert log.verify().ok
        text = raw(log_url, "SELECT record FROM audit_records WHERE seq = 3")[0][0]
        raw(log_url, "UPDATE audit_records SET record = ? WHERE seq = 3",
            (text.replace("answer 3", "answer 3, edited"),))
        rep = log.verify()
        assert not rep.ok and rep.first_bad == "a3" and rep.first_bad_seq == 3
        assert "edited" in rep.reason


def test_verify_names_an_edited_column(log_url):
    with filled(log_url) as log:
        raw(log_url, "UPDATE audit_records SET flagged = 1 WHERE seq = 2")
        rep = log.verify()
        assert (rep.ok, rep.first_bad, rep.first_bad_seq) == (False, "a2", 2)
        assert "flagged" in rep.reason


def test_verify_names_the_record_after_a_deleted_one(log_url):
    with filled(log_url) as log:
        raw(log_url, "DELETE FROM audit_records WHERE seq = 3")
        rep = log.verify()
        assert (rep.ok, rep.first_bad, rep.first_bad_seq) == (False, "a4", 4)
        assert "missing" in rep.reason
        raw(log_url, "DELETE FROM audit_records WHERE seq = 1")  # the first one too
        rep = log.verify()
        assert (rep.ok, rep.first_bad, rep.first_bad_seq) == (False, "a2", 2)


def test_verify_names_reordered_records(log_url):
    with filled(log_url) as log:
        raw(log_url, "UPDATE audit_records SET seq = -2 WHERE seq = 2")
        raw(log_url, "UPDATE audit_records SET seq = 2 WHERE seq = 3")
        raw(log_url, "UPDATE audit_records SET seq = 3 WHERE seq = -2")
        rep = log.verify()
        assert (rep.ok, rep.first_bad, rep.first_bad_seq) == (False, "a3", 2)


def test_a_rewritten_chain_is_caught_by_the_anchor(log_url):
    """Someone who rewrites a record AND every hash after it leaves a consistent chain; the head
    hash kept from an earlier verify is what proves it changed (also for a cut-off end)."""
    with filled(log_url) as log:
        head = log.verify().head
        rows = raw(log_url, "SELECT seq, record, prev_hash FROM audit_records ORDER BY seq")
        prev = rows[1][2]
        from blendin_llm.audit import chain_hash

        for seq, text, _ in rows[1:]:
            if seq == 2:
                text = text.replace("answer 2", "a different answer")
            h = chain_hash(prev, text)
            raw(log_url, "UPDATE audit_records SET record = ?, prev_hash = ?, hash = ? "
                "WHERE seq = ?", (text, prev, "tmp" + str(seq), seq))
            raw(log_url, "UPDATE audit_records SET hash = ? WHERE seq = ?", (h, seq))
            prev = h
        assert log.verify().ok  # the chain alone cannot tell
        rep = log.verify(anchor=head)
        assert not rep.ok and "anchor" in rep.reason
        # truncation: the last record dropped, the head before it still in the chain
        new_head = log.verify().head
        raw(log_url, "DELETE FROM audit_records WHERE seq = 5")
        assert log.verify().ok
        assert not log.verify(anchor=new_head).ok
        assert log.verify(anchor=log.get("a4").hash).ok


# -- concurrency and durability ---------------------------------------------------------------------
def test_concurrent_appends_keep_one_chain(log_url):
    """Threads sharing one AuditLog and threads with their own (separate connections, as two
    server replicas would have) append at once: one linear chain, nothing lost."""
    shared = AuditLog(log_url)
    errors: list = []

    def work(t: int, own: bool) -> None:
        try:
            log = AuditLog(log_url) if own else shared
            for i in range(12):
                log.append(entry(t * 100 + i))
            if own:
                log.close()
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t, t % 2 == 0)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    recs = list(shared.records())
    assert [r.seq for r in recs] == list(range(1, 97))
    assert len({r.id for r in recs}) == 96
    assert all(b.prev_hash == a.hash for a, b in zip(recs, recs[1:]))
    assert shared.verify().ok
    shared.close()


WRITER = textwrap.dedent("""
    import sys
    from blendin_llm.audit import AuditLog
    log = AuditLog(sys.argv[1])
    i = 0
    while True:
        i += 1
        log.append({"id": f"{sys.argv[2]}-{i}", "model": {"name": "m"},
                    "response": {"text": "x" * 200, "finish_reason": "stop"}})
        print(f"{sys.argv[2]}-{i}", flush=True)  # the caller sees the end only now
""")


def test_sigkill_right_after_append_loses_nothing(log_url):
    """A writer killed with SIGKILL in the middle of its appends: every id it had reported (its
    append had returned) is in the log, the chain verifies, and appending goes on after it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get(
        "PYTHONPATH", "")])}
    seen: list[str] = []
    for run in ("w1", "w2"):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, log_url, run], env=env,
                                stdout=subprocess.PIPE, text=True)
        mine = []
        deadline = time.monotonic() + 60
        while len(mine) < 25 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            mine.append(line.strip())
        os.kill(proc.pid, signal.SIGKILL)
        rest, _ = proc.communicate(timeout=30)
        mine += [x for x in rest.split() if x]
        assert proc.returncode == -signal.SIGKILL and len(mine) >= 25
        seen += mine
        with AuditLog(log_url) as log:
            stored = {r.id for r in log.records()}
            assert set(seen) <= stored
            assert log.verify().ok
    with AuditLog(log_url) as log:
        log.append(entry(1))
        assert log.verify().ok


def test_lost_connection_raises_audit_error_and_the_log_recovers(postgres_server):
    url = postgres_server.new_database()
    log = filled(url, 2)
    db = url.rsplit("/", 1)[1]
    raw(url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = ? AND pid <> pg_backend_pid()", (db,))
    with pytest.raises(AuditError, match="nothing was recorded"):
        log.append(entry(3))
    assert log.append(entry(4)).seq == 3  # reconnected: the chain goes on
    assert log.verify().ok and [r.id for r in log.records()] == ["a1", "a2", "a4"]


# -- content, entries, stats ---------------------------------------------------------------------
def test_hash_content_stores_no_request_or_answer_text(log_url):
    with AuditLog(log_url, content="hash") as log:
        e = {**entry(1), "response": {"text": "the secret answer", "finish_reason": "stop",
                                      "tool_calls": [{"name": "f", "arguments": {"x": 1}}]},
             "request": {"messages": [{"role": "user", "content": "a private question"}]},
             "reliability": {"flagged": False, "score": 0.5, "trace": [
                 {"index": 0, "text": "secret", "prob": 0.5}]}}
        rec = log.append(e)
        stored = raw(log_url, "SELECT record FROM audit_records")[0][0]
        assert "secret" not in stored and "private" not in stored
        assert rec.record["content"] == "hash"
        assert rec.record["request"] == {"sha256": hashlib.sha256(
            canonical_json(e["request"]).encode()).hexdigest()}
        assert rec.record["response"]["text_sha256"] == hashlib.sha256(
            b"the secret answer").hexdigest()
        assert rec.record["reliability"]["trace"] == [{"index": 0, "prob": 0.5}]
        assert log.verify().ok


def test_stats_per_day_model_and_tenant(log_url):
    with AuditLog(log_url) as log:
        for i, (tenant, model, flagged, score, rate) in enumerate([
                ("acme", "m1", True, 0.2, 0.4), ("acme", "m1", False, 0.8, 0.0),
                ("acme", "m2", False, 0.6, 0.2), ("beta", "m1", True, 0.4, 0.6)]):
            log.append(entry(i, tenant=tenant, model=model, flagged=flagged, score=score,
                             rate=rate))
        log.append({**entry(9, tenant="beta"), "reliability": None})
        by_tenant = {r["tenant"]: r for r in log.stats(by="tenant")}
        acme, beta = by_tenant["acme"], by_tenant["beta"]
        assert (acme["answers"], acme["flagged"]) == (3, 1)
        assert acme["flagged_share"] == pytest.approx(1 / 3)
        assert acme["score_mean"] == pytest.approx((0.2 + 0.8 + 0.6) / 3)
        assert acme["score_p50"] == pytest.approx(0.6)
        assert acme["intervention_rate_mean"] == pytest.approx(0.2)
        assert (beta["answers"], beta["flagged"], beta["flagged_share"]) == (2, 1, 1.0)
        by_model = {r["model"]: r["answers"] for r in log.stats(by="model")}
        assert by_model == {"m": 1, "m1": 3, "m2": 1}
        days = log.stats(by="day")
        assert len(days) == 1 and days[0]["answers"] == 5
        assert days[0]["day"] == log.get("a0").created_at[:10]
        assert log.stats(by="tenant", tenant="beta", flagged=True)[0]["answers"] == 1
        with pytest.raises(ConfigError, match="day, model, tenant"):
            log.stats(by="week")
        with pytest.raises(ConfigError, match="unknown stats filter"):
            log.stats(by="day", colour="red")


def test_importing_the_module_imports_no_driver_or_web_library():
    code = ("import sys, blendin_llm.audit, blendin_llm.cli; "
            "bad = [m for m in ('psycopg', 'fastapi', 'matplotlib') if m in sys.modules]; "
            "assert not bad, bad")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get(
        "PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


# -- BlendedLLM(audit=...) --------------------------------------------------------------------------
@pytest.fixture
def audited(base_model, guide_model, tok):
    def make(audit, **cfg):
        base = ModelSpec(model=base_model, tokenizer=tok, prompt_format="raw", name="base")
        guide = ModelSpec(model=guide_model, tokenizer=tok, prompt_format="raw", name="guide")
        return BlendedLLM(base, [guide], BlendConfig(**cfg), audit=audit)

    return make


def test_blended_llm_records_every_answer(audited, sqlite_url):
    llm = audited(sqlite_url)
    log = llm.audit
    r1 = llm.generate("hello there", max_new_tokens=6, gamma=0.9)
    events = list(llm.stream([{"role": "user", "content": "hi"}], max_new_tokens=5))
    r2 = events[-1].result
    r3 = asyncio.run(llm.agenerate("the quick", max_new_tokens=4))

    async def astream_all():
        return [e async for e in llm.astream("naive", max_new_tokens=4)]

    r4 = asyncio.run(astream_all())[-1].result
    recs = list(log.records())
    assert [r.id for r in recs] == [r1.id, r2.id, r3.id, r4.id]
    assert len({r1.id, r2.id, r3.id, r4.id}) == 4 and r1.id.startswith("cmpl-")
    one = recs[0].record
    assert one["request"]["prompt"] == "hello there"
    assert one["request"]["params"]["params"]["max_new_tokens"] == 6
    assert one["request"]["params"]["overrides"] == {"gamma": 0.9}
    assert one["config"]["gamma"] == 0.9  # the effective config of the call
    assert one["config_hash"] == hashlib.sha256(canonical_json(one["config"]).encode()).hexdigest()
    assert recs[1].config_hash != recs[0].config_hash  # gamma 0.4 there
    assert one["model"] == {"name": "base+guide",
                            "base": {"name": "base", "fingerprint": fingerprint(llm.base)},
                            "guides": [{"name": "guide",
                                        "fingerprint": fingerprint(llm.guides[0])}]}
    assert one["response"]["text"] == r1.text
    assert one["response"]["finish_reason"] == r1.finish_reason
    assert one["response"]["usage"] == r1.usage.model_dump()
    assert one["reliability"] == json.loads(r1.reliability.model_dump_json())
    assert one["latency_s"] >= r1.elapsed_s
    assert recs[1].record["request"]["messages"] == [{"role": "user", "content": "hi"}]
    assert recs[0].flagged == r1.reliability.flagged and recs[0].score == r1.reliability.score
    assert log.verify().ok


def test_the_record_is_committed_before_the_final_event(audited, sqlite_url):
    llm = audited(sqlite_url)
    other = AuditLog(sqlite_url)  # another connection: sees only what is committed
    for event in llm.stream("hello", max_new_tokens=5):
        if event.done:
            assert other.get(event.result.id) is not None
        else:
            assert len(other) == 0

    async def read():
        async for event in llm.astream("hello", max_new_tokens=5):
            if event.done:
                assert other.get(event.result.id) is not None

    asyncio.run(read())
    assert len(other) == 2


def test_an_abandoned_stream_is_recorded_as_abandoned(audited, sqlite_url):
    llm = audited(sqlite_url)
    stream = llm.stream("hello there", max_new_tokens=20, ignore_eos=True)
    got = [next(stream) for _ in range(3)]
    stream.close()
    (rec,) = list(llm.audit.records())
    assert rec.record["response"]["finish_reason"] == "abandoned"
    assert rec.record["response"]["text"] == "".join(e.text for e in got)
    assert rec.record["response"]["usage"] == {"completion_tokens": 3}
    assert rec.record["reliability"] is None and rec.flagged is None

    async def leave_early():
        async for event in llm.astream("hello there", max_new_tokens=20, ignore_eos=True):
            break

    asyncio.run(leave_early())
    deadline = time.monotonic() + 20  # the worker thread notices at its next token
    while len(llm.audit) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    reasons = [r.record["response"]["finish_reason"] for r in llm.audit.records()]
    assert reasons == ["abandoned", "abandoned"]
    assert llm.generate("hello", max_new_tokens=3).finish_reason in ("stop", "length")
    assert len(llm.audit) == 3 and llm.audit.verify().ok


def test_an_answer_whose_record_fails_is_not_handed_out(audited, postgres_server):
    url = postgres_server.new_database()
    llm = audited(AuditLog(url))
    db = url.rsplit("/", 1)[1]
    raw(url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = ? AND pid <> pg_backend_pid()", (db,))
    events = []
    with pytest.raises(AuditError):
        for e in llm.stream("hello", max_new_tokens=4):
            events.append(e)
    assert events and not any(e.done for e in events)  # the end never reached the caller
    res = llm.generate("hello", max_new_tokens=4)  # the instance and its log stay usable
    assert [r.id for r in llm.audit.records()][-1] == res.id and llm.audit.verify().ok


def test_blended_llm_audit_argument_is_checked(audited, tmp_path):
    with pytest.raises(ConfigError):
        audited(42)
    with pytest.raises(ConfigError, match="scheme"):
        audited("mysql://u@h/db")
    with pytest.raises(AuditError):
        audited(tmp_path / "missing" / "a.db")


def test_make_entry_checks_its_arguments(audited, sqlite_url):
    llm = audited(sqlite_url)
    res = llm.generate("hello", max_new_tokens=3)
    with pytest.raises(ConfigError, match="id"):
        make_entry(id="", llm=llm, config=None, request={}, result=res, latency_s=1.0)
    with pytest.raises(ConfigError, match="result"):
        make_entry(id="x", llm=llm, config=None, request={}, result="text", latency_s=1.0)
    with pytest.raises(ConfigError, match="content"):
        make_entry(id="x", llm=llm, config=None, request={}, result=res, latency_s=1.0,
                   content="none")
    e = make_entry(id="x", llm=llm, config=None, request={"prompt": "hello"}, result=res,
                   latency_s=1.0, tenant="t", user="u", content="hash")
    assert e["config"]["gamma"] == 0.4 and "text" not in e["response"]
    assert (e["tenant"], e["user"], e["content"]) == ("t", "u", "hash")


# -- the command line -------------------------------------------------------------------------------
runner = CliRunner()


def test_cli_verify_list_show_export_stats(sqlite_url, tmp_path):
    with AuditLog(sqlite_url) as log:
        for i in range(3):
            log.append(entry(i, tenant="acme" if i else "beta", flagged=i == 2, score=0.3 * i))
        head = log.verify().head
    r = runner.invoke(app, ["audit", "verify", "--audit", sqlite_url])
    assert r.exit_code == 0 and "3 record(s), chain intact" in r.output and head in r.output
    r = runner.invoke(app, ["audit", "list", "--audit", sqlite_url, "--tenant", "acme"])
    assert r.exit_code == 0 and "a1" in r.output and "a2" in r.output and "a0" not in r.output
    r = runner.invoke(app, ["audit", "show", "a1", "--audit", sqlite_url])
    assert r.exit_code == 0 and json.loads(r.stdout)["record"]["id"] == "a1"
    r = runner.invoke(app, ["audit", "show", "zz", "--audit", sqlite_url])
    assert r.exit_code == 1 and "no record with id 'zz'" in r.output
    r = runner.invoke(app, ["audit", "export", "--audit", sqlite_url])
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert r.exit_code == 0 and [x["id"] for x in lines] == ["a0", "a1", "a2"]
    assert lines[1]["record"]["response"]["text"] == "answer 1"
    out = tmp_path / "audit.csv"
    r = runner.invoke(app, ["audit", "export", "--audit", sqlite_url, "--format", "csv",
                            "-o", str(out), "--flagged"])
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert r.exit_code == 0 and [x["id"] for x in rows] == ["a2"]
    assert json.loads(rows[0]["record"])["seq"] == 3 and rows[0]["flagged"] == "True"
    r = runner.invoke(app, ["audit", "export", "--audit", sqlite_url, "--format", "xml"])
    assert r.exit_code == 2 and "jsonl or csv" in r.output
    r = runner.invoke(app, ["audit", "stats", "--audit", sqlite_url, "--by", "tenant", "--json"])
    stats = {x["tenant"]: x for x in json.loads(r.stdout)}
    assert stats["acme"]["answers"] == 2 and stats["acme"]["flagged"] == 1
    r = runner.invoke(app, ["audit", "stats", "--audit", sqlite_url, "--by", "model"])
    assert r.exit_code == 0 and "answers" in r.output and "m" in r.output
    r = runner.invoke(app, ["audit", "stats", "--audit", sqlite_url, "--by", "week"])
    assert r.exit_code == 2 and "day, model, tenant" in r.output
    # tampered: exit 1, naming the record
    raw(sqlite_url, "UPDATE audit_records SET score = 0.99 WHERE seq = 2")
    r = runner.invoke(app, ["audit", "verify", "--audit", sqlite_url])
    assert r.exit_code == 1 and "record 2 (id a1)" in r.output and "score" in r.output
    r = runner.invoke(app, ["audit", "verify", "--audit", "mysql://x"])
    assert r.exit_code == 2 and "scheme" in r.output


def test_cli_reads_the_url_from_the_environment(sqlite_url, monkeypatch):
    filled(sqlite_url, 2).close()
    monkeypatch.setenv("BLENDIN_AUDIT", sqlite_url)
    r = runner.invoke(app, ["audit", "verify"])
    assert r.exit_code == 0 and "2 record(s)" in r.output


def test_framework_faces_over_an_audited_llm_record_their_answers(audited, sqlite_url):
    pytest.importorskip("langchain_core")
    pytest.importorskip("llama_index.core")
    llm = audited(sqlite_url)
    msg = llm.as_langchain(max_tokens=4).invoke("hello there")
    chunks = list(llm.as_langchain(max_tokens=4).stream("hello"))
    resp = llm.as_llama_index(max_new_tokens=4).complete("hello there")
    ids = [r.id for r in llm.audit.records()]
    assert len(ids) == 3 and ids[0] == msg.response_metadata["id"]
    assert ids[1] == [c for c in chunks if c.response_metadata.get("id")][-1].response_metadata["id"]
    assert ids[2] == resp.raw["id"]


def test_generate_batch_records_every_answer(audited, sqlite_url):
    llm = audited(sqlite_url)
    prompts = ["hello there", "the quick", "naive cafe"]
    results = llm.generate_batch(prompts, max_new_tokens=5)
    recs = {r.id: r for r in llm.audit.records()}
    assert set(recs) == {r.id for r in results}
    for p, res in zip(prompts, results):
        assert recs[res.id].record["request"]["prompt"] == p
        assert recs[res.id].record["response"]["text"] == res.text
    assert llm.audit.verify().ok


def test_a_cancelled_astream_is_recorded_as_abandoned(audited, sqlite_url):
    llm = audited(sqlite_url)

    async def read_then_cancel():
        seen = asyncio.Event()

        async def reader():
            async for _ in llm.astream("hello there", max_new_tokens=50, ignore_eos=True):
                seen.set()

        task = asyncio.create_task(reader())
        await seen.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(read_then_cancel())
    (rec,) = list(llm.audit.records())
    assert rec.record["response"]["finish_reason"] == "abandoned"
    assert rec.record["response"]["usage"]["completion_tokens"] >= 1
