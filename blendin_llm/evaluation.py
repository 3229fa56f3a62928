"""``blendin eval``: several strategies side by side over the same items, scored by rules.

    from blendin_llm.datasets import load_dataset
    from blendin_llm.evaluation import run_eval, summarize
    ds = load_dataset("gsm8k/test.jsonl", limit=50)
    records = run_eval(llm, [ds], out="runs/gsm8k", max_new_tokens=64)
    rows = summarize(records)

One JSONL record per (item, strategy) is appended to ``<out>/records.jsonl`` as soon as it is
done (flushed and synced), so a killed run loses at most the record in flight, and a rerun with
the same settings skips every finished record. ``<out>/run.json`` keeps the settings; a rerun with
other settings is refused (use another output directory, or ``fresh=True``).

The reliability score is judged by its AUROC for telling correct answers from wrong ones, next to a
plain baseline: the mean log-probability of the emitted tokens under the base model alone.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .datasets import Dataset
from .errors import ConfigError, EvalError
from .scoring import score_answer

DEFAULT_STRATEGIES = ("base_only", "guide_only", "nudging", "blendin", "blendin:alpha=0.5",
                      "ensemble")
RECORDS = "records.jsonl"


@dataclass(frozen=True)
class StrategyRun:
    """One column of a comparison: a label and the BlendConfig fields it sets for the call.

    Written ``name`` or ``name:key=value,key=value`` (``blendin:alpha=0.5``, ``nudging:gamma=0.3``).
    """

    label: str
    overrides: dict = field(default_factory=dict, hash=False, compare=False)

    @classmethod
    def parse(cls, text: str) -> "StrategyRun":
        from .config import BlendConfig

        name, _, rest = text.strip().partition(":")
        over: dict[str, Any] = {"strategy": name}
        for part in filter(None, (p.strip() for p in rest.split(","))):
            key, eq, value = part.partition("=")
            if not eq:
                raise ConfigError(f"strategy option {part!r} in {text!r} must be key=value")
            over[key.strip()] = _value(value.strip())
        try:
            BlendConfig(**over)  # check names and values now, not after an hour of decoding
        except TypeError as e:
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
    """Create the output directory and check that files can be written in it."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise EvalError(f"output directory {str(out)!r} is not writable ({e.strerror or e}); "
                        "pass another --out") from None
    return out


def prepare_output(out: str | Path, settings: dict, fresh: bool = False) -> Path:
    """Check the output directory (writable, and holding no run with other ``settings``) before
    any model work. Returns the records path."""
    out = check_output(out)
    settings = json.loads(json.dumps(settings))  # compare as stored (tuples become lists)
    meta, records = out / "run.json", out / RECORDS
    if fresh:
        for p in (meta, records):
            p.unlink(missing_ok=True)
    if meta.is_file() and records.is_file():
        old = json.loads(meta.read_text())
        diff = {k for k in set(old) | set(settings) if old.get(k) != settings.get(k)}
        if diff:
            raise EvalError(
                f"{out} holds a run with other settings ({', '.join(sorted(diff))}); resume it "
                "with the same settings, or use another output directory, or start fresh"
            )
    meta.write_text(json.dumps(settings, indent=1))
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


def run_eval(llm: Any, datasets: Iterable[Dataset], strategies: str | Sequence[str] =
             DEFAULT_STRATEGIES, out: str | Path | None = None, *, max_new_tokens: int | dict = 64,
             trace: bool = True, progress: bool = True, fresh: bool = False,
             settings: dict | None = None) -> list[dict]:
    """Generate every (item, strategy) pair, score it, and return all records (earlier finished
    ones of a resumed run included). ``max_new_tokens`` may be a dict by task name."""
    runs = parse_strategies(strategies)
    datasets = list(datasets)
    budget = (lambda task: int(max_new_tokens.get(task, 64))) if isinstance(max_new_tokens, dict) \
        else (lambda task: int(max_new_tokens))
    meta = {"model": getattr(llm, "name", "?"), "strategies": [r.label for r in runs],
            "max_new_tokens": max_new_tokens, "config": _config_of(llm), **(settings or {})}
    path = prepare_output(out, meta, fresh) if out is not None else None
    done = {(r["task"], r["item_id"], r["strategy"]): r for r in read_records(path)} if path else {}
    todo = [(ds, it, r) for ds in datasets for it in ds.items for r in runs
            if (it.task, it.id, r.label) not in done]
    records = list(done.values())
    if path is not None:
        _drop_torn_tail(path)
    sink = open(path, "a", encoding="utf-8") if path else None
    bar = _progress(len(todo), len(done)) if progress else None
    try:
        for ds, item, run in todo:
            res = llm.generate(item.prompt, max_new_tokens=budget(item.task), trace=trace,
                               **run.overrides)
            rec = {
                "task": item.task, "item_id": item.id, "strategy": run.label,
                "question": item.question, "answer": item.answer, "label": item.label,
                "text": res.text,
                "correct": score_answer(item.kind, res.text, item.answer, item.label),
                "finish_reason": res.finish_reason, "tokens": res.usage.completion_tokens,
                "guide_tokens": res.usage.guide_tokens_computed, "elapsed_s": res.elapsed_s,
                "reliability": res.reliability.model_dump(),
            }
            records.append(rec)
            if sink:
                sink.write(json.dumps(rec) + "\n")
                sink.flush()
                os.fsync(sink.fileno())
            if bar:
                bar[0].update(bar[1], advance=1, description=f"{item.task} {run.label}")
    finally:
        if sink:
            sink.close()
        if bar:
            bar[0].stop()
    order = {(it.task, it.id, r.label): i for i, (_, it, r) in
             enumerate((ds, it, r) for ds in datasets for it in ds.items for r in runs)}
    return sorted(records, key=lambda r: order.get((r["task"], r["item_id"], r["strategy"]), 1e9))


def _drop_torn_tail(path: Path) -> None:
    """A killed run may leave half a line at the end: cut it so the next record starts clean."""
    if not path.is_file():
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def _config_of(llm: Any) -> dict:
    cfg = getattr(llm, "config", None)
    return cfg.to_dict() if hasattr(cfg, "to_dict") else {}


def _progress(total: int, finished: int):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, \
        TimeElapsedColumn, TimeRemainingColumn

    p = Progress(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
                 TimeElapsedColumn(), TimeRemainingColumn(), transient=False)
    p.start()
    desc = f"eval ({finished} done before)" if finished else "eval"
    return p, p.add_task(desc, total=total)


# -- numbers -----------------------------------------------------------------------------------
def auroc(scores: Sequence[float], correct: Sequence[bool]) -> float | None:
    """Area under the ROC curve of ``scores`` for predicting ``correct`` (ties count half);
    None when only one class is present."""
    pos = [s for s, c in zip(scores, correct) if c]
    neg = [s for s, c in zip(scores, correct) if not c]
    if not pos or not neg:
        return None
    ranked = sorted((s, i) for i, s in enumerate(list(pos) + list(neg)))
    ranks = [0.0] * len(ranked)
    i = 0
    while i < len(ranked):  # average ranks over ties
        j = i
        while j + 1 < len(ranked) and ranked[j + 1][0] == ranked[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[ranked[k][1]] = (i + j) / 2 + 1
        i = j + 1
    r_pos = sum(ranks[: len(pos)])
    return (r_pos - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))


def baseline_confidence(record: dict) -> float:
    """The plain confidence baseline: mean log-prob of the emitted tokens under the base."""
    v = record["reliability"].get("base_mean_logprob")
    return float("-inf") if v is None else v


def summarize(records: Sequence[dict]) -> list[dict]:
    """One row per (task, strategy), in first-seen order."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        groups.setdefault((r["task"], r["strategy"]), []).append(r)
    rows = []
    for (task, strategy), rs in groups.items():
        scored = [r for r in rs if r["correct"] is not None]
        rel = [r["reliability"] for r in rs]
        secs = sum(r["elapsed_s"] for r in rs)
        rows.append({
            "task": task, "strategy": strategy, "n": len(rs), "scored": len(scored),
            "accuracy": _avg([float(r["correct"]) for r in scored]),
            "intervention_rate": _avg([x["intervention_rate"] for x in rel]),
            "reliability": _avg([x["score"] for x in rel]),
            "flagged": _avg([float(x["flagged"]) for x in rel]),
            "tokens_per_s": sum(r["tokens"] for r in rs) / secs if secs else None,
            "auroc_score": auroc([r["reliability"]["score"] for r in scored],
                                 [r["correct"] for r in scored]),
            "auroc_baseline": auroc([baseline_confidence(r) for r in scored],
                                    [r["correct"] for r in scored]),
        })
    return rows


def _avg(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def format_table(rows: Sequence[dict]) -> str:
    """The summary as a Markdown table."""
    def f(x, fmt="{:.2f}"):
        return "-" if x is None else fmt.format(x)

    head = ("| task | strategy | n | accuracy | interv. rate | reliability | flagged | tokens/s "
            "| AUROC score | AUROC baseline |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        lines.append(
            f"| {r['task']} | {r['strategy']} | {r['n']} | {f(r['accuracy'])} | "
            f"{f(r['intervention_rate'])} | {f(r['reliability'])} | {f(r['flagged'])} | "
            f"{f(r['tokens_per_s'], '{:.1f}')} | {f(r['auroc_score'])} | {f(r['auroc_baseline'])} |"
        )
    return "\n".join(lines)


