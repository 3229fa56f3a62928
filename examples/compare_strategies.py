"""Compare strategies on the offline default pair: XSTest (refuse unsafe, comply with safe) and
GSM8K (last-number match), with intervention rates, reliability scores and speed.

    python examples/compare_strategies.py --data ../shared/data --out runs/compare

Writes one JSONL record per (item, strategy) and prints a summary table (also saved as .md).
GSM8K questions get k worked examples from the train file as earlier chat turns (--fewshot):
the base model is a pretrained model, not a chat model, and needs them to answer in form.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import re
import time
from pathlib import Path

from blendin_llm import BlendConfig, BlendedLLM
from blendin_llm.scoring import gsm8k_correct, xstest_correct

STRATEGIES = ["base_only", "guide_only", "nudging", "blendin"]


def load_xstest(path: Path, n_each: int, seed: int) -> list[dict]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    rng = random.Random(seed)
    items = []
    for label in ("safe", "unsafe"):
        pool = [r for r in rows if r["label"] == label]
        items += [{"task": "xstest", "prompt": r["prompt"], "label": label, "id": r["id"]}
                  for r in rng.sample(pool, n_each)]
    return items


def _clean(answer: str) -> str:
    body, final = answer.split("####")
    return re.sub(r"<<[^>]*>>", "", body).strip() + f"\nThe answer is {final.strip()}."


def load_gsm8k(path: Path, train: Path, n: int, k: int) -> list[dict]:
    shots = []
    for line in train.read_text().splitlines()[:k]:
        ex = json.loads(line)
        shots += [{"role": "user", "content": ex["question"]},
                  {"role": "assistant", "content": _clean(ex["answer"])}]
    items = []
    for i, line in enumerate(path.read_text().splitlines()[:n]):
        ex = json.loads(line)
        items.append({"task": "gsm8k", "id": str(i), "answer": ex["answer"],
                      "prompt": shots + [{"role": "user", "content": ex["question"]}]})
    return items


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--out", default="runs/compare")
    ap.add_argument("--xstest-each", type=int, default=10)
    ap.add_argument("--gsm8k", type=int, default=20)
    ap.add_argument("--fewshot", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--gamma", type=float, default=0.4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    args = ap.parse_args()

    data = Path(args.data)
    items = load_xstest(data / "xstest" / "xstest_prompts.csv", args.xstest_each, args.seed)
    items += load_gsm8k(data / "gsm8k" / "test.jsonl", data / "gsm8k" / "train_head200.jsonl",
                        args.gsm8k, args.fewshot)
    strategies = args.strategies.split(",")
    llm = BlendedLLM("gemma-3-270m", ["smollm2-135m-instruct"], BlendConfig(gamma=args.gamma))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    with open(out / "records.jsonl", "w") as f:
        for item in items:
            for s in strategies:
                res = llm.generate(item["prompt"], max_new_tokens=args.max_new_tokens, strategy=s)
                ok = (xstest_correct(res.text, item["label"]) if item["task"] == "xstest"
                      else gsm8k_correct(res.text, item["answer"]))
                rec = {"task": item["task"], "id": item["id"], "label": item.get("label"),
                       "strategy": s, "correct": ok, "text": res.text,
                       "tokens": res.usage.completion_tokens, "elapsed_s": res.elapsed_s,
                       "reliability": res.reliability.model_dump(exclude={"trace"})}
                records.append(rec)
                f.write(json.dumps(rec) + "\n")
                f.flush()
                print(f"{item['task']:6s} {item['id']:>4s} {s:10s} ok={int(ok)} "
                      f"rate={res.reliability.intervention_rate:.2f} "
                      f"score={res.reliability.score:.2f} {res.text[:70]!r}", flush=True)

    lines = [f"pair: gemma-3-270m (base) + smollm2-135m-instruct (guide), gamma={args.gamma}, "
             f"greedy, max_new_tokens={args.max_new_tokens}, GSM8K {args.fewshot}-shot",
             "", "| task | strategy | n | accuracy | mean intervention rate | mean reliability "
             "| flagged | tokens/s |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for task in ("xstest", "gsm8k"):
        for s in strategies:
            rs = [r for r in records if r["task"] == task and r["strategy"] == s]
            if not rs:
                continue
            acc = sum(r["correct"] for r in rs) / len(rs)
            rate = sum(r["reliability"]["intervention_rate"] for r in rs) / len(rs)
            score = sum(r["reliability"]["score"] for r in rs) / len(rs)
            flagged = sum(r["reliability"]["flagged"] for r in rs) / len(rs)
            tps = sum(r["tokens"] for r in rs) / sum(r["elapsed_s"] for r in rs)
            lines.append(f"| {task} | {s} | {len(rs)} | {acc:.2f} | {rate:.2f} | {score:.2f} "
                         f"| {flagged:.2f} | {tps:.1f} |")
    for s in strategies:  # XSTest split: refusing unsafe vs complying with safe
        for label in ("safe", "unsafe"):
            rs = [r for r in records if r["task"] == "xstest" and r["strategy"] == s
                  and r["label"] == label]
            if rs:
                lines.append(f"xstest {label:6s} {s:10s} correct {sum(r['correct'] for r in rs)}"
                             f"/{len(rs)}")
    summary = "\n".join(lines)
    (out / "summary.md").write_text(summary + "\n")
    print(summary)


if __name__ == "__main__":
    main()
