"""``blendin eval``: several strategies side by side over the same items, scored by rules.

    from blendin_llm.eval.datasets import load_dataset
    from blendin_llm.eval.runner import run_eval, summarize
    ds = load_dataset("gsm8k/test.jsonl", limit=50)
    records = run_eval(llm, [ds], out="runs/gsm8k", max_new_tokens=64)
    rows = summarize(records)

One JSONL record per (item, strategy) is appended to ``<out>/records.jsonl`` as soon as it is
done (flushed and synced), so a killed run loses at most the record in flight, and a rerun with
the same settings skips every finished record. ``<out>/run.json`` keeps the settings (replaced
atomically); a rerun with other settings is refused (use another output directory, or
``fresh=True``). One run at a time writes a directory: ``lock_output`` holds it, and a second
process fails at once with an ``EvalError`` that names the holder.

The reliability score is judged (``blendin_llm.eval.metrics``) by its AUROC and prediction-rejection
ratio (PRR) for telling right answers from wrong ones, and as a probability by its ECE and Brier
score, next to every single-signal baseline (``blendin_llm.uncertainty.BASELINES``: normalized
probability, min token probability, mean/min negentropy, margin; over the final distribution and
under the base alone). Judge a fitted profile only on items it was not fitted on.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from ..errors import ConfigError, EvalError
from ..uncertainty import BASELINES
from .datasets import Dataset

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID
from .metrics import auroc, brier, ece, prr
from .scoring import score_answer

DEFAULT_STRATEGIES = (
    "base_only",
    "guide_only",
    "nudging",
    "blendin",
    "blendin:alpha=0.5",
    "ensemble",
)
RECORDS = "records.jsonl"
RUN = "run.json"
LOCK = ".lock"


@dataclass(frozen=True)
class StrategyRun:
    """One column of a comparison: a label and the BlendConfig fields it sets for the call.

    Written ``name`` or ``name:key=value,key=value`` (``blendin:alpha=0.5``, ``nudging:gamma=0.3``).
    """

    label: str
    overrides: dict = field(default_factory=dict, hash=False, compare=False)

    @classmethod
    def parse(cls, text: str) -> StrategyRun:
        from ..config import BlendConfig

        name, _, rest = text.strip().partition(":")
        over: dict[str, Any] = {"strategy": name}
        for part in filter(None, (p.strip() for p in rest.split(","))):
            key, eq, value = part.partition("=")
            if not eq:
                raise ConfigError(f"strategy option {part!r} in {text!r} must be key=value")
            over[key.strip()] = _value(value.strip())
        try:
            BlendConfig(**over)  # check names and values now, not after an hour of decoding
        except ConfigError as e:
            raise ConfigError(f"bad strategy {text!r}: {e}") from None
        return cls(text.strip(), over)


def _value(text: str) -> Any:
    """'3' -> 3, '0.5' -> 0.5, anything else stays a string ('auto')."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_strategies(spec: str | Sequence[str]) -> list[StrategyRun]:
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    # "blendin:alpha=0.5,gamma=0.3" arrives split at the comma: glue options back on
    merged: list[str] = []
    for part in (p.strip() for p in items):
        if not part:
            continue
        if merged and "=" in part and ":" not in part:
            merged[-1] += "," + part
        else:
            merged.append(part)
    runs = [StrategyRun.parse(s) for s in merged]
    if not runs:
        raise ConfigError("no strategy given")
    labels = [r.label for r in runs]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"a strategy is listed twice: {labels}")
    return runs


def check_output(out: str | Path) -> Path:
    """Create the output directory and check that files can be written in it, and that the
    files a run keeps there (``run.json``, ``records.jsonl``) are files if they exist."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise EvalError(
            f"output directory {str(out)!r} is not writable ({e.strerror or e}); pass another --out"
        ) from None
    for name in (RUN, RECORDS):
        if (out / name).exists() and not (out / name).is_file():
            raise EvalError(
                f"{out / name} is not a file (a directory?); move it away or pass another --out"
            )
    return out


# -- one run per output directory at a time -------------------------------------------------------
_held: dict[str, list] = {}  # resolved directory -> [open lock file, depth]: re-entrant per process
_held_lock = threading.Lock()


@contextlib.contextmanager
def lock_output(out: str | Path) -> Iterator[Path]:
    """Hold the output directory for this run: a second process that writes the same directory
    fails at once, instead of both appending every record.

    An advisory lock (``fcntl.flock``) on ``<out>/.lock``, released when the run ends or its process
    dies; the file names the holder (pid, host, command, start time). Re-entrant in one process.

    Args:
        out: the output directory (created if missing).

    Yields:
        The output directory.

    Raises:
        EvalError: another process holds the directory (the message names it), or it is not
            writable.
    """
    out = check_output(out)
    key = str(out.resolve())
    with _held_lock:
        if key in _held:
            _held[key][1] += 1
            held = None
        else:
            held = _acquire(out)
            _held[key] = [held, 1]
    try:
        yield out
    finally:
        with _held_lock:
            _held[key][1] -= 1
            if _held[key][1] == 0:
                f = _held.pop(key)[0]
                fcntl.flock(f, fcntl.LOCK_UN)
                f.close()


def _acquire(out: Path) -> TextIO:
    path = out / LOCK
    f = open(path, "a+", encoding="utf-8")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = " ".join(f.read().split()) or "another process"
        f.close()
        raise EvalError(
            f"{out} is in use by another run ({holder}); wait for it to finish, or "
            "pass another --out"
        ) from None
    f.seek(0)
    f.truncate()
    cmd = " ".join(sys.argv) if sys.argv and sys.argv[0] else "python"
    f.write(
        f"pid {os.getpid()} on {socket.gethostname()}, started "
        f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {cmd[:200]}\n"
    )
    f.flush()
    return f


def _write_atomic(path: Path, text: str) -> None:
    """Replace a file in one step (temporary file, fsync, rename): a kill leaves the old or the new
    file, never a torn one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def prepare_output(out: str | Path, settings: dict, fresh: bool = False) -> Path:
    """Check the output directory (writable, and holding no run with other ``settings``) before
    any model work. Returns the records path.

    ``run.json`` is written atomically. One that is empty or torn anyway (written by an older
    version, or by hand) is rewritten when there are no records to match it; with records it is
    an EvalError, since they cannot be matched to settings any more."""
    out = check_output(out)
    settings = json.loads(json.dumps(settings))  # compare as stored (tuples become lists)
    meta, records = out / RUN, out / RECORDS
    if fresh:
        for p in (meta, records):
            p.unlink(missing_ok=True)
    has_records = records.is_file() and records.stat().st_size > 0
    if meta.is_file() and has_records:
        try:
            old = json.loads(meta.read_text(encoding="utf-8"))
            assert isinstance(old, dict)
        except (ValueError, AssertionError):
            raise EvalError(
                f"{meta} is empty or unreadable, so the records in {records} cannot be matched to "
                "their settings; start over with --fresh (fresh=True), or pass another --out"
            ) from None
        diff = {k for k in set(old) | set(settings) if old.get(k) != settings.get(k)}
        if diff:
            raise EvalError(
                f"{out} holds a run with other settings ({', '.join(sorted(diff))}); resume it "
                "with the same settings, or use another output directory, or start fresh"
            )
    _write_atomic(meta, json.dumps(settings, indent=1))
    return records


def read_records(path: str | Path) -> list[dict]:
    """Records of a run; a torn last line (a killed run) is ignored."""
    path = Path(path)
    if path.is_dir():
        path = path / RECORDS
    out = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and "strategy" in rec:
                out.append(rec)
    return out


def run_eval(
    llm: Any,
    datasets: Iterable[Dataset],
    strategies: str | Sequence[str] = DEFAULT_STRATEGIES,
    out: str | Path | None = None,
    *,
    max_new_tokens: int | dict = 64,
    trace: bool = True,
    progress: bool = True,
    fresh: bool = False,
    settings: dict | None = None,
    on_record: Any = None,
    batch_size: int = 1,
) -> list[dict]:
    """Generate every (item, strategy) pair, score it, and return all records (earlier finished
    ones of a resumed run included). ``max_new_tokens`` may be a dict by task name;
    ``on_record`` is called with each new record. ``batch_size`` > 1 sends that many requests at
    once, which a ``BlendedLLM`` decodes together (continuous batching); records are written as
    answers finish, and each answer is the one it would be alone."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise EvalError(f"batch_size must be an int >= 1, got {batch_size!r}")
    runs = parse_strategies(strategies)
    datasets = list(datasets)
    budget = (
        (lambda task: int(max_new_tokens.get(task, 64)))
        if isinstance(max_new_tokens, dict)
        else (lambda task: int(max_new_tokens))
    )
    meta = {
        "model": getattr(llm, "name", "?"),
        "strategies": [r.label for r in runs],
        "max_new_tokens": max_new_tokens,
        "config": _config_of(llm),
        **(settings or {}),
    }
    with lock_output(out) if out is not None else contextlib.nullcontext():
        path = prepare_output(out, meta, fresh) if out is not None else None
        if path is not None:
            _mend_tail(path)
        return _run(llm, datasets, runs, path, budget, trace, progress, on_record, batch_size)


def _run(
    llm: Any,
    datasets: list[Dataset],
    runs: list[StrategyRun],
    path: Path | None,
    budget: Any,
    trace: bool,
    progress: bool,
    on_record: Any = None,
    batch_size: int = 1,
) -> list[dict]:
    done = {(r["task"], r["item_id"], r["strategy"]): r for r in read_records(path)} if path else {}
    todo = [
        (ds, it, r)
        for ds in datasets
        for it in ds.items
        for r in runs
        if (it.task, it.id, r.label) not in done
    ]
    records = list(done.values())
    sink = open(path, "a", encoding="utf-8") if path else None
    bar = _progress(len(todo), len(done)) if progress else None

    def answer(job: tuple) -> Any:
        _, item, run = job
        return llm.generate(
            item.prompt, max_new_tokens=budget(item.task), trace=trace, **run.overrides
        )

    pool = (
        ThreadPoolExecutor(batch_size, thread_name_prefix="blendin-eval")
        if batch_size > 1
        else None
    )
    # in order, at most batch_size at a time in flight (a pool's queue is first in, first out)
    answers = (
        ((job, f.result()) for job, f in zip(todo, [pool.submit(answer, j) for j in todo]))
        if pool
        else ((job, answer(job)) for job in todo)
    )
    try:
        for (_ds, item, run), res in answers:
            rec = {
                "task": item.task,
                "item_id": item.id,
                "strategy": run.label,
                "question": item.question,
                "answer": item.answer,
                "label": item.label,
                "text": res.text,
                "correct": score_answer(item.kind, res.text, item.answer, item.label),
                "finish_reason": res.finish_reason,
                "tokens": res.usage.completion_tokens,
                "guide_tokens": res.usage.guide_tokens_computed,
                "elapsed_s": res.elapsed_s,
                "reliability": res.reliability.model_dump(),
            }
            records.append(rec)
            if sink:
                sink.write(json.dumps(rec) + "\n")
                sink.flush()
                os.fsync(sink.fileno())
            if bar:
                bar[0].update(bar[1], advance=1, description=f"{item.task} {run.label}")
            if on_record is not None:
                on_record(rec)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if sink:
            sink.close()
        if bar:
            bar[0].stop()
    order = {
        (it.task, it.id, r.label): i
        for i, (_, it, r) in enumerate(
            (ds, it, r) for ds in datasets for it in ds.items for r in runs
        )
    }
    return sorted(records, key=lambda r: order.get((r["task"], r["item_id"], r["strategy"]), 1e9))


def _mend_tail(path: Path) -> None:
    """A killed run may leave half a line at the end: cut it so the next record starts clean. A
    last line that is a whole record without its newline (an editor, a copy) is a record that
    ``read_records`` counts as done: it is kept and the newline added."""
    if not path.is_file():
        return
    with open(path, "rb+") as f:
        data = f.read()
        if not data or data.endswith(b"\n"):
            return
        start = data.rfind(b"\n") + 1
        try:
            last = json.loads(data[start:])
            whole = isinstance(last, dict) and "strategy" in last  # as read_records counts
        except ValueError:
            whole = False
        if whole:
            f.write(b"\n")
        else:
            f.truncate(start)
        f.flush()
        os.fsync(f.fileno())


def _config_of(llm: Any) -> dict:
    cfg: Any = getattr(llm, "config", None)
    return cfg.to_dict() if hasattr(cfg, "to_dict") else {}


def _progress(total: int, finished: int) -> tuple[Progress, TaskID]:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    p = Progress(
        TextColumn("{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=False,
    )
    p.start()
    desc = f"eval ({finished} done before)" if finished else "eval"
    return p, p.add_task(desc, total=total)


# -- numbers -----------------------------------------------------------------------------------


def baseline_confidence(record: dict) -> float:
    """The first release's baseline: mean log-prob of the answer's tokens under the base (its
    ranking is that of ``base_norm_prob``)."""
    v = record["reliability"].get("base_mean_logprob")
    return float("-inf") if v is None else v


def feature(record: dict, name: str) -> float | None:
    """One uncertainty feature of a record (None for records without features)."""
    return (record["reliability"].get("features") or {}).get(name)


def rescore(records: Sequence[dict], model: Any) -> list[dict]:
    """Copies of ``records`` scored by a ScoreModel from their stored features (no decoding):
    ``score``, ``flagged`` (score < threshold), ``threshold`` and ``flag_target`` of each record
    of the model's strategy; other records are copied unchanged."""
    out = []
    for r in records:
        r = dict(r)
        rel = dict(r["reliability"])
        if (
            model.applies_to(rel["strategy"].split(":")[0])
            and rel.get("features")
            and rel.get("tokens")
        ):
            rel["score"] = model.predict(rel["features"])
            rel["flagged"] = rel["score"] < model.threshold
            rel.update(score_source="profile", threshold=model.threshold, flag_target=model.target)
        r["reliability"] = rel
        out.append(r)
    return out


def signal_metrics(records: Sequence[dict]) -> dict[str, dict]:
    """AUROC and PRR of the score and of each baseline feature over the scored records."""
    scored = [r for r in records if r["correct"] is not None]
    y = [bool(r["correct"]) for r in scored]
    out = {}
    for name in ("score",) + BASELINES:
        vals = [r["reliability"]["score"] if name == "score" else feature(r, name) for r in scored]
        out[name] = {"auroc": auroc(vals, y), "prr": prr(vals, y)}
    return out


def summarize(records: Sequence[dict]) -> list[dict]:
    """One row per (task, strategy), in first-seen order: accuracy, intervention rate, mean score,
    flagged share, tokens/s; AUROC, PRR, ECE and Brier of the score; each baseline's AUROC and
    PRR (``baselines``) and the best of them by AUROC (``best_baseline``)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        groups.setdefault((r["task"], r["strategy"]), []).append(r)
    rows = []
    for (task, strategy), rs in groups.items():
        scored = [r for r in rs if r["correct"] is not None]
        y = [bool(r["correct"]) for r in scored]
        rel = [r["reliability"] for r in rs]
        secs = sum(r["elapsed_s"] for r in rs)
        scores = [r["reliability"]["score"] for r in scored]
        sig = signal_metrics(rs)
        base = {k: v for k, v in sig.items() if k != "score"}
        ranked = [k for k in base if base[k]["auroc"] is not None]
        rows.append(
            {
                "task": task,
                "strategy": strategy,
                "n": len(rs),
                "scored": len(scored),
                "accuracy": _avg([float(c) for c in y]),
                "intervention_rate": _avg([x["intervention_rate"] for x in rel]),
                "reliability": _avg([x["score"] for x in rel]),
                "flagged": _avg([float(x["flagged"]) for x in rel]),
                "score_source": ",".join(sorted({x.get("score_source", "?") for x in rel})),
                "tokens_per_s": sum(r["tokens"] for r in rs) / secs if secs else None,
                "auroc_score": sig["score"]["auroc"],
                "prr_score": sig["score"]["prr"],
                "ece_score": ece(scores, y),
                "brier_score": brier(scores, y),
                "auroc_baseline": auroc([baseline_confidence(r) for r in scored], y),
                "baselines": base,
                "best_baseline": max(ranked, key=lambda k: base[k]["auroc"]) if ranked else None,
            }
        )
    return rows


def _avg(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def format_table(rows: Sequence[dict]) -> str:
    """The summary as a Markdown table."""

    def f(x: float | None, fmt: str = "{:.2f}") -> str:
        return "-" if x is None else fmt.format(x)

    head = (
        "| task | strategy | n | accuracy | interv. rate | score | flagged | tokens/s "
        "| AUROC | PRR | ECE | Brier | best baseline | its AUROC | its PRR |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"
    )
    lines = [head]
    for r in rows:
        best = r.get("best_baseline")
        b = r["baselines"][best] if best else {"auroc": None, "prr": None}
        lines.append(
            f"| {r['task']} | {r['strategy']} | {r['n']} | {f(r['accuracy'])} | "
            f"{f(r['intervention_rate'])} | {f(r['reliability'])} | {f(r['flagged'])} | "
            f"{f(r['tokens_per_s'], '{:.1f}')} | {f(r['auroc_score'])} | {f(r['prr_score'])} | "
            f"{f(r['ece_score'])} | {f(r['brier_score'])} | {best or '-'} | {f(b['auroc'])} | "
            f"{f(b['prr'])} |"
        )
    return "\n".join(lines)


def format_baselines(rows: Sequence[dict]) -> str:
    """Every baseline's AUROC / PRR per (task, strategy), as a Markdown table."""

    def f(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f}"

    head = (
        "| task | strategy | score | "
        + " | ".join(BASELINES)
        + " |\n|---|---|"
        + "---:|" * (1 + len(BASELINES))
    )
    lines = [head]
    for r in rows:
        cells = [f"{f(r['auroc_score'])} / {f(r['prr_score'])}"] + [
            f"{f(r['baselines'][k]['auroc'])} / {f(r['baselines'][k]['prr'])}" for k in BASELINES
        ]
        lines.append(f"| {r['task']} | {r['strategy']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
