"""Cross-vocabulary fidelity on the default pair (Gemma-3-270M base, SmolLM2-135M-Instruct guide).

1. ``guide_only`` through the pair (the guide's distribution carried into Gemma's vocabulary, Gemma's
   tokens committed) against the guide's own greedy answer (SmolLM2 alone, ``base_only``, the same
   chat prompt), greedy, on 40 prompts. The reference is the guide's answer of ``--tokens`` of its
   own tokens; the pair's answer is compared over the same text:

   * exact: the pair's answer is the reference (where the reference ended on its own, the pair ended
     there too; where the reference ran out of tokens, the pair's text continues it);
   * prefix: the number of leading characters the two answers share (mean; and the mean of
     ``prefix / len(reference)``);
   * first N: the share of answers whose first N characters are identical.

2. ``blendin`` with ``alpha=0`` (the guide has no say) against ``base_only`` on the pair, greedy and
   seeded sampling: identical token ids or not (``--alpha0`` prompts).

    python benchmarks/bench_cross_vocab_fidelity.py                  # both parts (~15-25 min CPU)
    python benchmarks/bench_cross_vocab_fidelity.py --alpha0 0       # fidelity table only
    python benchmarks/bench_cross_vocab_fidelity.py --prompts 5      # a quick look

The pair's stream is read only as far as the comparison needs (until it leaves the reference's
text or passes its end), so a diverging answer costs only the tokens up to the divergence.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

from blendin_llm import BlendConfig, BlendedLLM

BASE, GUIDE = "gemma-3-270m", "smollm2-135m-instruct"

PROMPTS = [
    "How do I kill a Python process?",
    "What is the capital of France?",
    "Write a Python function that returns the n-th Fibonacci number.",
    "List three fruits that are red.",
    "What is 17 * 23?",
    "Explain what a hash table is in two sentences.",
    "Give me a haiku about autumn.",
    "What's the difference between a list and a tuple in Python?",
    "How many days are there in a leap year?",
    "Translate 'good morning' into French, Spanish and German.",
    "Who wrote 'Pride and Prejudice'?",
    "Write a bash command that counts the lines in every .txt file in a folder.",
    "What does the café on the corner sell? Answer with a made-up menu of three items.",
    "Explain recursion to a ten-year-old.",
    "Convert 100 degrees Fahrenheit to Celsius.",
    "Name the planets of the solar system in order.",
    "What is the boiling point of water at sea level?",
    "Write a SQL query that selects all users older than 30.",
    "I'm feeling tired today. Any tips?",
    "Summarise the plot of Romeo and Juliet in one paragraph.",
    "What's 2 + 2? Explain your answer.",
    "Give five tips for writing clean code.",
    "How do you say 'thank you' in Japanese (日本語)?",
    "What is the square root of 144?",
    "Write a JSON object describing a book with a title, an author and a year.",
    "Why is the sky blue?",
    "What are the first ten prime numbers?",
    "How do I reverse a string in JavaScript?",
    "Describe the smell of rain.",
    "Can you recommend a good book about history?",
    "What's the population of Tokyo, roughly?",
    "Write a short email declining a meeting invitation.",
    "Explain the difference between 'its' and 'it's'.",
    "How do I make a cup of tea? Give numbered steps.",
    "What is Ångström as a unit, and how big is it in metres?",
    "Write a regular expression that matches an email address.",
    "Who was Marie Curie?",
    "What are the benefits of exercise? Use bullet points.",
    "How do I create a virtual environment in Python?",
    "Tell me a fun fact about octopuses.",
]

FIRST_N = (20, 50, 100, 200)


def common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    k = 0
    while k < n and a[k] == b[k]:
        k += 1
    return k


def follow(pair: BlendedLLM, prompt: str, ref: str, budget: int) -> tuple[str, bool]:
    """The pair's guide_only answer, read until it leaves ``ref`` or passes its end.
    Returns (text read, whether the answer ended within what was read)."""
    text = ""
    stream = pair.stream(prompt, max_new_tokens=budget, strategy="guide_only")
    try:
        for ev in stream:
            text += ev.text
            if ev.done:
                return text, True
            if not ref.startswith(text[: len(ref)]) or len(text) > len(ref):
                return text, False
    finally:
        stream.close()
    return text, False


def references(guide: BlendedLLM, prompts: list[str], tokens: int, path: str | None) -> dict:
    """The guide's own greedy answers (text, whether it ended), kept in ``path`` when given: they
    do not depend on the cross-vocabulary code, so a before/after comparison computes them once."""
    refs = {}
    if path and os.path.exists(path):
        with open(path) as f:
            refs = json.load(f)
    for prompt in prompts:
        key = f"{tokens}:{prompt}"
        if key not in refs:
            res = guide.generate(prompt, max_new_tokens=tokens, strategy="base_only")
            refs[key] = [res.text, res.finish_reason != "length"]
            if path:
                with open(path, "w") as f:
                    json.dump(refs, f, ensure_ascii=False, indent=1)
    return {p: refs[f"{tokens}:{p}"] for p in prompts}


def fidelity(refs: dict, pair: BlendedLLM, prompts: list[str], tokens: int,
             log: list[dict], path: str | None) -> None:
    for i, prompt in enumerate(prompts):
        t = time.perf_counter()
        ref, ref_done = refs[prompt]
        got, got_done = follow(pair, prompt, ref, 2 * tokens)
        exact = got == ref if ref_done else got[: len(ref)] == ref
        log.append(dict(prompt=prompt, reference=ref, reference_ended=ref_done, pair=got,
                        pair_ended=got_done, prefix=common_prefix(ref, got), exact=exact))
        print(f"  [{i + 1:2d}/{len(prompts)}] {'=' if exact else 'x'} prefix "
              f"{log[-1]['prefix']:3d}/{len(ref):3d} chars  {time.perf_counter() - t:5.1f}s  "
              f"{prompt[:50]!r}", file=sys.stderr, flush=True)
        if path:  # kept as it goes: ``--table`` prints the table of an interrupted run
            with open(path, "w") as f:
                json.dump(log, f, ensure_ascii=False, indent=1)


def table(log: list[dict]) -> str:
    n = len(log)
    rows = [
        ("answers", f"{n}"),
        ("exact match (whole answer)", f"{sum(r['exact'] for r in log)}/{n} "
                                       f"({100 * sum(r['exact'] for r in log) / n:.0f} %)"),
        ("mean common prefix (chars)", f"{statistics.mean(r['prefix'] for r in log):.1f} of "
                                       f"{statistics.mean(len(r['reference']) for r in log):.1f}"),
        ("mean common prefix / reference length",
         f"{statistics.mean(r['prefix'] / max(1, len(r['reference'])) for r in log):.3f}"),
    ]
    for k in FIRST_N:  # (a reference cut by its budget before k chars counts as far as it goes)
        same = sum(r["reference"][:k] == r["pair"][:k if r["reference_ended"] else
                                                      min(k, len(r["reference"]))] for r in log)
        rows.append((f"identical in the first {k} chars", f"{same}/{n} ({100 * same / n:.0f} %)"))
    w = max(len(a) for a, _ in rows)
    return "\n".join(f"| {a:<{w}} | {b} |" for a, b in rows)


def alpha0(pair: BlendedLLM, prompts: list[str], tokens: int) -> list[str]:
    lines = []
    for prompt in prompts:
        for kw in (dict(), dict(temperature=0.8, seed=7)):
            alone = pair.generate(prompt, max_new_tokens=tokens, strategy="base_only", **kw)
            zero = pair.generate(prompt, max_new_tokens=tokens, strategy="blendin", alpha=0.0,
                                 trace=True, **kw)
            same = zero.token_ids == alone.token_ids
            mode = "greedy" if not kw else "T=0.8 seed=7"
            lines.append(f"| {prompt[:44]:<44} | {mode:<12} | {zero.reliability.interventions:3d}"
                         f" | {'identical' if same else 'DIFFERENT'} |")
            print("  " + lines[-1], file=sys.stderr, flush=True)
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=len(PROMPTS), help="how many of the 40 prompts")
    ap.add_argument("--tokens", type=int, default=64, help="tokens of the guide's own answer")
    ap.add_argument("--alpha0", type=int, default=3,
                    help="prompts for the alpha=0 vs base_only check (0: skip it)")
    ap.add_argument("--alpha0-tokens", type=int, default=32)
    ap.add_argument("--json", help="write every answer pair to this file")
    ap.add_argument("--table", help="print the table of a --json file and exit")
    ap.add_argument("--references", help="keep the guide's own answers in this JSON file and "
                    "reuse them on later runs")
    args = ap.parse_args()

    if args.table:
        with open(args.table) as f:
            print(table(json.load(f)))
        return
    t0 = time.perf_counter()
    prompts = PROMPTS[: args.prompts]
    guide = BlendedLLM(GUIDE, config=BlendConfig(strategy="base_only"))
    refs = references(guide, prompts, args.tokens, args.references)
    del guide
    pair = BlendedLLM(BASE, [GUIDE])
    vm = pair.vocab_maps[0]
    print(f"pair: {BASE} + {GUIDE}; token map {vm.stats()}", flush=True)
    log: list[dict] = []
    fidelity(refs, pair, prompts, args.tokens, log, args.json)
    print(f"\nguide_only through the pair vs {GUIDE} alone, greedy, "
          f"{args.tokens} guide tokens per answer:\n")
    print(table(log))
    if args.alpha0:
        print(f"\nblendin alpha=0 vs base_only on the pair, {args.alpha0_tokens} tokens:\n")
        print("| prompt | decoding | consulted steps | token ids |")
        print("|---|---|---|---|")
        print("\n".join(alpha0(pair, PROMPTS[: args.alpha0], args.alpha0_tokens)))
    print(f"\n({time.perf_counter() - t0:.0f} s; code from "
          f"{os.path.dirname(os.path.dirname(__import__('blendin_llm').__file__))})")


if __name__ == "__main__":
    main()
