"""The audit log: one durable, tamper-evident record per answer.

Compliance needs to show, later, which models and settings produced an answer, what its reliability
signals were, and that the record was not altered since. ``AuditLog`` keeps one record per answer in
SQLite (embedded, the default) or PostgreSQL, as a **hash chain**: record N stores
``hash = SHA-256(prev_hash + "\\n" + canonical JSON of the record)`` with ``prev_hash`` the hash of
record N-1 (64 zeros for the first), so editing, deleting or reordering any record breaks the chain
at that record, and ``verify`` names it. Dropping records from the *end* leaves a shorter chain that
is still consistent: keep the head hash that ``verify`` reports somewhere else (a ticket, a
monitoring system) and pass it back as ``verify(anchor=...)`` to prove nothing was cut off.

Durability: ``append`` returns only after the record is committed, so a caller that hands the
answer's end to its client after ``append`` never shows an answer whose record can be lost.
SQLite runs in WAL mode with ``synchronous=FULL`` (the WAL is fsynced at every commit: a commit
survives a killed process and a power loss); PostgreSQL runs one transaction per append with
``synchronous_commit=on``.

Appends are serialised so the chain stays linear: a lock within the process, and in the database
``BEGIN IMMEDIATE`` (SQLite's write lock) or a transaction-scoped advisory lock (PostgreSQL), with
unique constraints on ``seq``, ``prev_hash`` and ``hash`` as the last guard, so two processes or
two server replicas writing to one database cannot fork the chain.

Importing this module imports neither psycopg nor any web or plotting library; psycopg is imported
when a ``postgresql://`` URL is opened.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as _dt
import hashlib
import json
import math
import os
import sqlite3
import threading
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .config import BlendConfig
from .errors import AuditError, ConfigError

SCHEMA_VERSION = 1
GENESIS = "0" * 64
"""The ``prev_hash`` of the first record."""
CONTENT_MODES = ("full", "hash")
STATS_BY = ("day", "model", "tenant")
_RESERVED = ("seq", "created_at", "hash", "prev_hash")
_COLUMNS = (
    "seq",
    "id",
    "created_at",
    "tenant",
    "user_name",
    "model",
    "config_hash",
    "flagged",
    "score",
    "record",
    "prev_hash",
    "hash",
)
_PG_LOCK_KEY = 0x626C656E64696E  # "blendin": the advisory lock that serialises appends
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS audit_schema_version (version INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS audit_records ("
    " seq BIGINT PRIMARY KEY,"
    " id TEXT NOT NULL UNIQUE,"
    " created_at TEXT NOT NULL,"
    " tenant TEXT,"
    " user_name TEXT,"
    " model TEXT NOT NULL,"
    " config_hash TEXT,"
    " flagged INTEGER,"
    " score DOUBLE PRECISION,"
    " record TEXT NOT NULL,"
    " prev_hash TEXT NOT NULL UNIQUE,"
    " hash TEXT NOT NULL UNIQUE)",
    "CREATE INDEX IF NOT EXISTS audit_records_created ON audit_records (created_at)",
    "CREATE INDEX IF NOT EXISTS audit_records_tenant ON audit_records (tenant)",
    "CREATE INDEX IF NOT EXISTS audit_records_model ON audit_records (model)",
)
# version -> the statements that bring a log of version-1 up to it (none yet)
_MIGRATIONS: dict[int, tuple[str, ...]] = {}


# -- canonical JSON and hashing -------------------------------------------------------------------
def _finite(obj: Any) -> Any:
    """``obj`` with non-finite floats as None (JSON has no NaN), tuples as lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def canonical_json(obj: Any) -> str:
    """The one JSON text of ``obj`` that is hashed: sorted keys, no spaces, UTF-8 kept, non-finite
    floats as null, anything else JSON lacks as its ``str``."""
    return json.dumps(
        _finite(obj),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
        default=str,
    )


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def chain_hash(prev_hash: str, record_json: str) -> str:
    """The hash a record carries: over the previous record's hash and its own canonical JSON."""
    return sha256_hex(prev_hash + "\n" + record_json)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _time_bound(value: Any, what: str) -> str | None:
    """A ``since``/``until`` bound as the stored time format (UTC ISO 8601). Accepts a datetime
    (naive = UTC), a date, or an ISO string ("2026-11-23", "2026-11-23T10:00", "...+02:00")."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = _dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError(
                f"{what} must be a date or time in ISO 8601 (e.g. 2026-11-23 or "
                f"2026-11-23T10:00:00Z), got {value!r}"
            ) from None
    if isinstance(value, _dt.date) and not isinstance(value, _dt.datetime):
        value = _dt.datetime(value.year, value.month, value.day)
    if not isinstance(value, _dt.datetime):
        raise ConfigError(
            f"{what} must be a datetime, a date or an ISO 8601 string, got {type(value).__name__}"
        )
    if value.tzinfo is None:
        value = value.replace(tzinfo=_dt.timezone.utc)
    return value.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# -- records ------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class AuditRecord:
    """One stored answer. ``record`` is the whole record (``make_entry``'s dict plus ``seq`` and
    ``created_at``); the other fields are the columns the log filters on, copied from it."""

    seq: int
    id: str
    created_at: str
    tenant: str | None
    user: str | None
    model: str
    config_hash: str | None
    flagged: bool | None
    score: float | None
    hash: str
    prev_hash: str
    record: dict

    def to_dict(self) -> dict:
        """All fields as a JSON-ready dict (one line of ``blendin audit export``)."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class VerifyReport:
    """What ``AuditLog.verify`` found. ``ok``: the chain is intact; ``checked``: records read;
    ``first_bad``/``first_bad_seq``: the id and position of the first bad record (None when ok);
    ``reason``: what is wrong with it; ``head``/``head_seq``: the last record's hash and seq (keep
    them elsewhere and pass ``anchor=head`` later to detect records cut off the end)."""

    ok: bool
    checked: int
    first_bad: str | None = None
    first_bad_seq: int | None = None
    reason: str | None = None
    head: str | None = None
    head_seq: int | None = None


def _columns(record: dict) -> dict:
    """The filterable columns of a record, derived from it (so verify can check they match)."""
    rel = record.get("reliability") or {}
    model = record.get("model") or {}
    flagged = rel.get("flagged")
    score = rel.get("score")
    return {
        "tenant": record.get("tenant"),
        "user_name": record.get("user"),
        "model": model.get("name") if isinstance(model, dict) else str(model),
        "config_hash": record.get("config_hash"),
        "flagged": None if flagged is None else int(bool(flagged)),
        "score": None if score is None else float(score),
    }


def _to_record(row: tuple) -> AuditRecord:
    d = dict(zip(_COLUMNS, row))
    return AuditRecord(
        seq=int(d["seq"]),
        id=d["id"],
        created_at=d["created_at"],
        tenant=d["tenant"],
        user=d["user_name"],
        model=d["model"],
        config_hash=d["config_hash"],
        flagged=None if d["flagged"] is None else bool(d["flagged"]),
        score=d["score"],
        hash=d["hash"],
        prev_hash=d["prev_hash"],
        record=json.loads(d["record"]),
    )


# -- entries ------------------------------------------------------------------------------------
def _check_content(content: Any) -> str:
    if content not in CONTENT_MODES:
        raise ConfigError(
            f"content must be 'full' (store requests and answers) or 'hash' (store "
            f"only their SHA-256), got {content!r}"
        )
    return content


def redact(entry: dict) -> dict:
    """``entry`` with the request, the answer's text and tool calls, and the trace's token texts
    replaced by their SHA-256 (``content="hash"``); an entry already redacted is returned as is."""
    if entry.get("content") == "hash":
        return entry
    out = dict(entry)
    out["content"] = "hash"
    if "request" in out:
        out["request"] = {"sha256": sha256_hex(canonical_json(out["request"]))}
    resp = dict(out.get("response") or {})
    for key in ("text", "tool_calls", "invalid_tool_calls"):
        if key in resp:
            value = resp.pop(key)
            resp[key + "_sha256"] = sha256_hex(
                value if isinstance(value, str) else canonical_json(value)
            )
    out["response"] = resp
    rel = out.get("reliability")
    if isinstance(rel, dict) and rel.get("trace"):
        out["reliability"] = {
            **rel,
            "trace": [{k: v for k, v in t.items() if k != "text"} for t in rel["trace"]],
        }
    return out


def _model_block(llm: Any) -> dict:
    from .score_model import fingerprint  # the same fingerprints a profile is checked with

    return {
        "name": llm.name,
        "base": {"name": llm.base.name, "fingerprint": fingerprint(llm.base)},
        "guides": [{"name": g.name, "fingerprint": fingerprint(g)} for g in llm.guides],
    }


def _config_dict(config: Any) -> dict:
    if config is None:
        return {}
    if isinstance(config, BlendConfig):
        return json.loads(canonical_json(config.to_dict()))
    if isinstance(config, Mapping):
        return json.loads(canonical_json(config))
    raise ConfigError(f"config must be a BlendConfig or its dict, got {type(config).__name__}")


def make_entry(
    *,
    id: str,
    llm: Any,
    config: Any,
    request: dict,
    result: Any,
    latency_s: float,
    tenant: str | None = None,
    user: str | None = None,
    content: str = "full",
) -> dict:
    """The audit entry of one answer, ready for ``AuditLog.append``.

    Args:
        id: the answer's id, as its client saw it (e.g. ``result.id`` or a response id).
        llm: the ``BlendedLLM`` that answered: its name, and the names and weight fingerprints of
            its base and guides (``calibrated.fingerprint``, computed once per model).
        config: the effective ``BlendConfig`` of the call (per-call overrides applied), stored
            with ``config_hash``, the SHA-256 of its canonical JSON.
        request: ``{"messages": [...]}`` or ``{"prompt": "..."}``, with ``"params": {...}``.
        result: the ``BlendResult``, or a dict with at least ``text`` and ``finish_reason`` for an
            answer that did not finish (``reliability`` then None).
        latency_s: seconds from the request to the end of the answer.
        tenant, user: who asked (an API key's tenant; the request's ``user``).
        content: "full" stores request and answer; "hash" stores only their SHA-256.

    Returns:
        A JSON-ready dict: id, tenant, user, model, config, config_hash, content, request,
        response (text, tool calls, finish reason, stop sequence, usage, elapsed_s), reliability
        (the whole record) and latency_s.
    """
    _check_content(content)
    if not isinstance(id, str) or not id:
        raise ConfigError(f"id must be a non-empty string (the answer's id), got {id!r}")
    if not isinstance(request, Mapping):
        raise ConfigError("request must be a dict: {'messages' or 'prompt': ..., 'params': {...}}")
    if hasattr(result, "model_dump"):
        data = result.model_dump(mode="json", exclude={"token_ids", "logprobs", "id"})
    elif isinstance(result, Mapping) and "text" in result and "finish_reason" in result:
        data = dict(result)
    else:
        raise ConfigError("result must be a BlendResult or a dict with text and finish_reason")
    cfg = _config_dict(config if config is not None else getattr(llm, "config", None))
    reliability = data.pop("reliability", None)
    entry = {
        "id": id,
        "tenant": tenant,
        "user": user,
        "model": _model_block(llm),
        "config": cfg,
        "config_hash": sha256_hex(canonical_json(cfg)),
        "content": "full",
        "request": dict(request),
        "response": data,
        "reliability": reliability,
        "latency_s": float(latency_s),
    }
    entry = json.loads(canonical_json(entry))
    return redact(entry) if content == "hash" else entry


# -- stores ---------------------------------------------------------------------------------------
class _Store:
    """The database under an AuditLog: connect, run SQL written with ``?`` placeholders."""

    kind = ""

    def __init__(self, target: str) -> None:
        self.target = target
        self.conn: Any = None

    def connect(self) -> None:
        raise NotImplementedError

    def sql(self, text: str) -> str:
        return text

    def rows(self, text: str, args: tuple = ()) -> list[tuple]:
        cur = self.conn.execute(self.sql(text), args)
        return list(cur.fetchall())

    def run(self, text: str, args: tuple = ()) -> None:
        self.conn.execute(self.sql(text), args)

    def begin(self) -> None:
        raise NotImplementedError

    def commit(self) -> None:
        raise NotImplementedError

    def rollback(self) -> None:
        raise NotImplementedError

    def lock_chain(self) -> None:
        """Hold the chain's lock until the transaction ends."""
        raise NotImplementedError

    def is_unique_violation(self, exc: BaseException) -> str | None:
        """The column whose UNIQUE constraint ``exc`` violates, or None."""
        raise NotImplementedError

    def is_connection_error(self, exc: BaseException) -> bool:
        raise NotImplementedError

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            finally:
                self.conn = None


class _SQLite(_Store):
    kind = "sqlite"

    def connect(self) -> None:
        path = Path(self.target)
        if not path.parent.is_dir():
            raise AuditError(
                f"cannot open the audit log {str(path)!r}: the folder "
                f"{str(path.parent)!r} does not exist; create it or pass another path"
            )
        try:
            # autocommit mode: transactions are the explicit BEGIN IMMEDIATE ... COMMIT below
            conn = sqlite3.connect(
                str(path), isolation_level=None, check_same_thread=False, timeout=30.0
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")  # fsync the WAL at every commit
            conn.execute("PRAGMA busy_timeout=30000")
        except sqlite3.Error as e:
            raise AuditError(
                f"cannot open the audit log {str(path)!r} as SQLite ({e}); pass a "
                "writable path to a SQLite file"
            ) from None
        self.conn = conn

    def begin(self) -> None:
        self.run("BEGIN IMMEDIATE")  # the database's write lock: appends of other processes wait

    def commit(self) -> None:
        self.run("COMMIT")

    def rollback(self) -> None:
        try:
            self.run("ROLLBACK")
        except sqlite3.Error:
            pass

    def lock_chain(self) -> None:
        pass  # BEGIN IMMEDIATE already holds the write lock

    def is_unique_violation(self, exc: BaseException) -> str | None:
        if isinstance(exc, sqlite3.IntegrityError) and "UNIQUE" in str(exc):
            return str(exc).rsplit(".", 1)[-1].strip()
        return None

    def is_connection_error(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.Error) and not isinstance(exc, sqlite3.IntegrityError)


class _Postgres(_Store):
    kind = "postgresql"

    def connect(self) -> None:
        try:
            import psycopg
        except ImportError:
            raise AuditError(
                "a postgresql:// audit log needs psycopg 3: pip install 'blendin-llm[postgres]'"
            ) from None
        try:
            conn = psycopg.connect(self.target, autocommit=True, connect_timeout=10)
            conn.execute("SET synchronous_commit TO on")  # a commit is on disk when it returns
        except psycopg.Error as e:
            raise AuditError(
                f"cannot reach the PostgreSQL audit log at {_safe_url(self.target)} "
                f"({' '.join(str(e).split())}); check that the server runs and the "
                "URL, user and database are right"
            ) from None
        self.conn = conn

    def sql(self, text: str) -> str:
        return text.replace("?", "%s")

    def begin(self) -> None:
        self.run("BEGIN")

    def commit(self) -> None:
        self.run("COMMIT")

    def rollback(self) -> None:
        try:
            self.run("ROLLBACK")
        except Exception:
            pass

    def lock_chain(self) -> None:
        # held until the transaction ends: other processes' appends wait here, so the tail read
        # next is the tail this append extends
        self.run("SELECT pg_advisory_xact_lock(?)", (_PG_LOCK_KEY,))

    def is_unique_violation(self, exc: BaseException) -> str | None:
        import psycopg

        if isinstance(exc, psycopg.errors.UniqueViolation):
            diag = getattr(exc, "diag", None)
            name = (getattr(diag, "constraint_name", None) or "") if diag else ""
            # audit_records_id_key, audit_records_pkey (seq), audit_records_prev_hash_key, ...
            if name.endswith("_id_key"):
                return "id"
            return "seq" if name.endswith("pkey") else name
        return None

    def is_connection_error(self, exc: BaseException) -> bool:
        import psycopg

        return isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError))


def _safe_url(url: str) -> str:
    """``url`` without its password."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
        if parts.password:
            host = parts.hostname or ""
            netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
            return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        pass
    return url


def _parse_url(url: Any) -> _Store:
    """``sqlite:///rel.db`` / ``sqlite:////abs.db`` (SQLAlchemy's rule: the path follows the
    third slash), a plain filesystem path (SQLite), or ``postgresql://`` / ``postgres://``."""
    if isinstance(url, os.PathLike):
        url = os.fspath(url)
    hint = (
        "pass 'sqlite:///relative/path.db', 'sqlite:////absolute/path.db', a plain file path, "
        "or 'postgresql://user@host:port/dbname'"
    )
    if not isinstance(url, str) or not url.strip():
        raise ConfigError(f"the audit log URL must be a non-empty string; {hint}, got {url!r}")
    url = url.strip()
    low = url.lower()
    if low.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
        if low.startswith("postgresql+psycopg://"):
            url = "postgresql://" + url[len("postgresql+psycopg://") :]
        return _Postgres(url)
    if low.startswith("sqlite:"):
        if not low.startswith("sqlite:///") or url[len("sqlite:///") :] in ("", ":memory:"):
            raise ConfigError(
                f"{url!r} names no SQLite file (an audit log must be durable: no "
                f"in-memory database); {hint}"
            )
        return _SQLite(url[len("sqlite:///") :])
    if "://" in url:
        scheme = url.split("://", 1)[0]
        raise ConfigError(f"unsupported audit log scheme {scheme!r}; {hint}")
    if url == ":memory:":
        raise ConfigError(f"an audit log must be durable: no in-memory database; {hint}")
    return _SQLite(url)


# -- the log ------------------------------------------------------------------------------------
class AuditLog:
    """An append-only, hash-chained, durable log of answers (see the module's docstring).

    Thread-safe: one instance may be shared by every request of a server. A lost database
    connection raises AuditError and is opened again on the next call.

    Args:
        url: ``"sqlite:///relative.db"``, ``"sqlite:////absolute.db"``, a plain file path (SQLite),
            or ``"postgresql://user@host:port/db"``.
        content: "full" stores requests and answers; "hash" stores only their SHA-256 (entries
            given in full are redacted before they are stored).

    Raises:
        ConfigError: a URL of no supported form, or a bad ``content``.
        AuditError: the database cannot be reached or opened, or it was written by a newer
            version of blendin-llm.
    """

    def __init__(self, url: str, *, content: str = "full") -> None:
        self.content = _check_content(content)
        self._store = _parse_url(url)
        self.url = _safe_url(url if isinstance(url, str) else os.fspath(url))
        self._lock = threading.RLock()
        self._closed = False
        with self._lock:
            self._store.connect()
            try:
                self._migrate()
            except BaseException:
                self._store.close()
                raise

    @classmethod
    def open(cls, url: str, *, content: str = "full") -> AuditLog:
        """Open (creating or migrating its schema) the log at ``url``; the same as
        ``AuditLog(url, content=content)``.

        Args:
            url: see the class.
            content: "full" or "hash".

        Returns:
            The open ``AuditLog`` (a context manager: ``with AuditLog.open(url) as log``).
        """
        return cls(url, content=content)

    def __repr__(self) -> str:
        return f"AuditLog({self.url!r}, content={self.content!r})"

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Close the database connection; later calls raise AuditError."""
        with self._lock:
            self._closed = True
            self._store.close()

    # -- plumbing ------------------------------------------------------------------------------
    def _ready(self) -> _Store:
        if self._closed:
            raise AuditError("this audit log is closed; open it again with AuditLog.open(url)")
        if self._store.conn is None:  # lost earlier: reconnect
            self._store.connect()
        return self._store

    def _failed(self, exc: BaseException, doing: str) -> AuditError:
        """An AuditError for a database failure; a broken connection is dropped (reopened on the
        next call)."""
        store = self._store
        if store.is_connection_error(exc):
            try:
                store.close()
            except Exception:
                pass
        return AuditError(
            f"the audit log {self.url!r} failed while {doing} "
            f"({type(exc).__name__}: {' '.join(str(exc).split())}); nothing was "
            "recorded by this call; check the database and retry"
        )

    def _migrate(self) -> None:
        s = self._store
        try:
            s.begin()
            s.lock_chain()  # two processes opening a new log at once create it once
            for stmt in _SCHEMA:
                s.run(stmt)
            rows = s.rows("SELECT version FROM audit_schema_version")
            if not rows:
                s.run("INSERT INTO audit_schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
                have = SCHEMA_VERSION
            else:
                have = int(rows[0][0])
            if have > SCHEMA_VERSION:
                raise AuditError(
                    f"the audit log {self.url!r} has schema version {have}, newer "
                    f"than this blendin-llm reads ({SCHEMA_VERSION}); upgrade "
                    "blendin-llm"
                )
            for v in range(have + 1, SCHEMA_VERSION + 1):
                for stmt in _MIGRATIONS.get(v, ()):
                    s.run(stmt)
            if have < SCHEMA_VERSION:
                s.run("UPDATE audit_schema_version SET version = ?", (SCHEMA_VERSION,))
            s.commit()
        except AuditError:
            s.rollback()
            raise
        except Exception as e:
            s.rollback()
            raise self._failed(e, "creating its schema") from None

    # -- writing -------------------------------------------------------------------------------
    def append(self, entry: dict) -> AuditRecord:
        """Append one answer's entry (``make_entry``) to the chain; returns after the record is
        committed durably. Thread-safe; concurrent appends, also from other processes sharing the
        database, form one linear chain.

        Args:
            entry: the dict of ``make_entry``; it must not carry seq, created_at, hash or
                prev_hash (the log sets them). With ``content="hash"`` it is redacted first.

        Returns:
            The stored ``AuditRecord``.

        Raises:
            AuditError: the id is already in the log, or the database failed (nothing was
                recorded; the log stays usable).
        """
        if not isinstance(entry, Mapping):
            raise AuditError(
                f"an audit entry is a dict from make_entry(), got {type(entry).__name__}"
            )
        entry_id = entry.get("id")
        if not isinstance(entry_id, str) or not entry_id:
            raise AuditError("the audit entry has no id; build it with make_entry(id=...)")
        clash = [k for k in _RESERVED if k in entry]
        if clash:
            raise AuditError(
                f"the audit entry carries {clash}: the log sets these; pass the dict "
                "from make_entry()"
            )
        if not isinstance(entry.get("model"), (dict, str)):
            raise AuditError("the audit entry has no model; build it with make_entry()")
        body = redact(dict(entry)) if self.content == "hash" else dict(entry)
        for attempt in range(5):
            with self._lock:
                store = self._ready()
                try:
                    store.begin()
                    store.lock_chain()
                    if store.rows("SELECT 1 FROM audit_records WHERE id = ?", (entry_id,)):
                        raise AuditError(
                            f"an answer with id {entry_id!r} is already in the audit "
                            "log; every answer needs its own id"
                        )
                    tail = store.rows(
                        "SELECT seq, hash FROM audit_records ORDER BY seq DESC LIMIT 1"
                    )
                    seq, prev = (int(tail[0][0]) + 1, tail[0][1]) if tail else (1, GENESIS)
                    record = {**body, "seq": seq, "created_at": _now()}
                    text = canonical_json(record)
                    digest = chain_hash(prev, text)
                    cols = _columns(record)
                    store.run(
                        "INSERT INTO audit_records (seq, id, created_at, tenant, user_name, "
                        "model, config_hash, flagged, score, record, prev_hash, hash) VALUES "
                        "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            seq,
                            entry_id,
                            record["created_at"],
                            cols["tenant"],
                            cols["user_name"],
                            cols["model"],
                            cols["config_hash"],
                            cols["flagged"],
                            cols["score"],
                            text,
                            prev,
                            digest,
                        ),
                    )
                    store.commit()
                except AuditError:
                    store.rollback()
                    raise
                except BaseException as e:  # also KeyboardInterrupt: leave no open transaction
                    store.rollback()
                    if not isinstance(e, Exception):
                        raise
                    which = store.is_unique_violation(e)
                    if which == "id":
                        raise AuditError(
                            f"an answer with id {entry_id!r} is already in the "
                            "audit log; every answer needs its own id"
                        ) from None
                    if which is not None and attempt < 4:
                        time.sleep(0.01 * (attempt + 1))  # another writer took this seq: retry
                        continue
                    raise self._failed(e, f"appending {entry_id!r}") from None
                return AuditRecord(
                    seq=seq,
                    id=entry_id,
                    created_at=record["created_at"],
                    tenant=cols["tenant"],
                    user=cols["user_name"],
                    model=cols["model"],
                    config_hash=cols["config_hash"],
                    flagged=None if cols["flagged"] is None else bool(cols["flagged"]),
                    score=cols["score"],
                    hash=digest,
                    prev_hash=prev,
                    record=json.loads(text),
                )
        raise AssertionError("unreachable")

    # -- reading -------------------------------------------------------------------------------
    def _query(self, sql: str, args: tuple, doing: str) -> list[tuple]:
        with self._lock:
            store = self._ready()
            try:
                return store.rows(sql, args)
            except Exception as e:
                raise self._failed(e, doing) from None

    def get(self, id: str) -> AuditRecord | None:
        """One answer's record.

        Args:
            id: the answer's id (``BlendResult.id``, or the response id a server gave).

        Returns:
            Its ``AuditRecord``, or None when the log has no such id.
        """
        rows = self._query(
            f"SELECT {', '.join(_COLUMNS)} FROM audit_records WHERE id = ?",
            (id,),
            f"reading {id!r}",
        )
        return _to_record(rows[0]) if rows else None

    def records(
        self,
        *,
        since: Any = None,
        until: Any = None,
        tenant: str | None = None,
        model: str | None = None,
        flagged: bool | None = None,
        limit: int | None = None,
    ) -> Iterator[AuditRecord]:
        """The records in chain order, filtered.

        Args:
            since, until: time range of ``created_at`` (UTC), ``since`` included, ``until``
                excluded: a datetime (naive = UTC), a date, or an ISO 8601 string.
            tenant, model: exact match (``model`` is the blend's name, ``BlendedLLM.name``).
            flagged: True = flagged answers only, False = unflagged only (answers without a
                reliability record, e.g. abandoned streams, match neither).
            limit: at most this many records.

        Returns:
            An iterator, read from the database in pages (any size of log).
        """
        where, args = self._where(since, until, tenant, model, flagged)
        if limit is not None and (
            not isinstance(limit, int) or isinstance(limit, bool) or limit < 0
        ):
            raise ConfigError(f"limit must be an integer >= 0, got {limit!r}")
        return self._pages(where, args, limit)

    def _where(
        self, since: Any, until: Any, tenant: Any, model: Any, flagged: Any
    ) -> tuple[list[str], list]:
        where: list[str] = []
        args: list[Any] = []
        lo, hi = _time_bound(since, "since"), _time_bound(until, "until")
        if lo is not None:
            where.append("created_at >= ?")
            args.append(lo)  # noqa: E702
        if hi is not None:
            where.append("created_at < ?")
            args.append(hi)  # noqa: E702
        if tenant is not None:
            where.append("tenant = ?")
            args.append(str(tenant))  # noqa: E702
        if model is not None:
            where.append("model = ?")
            args.append(str(model))  # noqa: E702
        if flagged is not None:
            if not isinstance(flagged, bool):
                raise ConfigError(f"flagged must be True, False or None, got {flagged!r}")
            where.append("flagged = ?")
            args.append(int(flagged))  # noqa: E702
        return where, args

    def _pages(
        self, where: list[str], args: list, limit: int | None, page: int = 500
    ) -> Iterator[AuditRecord]:
        last, left = 0, limit
        while left is None or left > 0:
            n = page if left is None else min(page, left)
            cond = " AND ".join(["seq > ?", *where])
            rows = self._query(
                f"SELECT {', '.join(_COLUMNS)} FROM audit_records WHERE {cond} "
                f"ORDER BY seq LIMIT {int(n)}",
                (last, *args),
                "reading records",
            )
            for row in rows:
                rec = _to_record(row)
                last = rec.seq
                yield rec
            if left is not None:
                left -= len(rows)
            if len(rows) < n:
                return

    def __len__(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM audit_records", (), "counting")[0][0])

    # -- checking ------------------------------------------------------------------------------
    def verify(self, *, anchor: str | None = None) -> VerifyReport:
        """Walk the whole chain and check every record: positions 1, 2, 3... without a gap, each
        ``prev_hash`` equal to the previous record's hash, each hash equal to the hash of its
        stored content, and the filter columns equal to the record's own values.

        Args:
            anchor: a head hash reported by an earlier verify (kept elsewhere); the chain must
                still contain it, else records were removed from its end.

        Returns:
            A ``VerifyReport``: ``ok``, and for a broken chain the first bad record and why.
        """
        prev, expect, checked, found_anchor = GENESIS, 1, 0, anchor is None
        last_seq = 0
        while True:
            rows = self._query(
                f"SELECT {', '.join(_COLUMNS)} FROM audit_records WHERE seq > ? "
                "ORDER BY seq LIMIT 1000",
                (last_seq,),
                "verifying",
            )
            for row in rows:
                d = dict(zip(_COLUMNS, row))
                seq, rid = int(d["seq"]), d["id"]
                checked += 1
                last_seq = seq

                def bad(
                    reason: str, checked: int = checked, rid: str = rid, seq: int = seq
                ) -> VerifyReport:
                    return VerifyReport(
                        ok=False, checked=checked, first_bad=rid, first_bad_seq=seq, reason=reason
                    )

                if seq != expect:
                    return bad(
                        f"record {seq} follows record {expect - 1}: "
                        f"{'record(s) missing (deleted)' if seq > expect else 'out of order'}"
                    )
                if d["prev_hash"] != prev:
                    return bad(
                        "its prev_hash is not the previous record's hash (a record before "
                        "it was changed, removed or moved)"
                    )
                if chain_hash(prev, d["record"]) != d["hash"]:
                    return bad("its content does not match its hash (the record was edited)")
                try:
                    rec = json.loads(d["record"])
                except ValueError:
                    return bad("its content is not JSON (the record was edited)")
                if (
                    rec.get("seq") != seq
                    or rec.get("id") != rid
                    or rec.get("created_at") != d["created_at"]
                ):
                    return bad(
                        "its seq, id or time differs from the hashed record (edited or moved)"
                    )
                cols = _columns(rec)
                for k, v in cols.items():
                    have = d[k]
                    if k == "flagged" and have is not None:
                        have = int(have)
                    if have != v:
                        return bad(
                            f"its column {k} ({have!r}) differs from the hashed record "
                            f"({v!r}): the column was edited"
                        )
                if not found_anchor and d["hash"] == anchor:
                    found_anchor = True
                prev, expect = d["hash"], expect + 1
            if len(rows) < 1000:
                break
        head, head_seq = (prev, expect - 1) if checked else (None, None)
        if not found_anchor:
            return VerifyReport(
                ok=False,
                checked=checked,
                reason=f"the anchor {anchor} is not in "
                "the chain: records were removed from its end (or it is another "
                "log's)",
                head=head,
                head_seq=head_seq,
            )
        return VerifyReport(ok=True, checked=checked, head=head, head_seq=head_seq)

    # -- summaries -----------------------------------------------------------------------------
    def stats(self, *, by: str = "day", **filters: Any) -> list[dict]:
        """Per day, model or tenant: answers, flagged share, the reliability score's
        distribution and the mean intervention rate.

        Args:
            by: "day" (UTC date of ``created_at``), "model" or "tenant".
            **filters: those of ``records`` (since, until, tenant, model, flagged).

        Returns:
            One dict per group, in key order: ``{by: key, "answers", "flagged", "flagged_share",
            "score_mean", "score_p10", "score_p50", "score_p90", "intervention_rate_mean"}``;
            answers without a reliability record (abandoned streams) count in ``answers`` only.
        """
        if by not in STATS_BY:
            raise ConfigError(f"stats by must be one of {', '.join(STATS_BY)}, got {by!r}")
        unknown = set(filters) - {"since", "until", "tenant", "model", "flagged"}
        if unknown:
            raise ConfigError(
                f"unknown stats filter(s) {sorted(unknown)}; use since, until, "
                "tenant, model, flagged"
            )
        groups: dict[Any, dict] = {}
        for rec in self.records(**filters):
            key = (
                rec.created_at[:10] if by == "day" else (rec.model if by == "model" else rec.tenant)
            )
            g = groups.setdefault(key, {"answers": 0, "flagged": 0, "scores": [], "rates": []})
            g["answers"] += 1
            rel = rec.record.get("reliability") or {}
            if rec.flagged:
                g["flagged"] += 1
            if rec.score is not None:
                g["scores"].append(rec.score)
            if rel.get("intervention_rate") is not None:
                g["rates"].append(float(rel["intervention_rate"]))
        out = []
        for key in sorted(groups, key=lambda k: (k is None, k or "")):
            g = groups[key]
            scores = sorted(g["scores"])
            judged = len(scores)
            out.append(
                {
                    by: key,
                    "answers": g["answers"],
                    "flagged": g["flagged"],
                    "flagged_share": g["flagged"] / judged if judged else None,
                    "score_mean": sum(scores) / judged if judged else None,
                    "score_p10": _quantile(scores, 0.1),
                    "score_p50": _quantile(scores, 0.5),
                    "score_p90": _quantile(scores, 0.9),
                    "intervention_rate_mean": sum(g["rates"]) / len(g["rates"])
                    if g["rates"]
                    else None,
                }
            )
        return out


def _quantile(xs: list[float], q: float) -> float | None:
    """Linear-interpolated quantile of sorted ``xs``."""
    if not xs:
        return None
    pos = q * (len(xs) - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


# -- BlendedLLM's hook ----------------------------------------------------------------------------
class StreamAudit:
    """The audit of one ``BlendedLLM`` call: counts what the stream handed out, appends the record
    of the finished answer before its final event reaches the caller (``finish``), and records a
    stream left before its end (``abandon``) with ``finish_reason`` "abandoned" (the caller stopped
    reading) or "error" (the call failed), the text handed out so far and no reliability record:
    an auditor wants every piece of model output that reached someone, finished or not."""

    __slots__ = ("log", "llm", "config", "request", "t0", "parts", "tokens", "ended")

    def __init__(self, log: AuditLog, llm: Any, config: Any, request: dict) -> None:
        self.log, self.llm, self.config, self.request = log, llm, config, request
        self.t0 = time.perf_counter()
        self.parts: list[str] = []
        self.tokens = 0
        self.ended = False

    def saw(self, event: Any) -> None:
        """One non-final event was handed out."""
        self.parts.append(event.text)
        self.tokens += 1

    def finish(self, result: Any) -> None:
        """Commit the finished answer's record (raises AuditError when it cannot: the caller then
        does not get the answer's end)."""
        self.ended = True
        self.log.append(
            make_entry(
                id=result.id,
                llm=self.llm,
                config=self.config,
                request=self.request,
                result=result,
                latency_s=time.perf_counter() - self.t0,
                content=self.log.content,
            )
        )

    def abandon(self, exc: BaseException | None) -> None:
        """The stream ended before its answer did: record what it handed out."""
        if self.ended:
            return
        self.ended = True
        from .results import new_result_id

        # the caller stopped reading: it closed the stream, or cancelled the task reading it
        left = exc is None or isinstance(exc, (GeneratorExit, asyncio.CancelledError))
        reason = "abandoned" if left else "error"
        partial = {
            "text": "".join(self.parts),
            "finish_reason": reason,
            "usage": {"completion_tokens": self.tokens},
        }
        if reason == "error":
            partial["error"] = f"{type(exc).__name__}: {exc}"
        try:
            self.log.append(
                make_entry(
                    id=new_result_id(),
                    llm=self.llm,
                    config=self.config,
                    request=self.request,
                    result=partial,
                    latency_s=time.perf_counter() - self.t0,
                    content=self.log.content,
                )
            )
        except Exception as e:  # never hide the stream's own end or error behind this one
            warnings.warn(
                f"the audit record of a stream that ended early ({reason}) was not written: {e}",
                RuntimeWarning,
                stacklevel=2,
            )
