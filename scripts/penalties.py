"""Repetition penalties on the default pair: 10 factual prompts, greedy, each setting side by side.

For each setting and prompt: whether the answer ended by itself (EOS or the next user turn) or ran
out of tokens, how much of it repeats itself (share of word 4-grams seen before in the answer),
whether it opens by repeating the question, and whether it holds the expected fact.

    python scripts/penalties.py [--max-new-tokens 96] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import re
import time

SETTINGS = {
    "off": {},
    "rep1.1": {"repetition_penalty": 1.1},
    "rep1.2": {"repetition_penalty": 1.2},
    "ngram4": {"no_repeat_ngram_size": 4},
    "freq0.5": {"frequency_penalty": 0.5},
    "pres0.5": {"presence_penalty": 0.5},
    "rep1.1+ngram4": {"repetition_penalty": 1.1, "no_repeat_ngram_size": 4},
}

PROMPTS = [
    ("Who wrote Pride and Prejudice?", r"austen"),
    ("What is the capital of France?", r"paris"),
    ("How many legs does a spider have?", r"\beight\b|\b8\b"),
    ("What is the boiling point of water in degrees Celsius?", r"\b100\b"),
    ("Who painted the Mona Lisa?", r"leonardo|vinci"),
    ("What is the largest planet in our solar system?", r"jupiter"),
    ("Which gas do plants take in from the air to make food?", r"carbon dioxide|co2"),
    ("In which year did World War II end?", r"1945"),
    ("What is the chemical symbol for gold?", r"\bau\b"),
    ("What is the longest river in Africa?", r"\bnile\b"),
]


def repeat_share(text: str, n: int = 4) -> float:
    """Share of the answer's word n-grams that already occurred earlier in it."""
    w = re.findall(r"\w+", text.lower())
    grams = [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]
    seen, rep = set(), 0
    for g in grams:
        rep += g in seen
        seen.add(g)
    return rep / len(grams) if grams else 0.0


def echoes(question: str, text: str) -> bool:
    """Whether the answer opens by restating the question (its first 4 words)."""
    q = re.findall(r"\w+", question.lower())[:4]
    a = re.findall(r"\w+", text.lower())[:12]
    return any(a[i:i + len(q)] == q for i in range(len(a) - len(q) + 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--settings", nargs="*", default=list(SETTINGS))
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from blendin_llm import BlendedLLM

    llm = BlendedLLM("gemma-3-270m", ["smollm2-135m-instruct"])
    rows, answers = [], {}
    for name in args.settings:
        kw = SETTINGS[name]
        ended = correct = echo = tokens = 0
        reps = []
        t0 = time.perf_counter()
        for q, fact in PROMPTS:
            res = llm.generate(q, max_new_tokens=args.max_new_tokens, **kw)
            answers.setdefault(name, []).append(res.text)
            ended += res.finish_reason == "stop"
            correct += re.search(fact, res.text.lower()) is not None
            echo += echoes(q, res.text)
            tokens += res.usage.completion_tokens
            reps.append(repeat_share(res.text))
        rows.append({"setting": name, **kw, "ended": ended, "correct": correct, "echo": echo,
                     "repeat": sum(reps) / len(reps), "tokens": tokens / len(PROMPTS),
                     "s": time.perf_counter() - t0})
        r = rows[-1]
        print(f"{name:14s} ended {ended:2d}/10  correct {correct:2d}/10  echo {echo:2d}/10  "
              f"repeated 4-grams {r['repeat']:.2f}  tokens {r['tokens']:.0f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "answers": answers, "prompts": [p for p, _ in PROMPTS],
                       "max_new_tokens": args.max_new_tokens}, f, indent=1)


if __name__ == "__main__":
    main()
