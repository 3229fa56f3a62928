"""float32 vs bfloat16 on this CPU, on the default pair, side by side in one run.

    python benchmarks/bench_cpu_dtype.py [--prompts 8] [--tokens 32] [--rounds 2]

Each dtype runs in its own process (``BLENDIN_CPU_DTYPE`` set, so ``dtype="auto"`` loads that
dtype), alternating, best round counted: single-stream tokens/s for base_only and blendin (greedy,
``ignore_eos``), peak RSS (max resident memory of the process), and the greedy blendin answers,
compared across dtypes (identical answers, first differing token). Prompts: GSM8K test questions.
Needs the default pair converted (``scripts/setup.sh``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time
import torch
from blendin_llm import BlendedLLM
n_prompts, tokens = int(sys.argv[1]), int(sys.argv[2])
rows = [json.loads(l) for l in open(sys.argv[3]).read().splitlines()[:n_prompts]]
ps = [r["question"] for r in rows]
llm = BlendedLLM("gemma-3-270m", ["smollm2-135m-instruct"], prefix_cache_tokens=0)
out = {"dtype": str(llm.base.model.dtype), "guide_dtype": str(llm.guides[0].model.dtype)}
llm.generate(ps[0], max_new_tokens=2)
for strategy in ("base_only", "blendin"):
    t = time.perf_counter(); n = 0; answers = []
    for p in ps:
        r = llm.generate(p, max_new_tokens=tokens, ignore_eos=True, strategy=strategy)
        n += r.usage.completion_tokens; answers.append(r.token_ids)
    out[strategy] = n / (time.perf_counter() - t)
    out[strategy + "_answers"] = answers
out["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def run(dtype: str, n: int, tokens: int, data: Path) -> dict:
    env = {**os.environ, "BLENDIN_CPU_DTYPE": dtype, "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", CHILD, str(n), str(tokens), str(data)],
                       capture_output=True, text=True, env=env)
    if r.returncode:
        raise RuntimeError(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--data", default=None, help="GSM8K test JSONL (default: "
                    "../shared/data/gsm8k/test.jsonl beside the checkout)")
    args = ap.parse_args()
    data = Path(args.data) if args.data else next(
        (p for p in (ROOT.parent / "shared" / "data" / "gsm8k" / "test.jsonl",
                     Path("/work/shared/data/gsm8k/test.jsonl")) if p.exists()), None)
    if data is None:
        sys.exit("no GSM8K data: pass --data PATH")
    best: dict[str, dict] = {}
    for _ in range(args.rounds):
        for dtype in ("float32", "bfloat16"):
            got = run(dtype, args.prompts, args.tokens, data)
            if dtype not in best:
                best[dtype] = got
            else:
                for k in ("base_only", "blendin"):
                    best[dtype][k] = max(best[dtype][k], got[k])
                best[dtype]["maxrss_mb"] = min(best[dtype]["maxrss_mb"], got["maxrss_mb"])
    f, b = best["float32"], best["bfloat16"]
    print(f"default pair, {args.prompts} GSM8K questions x {args.tokens} tokens, single stream, "
          f"best of {args.rounds} alternated rounds, torch threads {os.cpu_count()}")
    print("\n| dtype | base_only tokens/s | blendin tokens/s | peak RSS |")
    print("|---|---:|---:|---:|")
    for name, r in (("float32", f), ("bfloat16", b)):
        print(f"| {name} ({r['dtype']}) | {r['base_only']:.1f} | {r['blendin']:.1f} | "
              f"{r['maxrss_mb']:.0f} MB |")
    print(f"\nbfloat16 / float32: base_only {b['base_only'] / f['base_only']:.2f}x, blendin "
          f"{b['blendin'] / f['blendin']:.2f}x, memory {b['maxrss_mb'] / f['maxrss_mb']:.2f}x")
    same = 0
    firsts = []
    for x, y in zip(f["blendin_answers"], b["blendin_answers"]):
        if x == y:
            same += 1
        else:
            firsts.append(next((i for i, (p, q) in enumerate(zip(x, y)) if p != q),
                               min(len(x), len(y))))
    print(f"greedy blendin answers identical in both dtypes: {same}/{len(f['blendin_answers'])}"
          + (f"; where they differ, the first differing token is at positions {firsts}"
             if firsts else ""))


if __name__ == "__main__":
    main()
