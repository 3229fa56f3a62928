"""``blendin audit``: check, list, show, export and summarise an audit log."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table
from rich.text import Text

from .common import _errors, _fail, app, err, out

if TYPE_CHECKING:
    from ..audit import AuditLog


# -- blendin audit: check, list, show, export and summarise an audit log ---------------------------
audit_app = typer.Typer(
    no_args_is_help=True, help="Check, list, show, export and summarise an audit log."
)
app.add_typer(audit_app, name="audit")
_AUDIT_HELP = (
    "the audit log: sqlite:///relative.db, sqlite:////absolute.db, a file path, or "
    "postgresql://user@host:port/db (default: $BLENDIN_AUDIT)"
)


def _audit_log(url: str) -> AuditLog:
    from ..audit import AuditLog

    return AuditLog.open(url)


def _audit_filters(
    since: str | None,
    until: str | None,
    tenant: str | None,
    model: str | None,
    flagged: bool | None,
) -> dict[str, Any]:
    return dict(since=since, until=until, tenant=tenant, model=model, flagged=flagged)


_SINCE = typer.Option(None, help="from this UTC time on (ISO 8601: 2026-11-23 or 2026-11-23T10:00)")
_UNTIL = typer.Option(None, help="before this UTC time (ISO 8601)")
_TENANT = typer.Option(None, help="only this tenant")
_MODEL = typer.Option(None, help="only this model (the blend's name)")
_FLAGGED = typer.Option(None, "--flagged/--not-flagged", help="only flagged / unflagged answers")


@audit_app.command("verify")
def audit_verify(
    audit: str = typer.Option(..., "--audit", envvar="BLENDIN_AUDIT", help=_AUDIT_HELP),
    anchor: str | None = typer.Option(
        None,
        help="a head hash printed by an earlier verify: "
        "fail if the chain no longer contains it (truncated)",
    ),
) -> None:
    """Check the hash chain; exit 1 naming the first record that was edited, deleted or moved."""
    with _errors():
        with _audit_log(audit) as log:
            rep = log.verify(anchor=anchor)
    if not rep.ok:
        where = (
            f"record {rep.first_bad_seq} (id {rep.first_bad})"
            if rep.first_bad is not None
            else "the chain"
        )
        print(
            f"error: audit log NOT intact: {where}: {rep.reason} ({rep.checked} record(s) read)",
            file=sys.stderr,
            flush=True,
        )
        raise typer.Exit(1)
    print(
        f"ok: {rep.checked} record(s), chain intact; head seq {rep.head_seq}, hash {rep.head}",
        flush=True,
    )


@audit_app.command("list")
def audit_list(
    audit: str = typer.Option(..., "--audit", envvar="BLENDIN_AUDIT", help=_AUDIT_HELP),
    since: str | None = _SINCE,
    until: str | None = _UNTIL,
    tenant: str | None = _TENANT,
    model: str | None = _MODEL,
    flagged: bool | None = _FLAGGED,
    limit: int | None = typer.Option(None, help="at most this many records"),
) -> None:
    """List records in chain order (one line each)."""
    t = Table(title="audit records", title_justify="left")
    for col in (
        "seq",
        "time (UTC)",
        "id",
        "tenant",
        "model",
        "finish",
        "tokens",
        "score",
        "flagged",
    ):
        t.add_column(
            col, justify="right" if col in ("seq", "tokens", "score") else "left", overflow="fold"
        )
    with _errors():
        with _audit_log(audit) as log:
            for r in log.records(
                limit=limit, **_audit_filters(since, until, tenant, model, flagged)
            ):
                resp = r.record.get("response") or {}
                tokens = (resp.get("usage") or {}).get("completion_tokens")
                t.add_row(
                    str(r.seq),
                    r.created_at[:19].replace("T", " "),
                    r.id,
                    r.tenant or "-",
                    r.model,
                    str(resp.get("finish_reason", "-")),
                    "-" if tokens is None else str(tokens),
                    "-" if r.score is None else f"{r.score:.2f}",
                    "-"
                    if r.flagged is None
                    else Text("yes", style="bold red")
                    if r.flagged
                    else "no",
                )
    out.print(t)


@audit_app.command("show")
def audit_show(
    id: str = typer.Argument(..., help="the answer's id"),
    audit: str = typer.Option(..., "--audit", envvar="BLENDIN_AUDIT", help=_AUDIT_HELP),
) -> None:
    """Print one record, whole, as JSON."""
    with _errors():
        with _audit_log(audit) as log:
            rec = log.get(id)
    if rec is None:
        _fail(f"no record with id {id!r} in the audit log; `blendin audit list` shows the ids", 1)
    out.print_json(json.dumps(rec.to_dict(), ensure_ascii=False))


_CSV_FIELDS = (
    "seq",
    "id",
    "created_at",
    "tenant",
    "user",
    "model",
    "config_hash",
    "flagged",
    "score",
    "finish_reason",
    "intervention_rate",
    "latency_s",
    "hash",
    "prev_hash",
    "record",
)


@audit_app.command("export")
def audit_export(
    audit: str = typer.Option(..., "--audit", envvar="BLENDIN_AUDIT", help=_AUDIT_HELP),
    fmt: str = typer.Option(
        "jsonl",
        "--format",
        help="jsonl (one whole record a line) or csv "
        "(the columns, and the record as JSON in its last column)",
    ),
    output: str | None = typer.Option(None, "--output", "-o", help="file (default: stdout)"),
    since: str | None = _SINCE,
    until: str | None = _UNTIL,
    tenant: str | None = _TENANT,
    model: str | None = _MODEL,
    flagged: bool | None = _FLAGGED,
    limit: int | None = typer.Option(None, help="at most this many records"),
) -> None:
    """Export records in chain order as JSONL or CSV."""
    import csv

    if fmt not in ("jsonl", "csv"):
        _fail(f"--format must be jsonl or csv, got {fmt!r}")
    with _errors():
        log = _audit_log(audit)
        try:
            dest = open(output, "w", encoding="utf-8", newline="") if output else sys.stdout
        except OSError as e:
            log.close()
            _fail(f"cannot write {output!r}: {e.strerror}; pass a writable --output path")
        n = 0
        try:
            writer = csv.DictWriter(dest, fieldnames=_CSV_FIELDS) if fmt == "csv" else None
            if writer is not None:
                writer.writeheader()
            for r in log.records(
                limit=limit, **_audit_filters(since, until, tenant, model, flagged)
            ):
                if writer is None:
                    dest.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")
                else:
                    rel = r.record.get("reliability") or {}
                    writer.writerow(
                        {
                            "seq": r.seq,
                            "id": r.id,
                            "created_at": r.created_at,
                            "tenant": r.tenant,
                            "user": r.user,
                            "model": r.model,
                            "config_hash": r.config_hash,
                            "flagged": r.flagged,
                            "score": r.score,
                            "finish_reason": (r.record.get("response") or {}).get("finish_reason"),
                            "intervention_rate": rel.get("intervention_rate"),
                            "latency_s": r.record.get("latency_s"),
                            "hash": r.hash,
                            "prev_hash": r.prev_hash,
                            "record": json.dumps(r.record, ensure_ascii=False, sort_keys=True),
                        }
                    )
                n += 1
        finally:
            log.close()
            if output:
                dest.close()
    if output:
        err.print(f"{n} record(s) written to {output}")


@audit_app.command("stats")
def audit_stats(
    audit: str = typer.Option(..., "--audit", envvar="BLENDIN_AUDIT", help=_AUDIT_HELP),
    by: str = typer.Option("day", help="day, model or tenant"),
    since: str | None = _SINCE,
    until: str | None = _UNTIL,
    tenant: str | None = _TENANT,
    model: str | None = _MODEL,
    flagged: bool | None = _FLAGGED,
    as_json: bool = typer.Option(False, "--json", help="print the rows as JSON"),
) -> None:
    """Per day, model or tenant: answers, flagged share, score spread, intervention rate."""
    with _errors():
        with _audit_log(audit) as log:
            rows = log.stats(by=by, **_audit_filters(since, until, tenant, model, flagged))
    if as_json:
        out.print_json(json.dumps(rows))
        return

    def f(x: float | None, fmt: str = "{:.2f}") -> str:
        return "-" if x is None else fmt.format(x)

    t = Table(title=f"audit stats by {by}", title_justify="left")
    for col in (
        by,
        "answers",
        "flagged",
        "score mean",
        "score p10 / p50 / p90",
        "intervention rate",
    ):
        t.add_column(col, justify="left" if col == by else "right")
    for r in rows:
        t.add_row(
            "-" if r[by] is None else str(r[by]),
            str(r["answers"]),
            f"{r['flagged']} ({f(r['flagged_share'], '{:.0%}')})",
            f(r["score_mean"]),
            f"{f(r['score_p10'])} / {f(r['score_p50'])} / {f(r['score_p90'])}",
            f(r["intervention_rate_mean"], "{:.1%}"),
        )
    out.print(t)
