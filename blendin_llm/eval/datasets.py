"""Evaluation data from local files: GSM8K JSONL, XSTest CSV, and a generic JSONL.

* ``gsm8k``: one JSON object per line with ``question`` and ``answer`` (the reference ends in
  ``#### N``); scored by last-number match.
* ``xstest``: a CSV with ``prompt`` and ``label`` (``safe`` / ``unsafe``) columns; scored by refusal
  string matching (comply with safe prompts, refuse unsafe ones).
* ``jsonl``: one JSON object per line with ``prompt`` (a string or a list of chat messages), an
  optional ``answer`` (scored by number match when it is a number, else by normalised text match)
  and an optional ``label`` (``safe`` / ``unsafe``: scored like XSTest); ``id`` is optional.

``format="auto"`` picks by extension and fields. A malformed line is skipped with a warning and
counted in ``Dataset.skipped``; it never stops a run.
"""

from __future__ import annotations

import csv
import json
import random
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DatasetError

FORMATS = ("auto", "gsm8k", "xstest", "jsonl")


@dataclass
class EvalItem:
    """One question: its ``prompt`` (a string or chat messages, few-shot turns included), and what
    scores the answer (``answer`` and/or ``label``). ``task`` names the data set it came from."""

    id: str
    task: str
    kind: str  # "gsm8k" | "xstest" | "jsonl": how the answer is scored
    prompt: Any
    question: str
    answer: str | None = None
    label: str | None = None


@dataclass
class Dataset:
    name: str
    format: str
    items: list[EvalItem]
    skipped: int = 0
    problems: list[str] = field(default_factory=list)


class _Lines:
    """JSON objects from a JSONL file; malformed lines are skipped, warned about and counted
    (``_skip`` serves the CSV reader too)."""

    problems: list[str]

    def __init__(self, path: Path) -> None:
        self.path, self.skipped, self.problems = path, 0, []

    def __iter__(self) -> Iterator[tuple[int, dict]]:
        with open(self.path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                    if not isinstance(obj, dict):
                        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
                except ValueError as e:
                    self._skip(n, f"not valid JSON ({e})")
                    continue
                yield n, obj

    def _skip(self, n: int, why: str) -> None:
        self.skipped += 1
        msg = f"{self.path.name}:{n}: skipped, {why}"
        self.problems.append(msg)
        warnings.warn(msg, stacklevel=3)


def _sniff(path: Path) -> str:
    if path.suffix.lower() == ".csv":
        return "xstest"
    if path.suffix.lower() not in (".jsonl", ".json", ".ndjson"):
        raise DatasetError(
            f"cannot tell the format of {path.name!r} from its extension; pass format= one of "
            "gsm8k, xstest, jsonl"
        )
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                return (
                    "gsm8k"
                    if "question" in obj and "####" in str(obj.get("answer", ""))
                    else "jsonl"
                )
    return "jsonl"


def _gsm8k_shot(ex: dict) -> tuple[str, str]:
    body, _, final = str(ex["answer"]).rpartition("####")
    body = re.sub(r"<<[^>]*>>", "", body).strip()
    return str(ex["question"]), (body + "\n" if body else "") + f"The answer is {final.strip()}."


def load_fewshot(path: str | Path, k: int) -> list[dict]:
    """``k`` exemplars as chat turns, from a GSM8K-style JSONL (question/answer, worked answers are
    shortened to their text + "The answer is N.") or a generic JSONL (prompt/answer)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"few-shot file {str(path)!r} does not exist")
    turns: list[dict] = []
    lines = _Lines(path)
    for n, ex in lines:
        if len(turns) >= 2 * k:
            break
        if "question" in ex and "answer" in ex:
            q, a = _gsm8k_shot(ex)
        elif isinstance(ex.get("prompt"), str) and "answer" in ex:
            q, a = ex["prompt"], str(ex["answer"])
        else:
            lines._skip(n, "a few-shot line needs question/answer or prompt/answer")
            continue
        turns += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    if k and not turns:
        raise DatasetError(f"few-shot file {str(path)!r} has no usable exemplar")
    return turns


def _select(items: list[EvalItem], limit: int | None, seed: int | None) -> list[EvalItem]:
    """The first ``limit`` items, or with a ``seed`` a seeded sample; labelled items are sampled
    in equal shares per label (so 60 of XSTest = 30 safe + 30 unsafe)."""
    if limit is None or limit >= len(items):
        if seed is None:
            return items
        limit = len(items)
    if seed is None:
        return items[:limit]
    rng = random.Random(seed)
    labels = sorted({it.label for it in items if it.label is not None})
    if not labels or any(it.label is None for it in items):
        return rng.sample(items, limit)
    chosen: list[EvalItem] = []
    for i, lab in enumerate(labels):
        pool = [it for it in items if it.label == lab]
        share = limit // len(labels) + (i < limit % len(labels))
        chosen += rng.sample(pool, min(share, len(pool)))
    return chosen


def load_dataset(
    path: str | Path,
    format: str = "auto",
    *,
    limit: int | None = None,
    seed: int | None = None,
    fewshot: str | Path | None = None,
    fewshot_k: int = 3,
    name: str | None = None,
) -> Dataset:
    """Read a data set from a local file (see the module doc for the formats).

    ``limit``: keep that many items (the first ones, or a seeded sample with ``seed``).
    ``fewshot``: a file of exemplars; the first ``fewshot_k`` become earlier chat turns of every
    prompt. Raises ``DatasetError`` for a missing file, an unknown format, or no usable item.
    """
    path = Path(path)
    if format not in FORMATS:
        raise DatasetError(f"unknown dataset format {format!r}; choose one of {', '.join(FORMATS)}")
    if not path.is_file():
        raise DatasetError(f"dataset file {str(path)!r} does not exist")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise DatasetError(f"limit must be a positive integer, got {limit!r}")
    fmt = _sniff(path) if format == "auto" else format
    task = name or {"gsm8k": "gsm8k", "xstest": "xstest"}.get(fmt, path.stem)
    shots = load_fewshot(fewshot, fewshot_k) if fewshot else []
    items: list[EvalItem] = []
    lines = _Lines(path)

    def add(i: str, question: Any, **kw: Any) -> None:
        turns = question if isinstance(question, list) else [{"role": "user", "content": question}]
        prompt = shots + turns if shots else question
        text = question if isinstance(question, str) else str(question[-1].get("content", ""))
        items.append(EvalItem(id=i, task=task, kind=fmt, prompt=prompt, question=text, **kw))

    if fmt == "xstest":
        try:
            with open(path, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                missing = {"prompt", "label"} - set(reader.fieldnames or ())
                if missing:
                    raise DatasetError(
                        f"{path.name}: an XSTest CSV needs the columns prompt and "
                        f"label; missing {sorted(missing)}"
                    )
                for n, row in enumerate(reader, 2):
                    label = (row.get("label") or "").strip().lower()
                    if not (row.get("prompt") or "").strip() or label not in ("safe", "unsafe"):
                        lines._skip(n, "needs a prompt and a label safe/unsafe")
                        continue
                    add(str(row.get("id") or n - 1), row["prompt"], label=label)
        except (UnicodeDecodeError, csv.Error) as e:
            raise DatasetError(f"{path.name} is not a readable CSV file: {e}") from None
    else:
        try:
            for n, obj in lines:
                if fmt == "gsm8k":
                    q, a = obj.get("question"), obj.get("answer")
                    if not isinstance(q, str) or not isinstance(a, str) or "####" not in a:
                        lines._skip(n, "a GSM8K line needs a question and an answer with '#### N'")
                        continue
                    add(str(obj.get("id", len(items))), q, answer=a)
                else:
                    p = obj.get("prompt")
                    ok = (isinstance(p, str) and p.strip()) or (
                        isinstance(p, list) and p and all(isinstance(m, dict) for m in p)
                    )
                    label = obj.get("label")
                    label = label.strip().lower() if isinstance(label, str) else None
                    if not ok or (label is not None and label not in ("safe", "unsafe")):
                        lines._skip(
                            n,
                            "a line needs a non-empty 'prompt' (string or messages); "
                            "'label' may only be safe or unsafe",
                        )
                        continue
                    answer = obj.get("answer")
                    add(
                        str(obj.get("id", len(items))),
                        p,
                        answer=None if answer is None else str(answer),
                        label=label,
                    )
        except UnicodeDecodeError as e:
            raise DatasetError(f"{path.name} is not a UTF-8 text file: {e}") from None
    skipped = lines.skipped
    if not items:
        raise DatasetError(
            f"dataset {str(path)!r} has no usable item"
            + (f" ({skipped} malformed line(s) skipped)" if skipped else " (the file is empty)")
        )
    seen: set[str] = set()
    for it in items:  # ids key the resumable output: make them unique
        base, k = it.id, 1
        while it.id in seen:
            it.id, k = f"{base}#{k}", k + 1
        seen.add(it.id)
    return Dataset(
        name=task,
        format=fmt,
        items=_select(items, limit, seed),
        skipped=skipped,
        problems=lines.problems,
    )
