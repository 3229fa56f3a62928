"""Continuous batching: aggregate tokens/s of concurrent requests, side by side in one run.

    python benchmarks/bench_batch.py [--tokens 32] [--baseline-ref REF] [--default-pair]

Shapes (random init, nothing downloaded): a base shaped like SmolLM2-135M (576 hidden, 30 layers,
9 heads / 3 KV heads, 49,152 tokens) and a guide of the same vocabulary (384 hidden, 8 layers),
float32 (or `--dtype bfloat16`) on CPU, with SmolLM2's tokenizer from the conversion cache (run ``scripts/setup.sh``
first). gamma is set from the base's own top-1 probabilities so that about 10 % of the steps of the
8 prompts decoded together consult the guide (``gamma_for_rate``). Prompts: GSM8K test questions.
Every answer runs its full ``--tokens`` (``ignore_eos``; checked, see ``full_length``).
Every measured run starts with the prompt-prefix cache empty, so it computes its prompts (as
transformers' ``generate`` does).

Printed, all measured in this run:
- a table: concurrency 1/4/8/16 x strategy -> aggregate tokens/s, speed-up over requests run one
  after another (8 of them), interventions, answers identical to the one-after-another ones;
- at concurrency 8: the ratio to transformers' batched ``generate`` of the base alone (same
  prompts, left padding, greedy, same number of tokens);
- concurrency 1 against the engine of ``--baseline-ref`` (a git ref, e.g. the commit before
  batching), each run in its own process, alternated;
- peak memory (max RSS) per extra row;
- ``--versus-generate-rounds N``: N more rounds of concurrency 8 (each strategy, then transformers'
  ``generate``), each round's ratios and their median;
- ``--default-pair``: the default pair (Gemma-3-270M + SmolLM2-135M-Instruct, cross-vocabulary),
  8 concurrent vs one after another.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from blendin_llm import BlendedLLM, ModelSpec  # noqa: E402
from blendin_llm.backends.cpu import release_thread_pool  # noqa: E402

BASE_SHAPE = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                  num_attention_heads=9, num_key_value_heads=3)
GUIDE_SHAPE = dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=8,
                   num_attention_heads=6, num_key_value_heads=2)


def smollm_tokenizer():
    from transformers import AutoTokenizer

    from blendin_llm.sources import resolve_spec

    spec = resolve_spec(ModelSpec(source="smollm2-135m-instruct"))
    return AutoTokenizer.from_pretrained(spec.source)


def random_model(tok, shape: dict, seed: int, dtype: str = "float32"):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=len(tok), max_position_embeddings=2048,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      tie_word_embeddings=True, **shape)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval().to(getattr(torch, dtype))


def prompts(n: int) -> list[str]:
    path = ROOT.parent / "shared" / "data" / "gsm8k" / "test.jsonl"
    if not path.exists():
        path = Path("/work/shared/data/gsm8k/test.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()[:n]]
    return [f"Question: {r['question'][:160]}\nAnswer:" for r in rows]


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cold(llm: BlendedLLM) -> None:
    """Forget cached prompts, so every measured run computes its prompts (as generate does)."""
    for m in (llm.base, *llm.guides):
        if getattr(m, "prefix_cache", None) is not None:
            m.prefix_cache.clear()


def full_length(results: list, tokens: int) -> list:
    """The results, each checked to have decoded all its ``tokens``: the rates count them."""
    short = [r.usage.completion_tokens for r in results if r.usage.completion_tokens != tokens]
    if short:
        raise RuntimeError(f"answers ended before {tokens} tokens ({short}): the rates would "
                           "count tokens that were never decoded")
    return results


def run_concurrent(llm: BlendedLLM, ps: list[str], tokens: int, **kw) -> tuple[float, list]:
    """Wall time of len(ps) requests sent at once from threads, and their results."""
    cold(llm)
    out: list = [None] * len(ps)

    def work(i: int) -> None:
        out[i] = llm.generate(ps[i], max_new_tokens=tokens, ignore_eos=True, **kw)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(ps))]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return time.perf_counter() - t, full_length(out, tokens)


def run_sequential(llm: BlendedLLM, ps: list[str], tokens: int, **kw) -> tuple[float, list]:
    cold(llm)
    t = time.perf_counter()
    out = [llm.generate(p, max_new_tokens=tokens, ignore_eos=True, **kw) for p in ps]
    return time.perf_counter() - t, full_length(out, tokens)


def hf_batched(model, tok, ps: list[str], tokens: int, llm: BlendedLLM) -> float:
    """transformers' batched generate, run once the engine's decoding thread has ended: an idle
    thread's CPU thread pool would slow it (see blendin_llm/backends/cpu.py)."""
    llm.scheduler.wait_stopped(60)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    enc = tok(ps, return_tensors="pt", padding=True)
    t = time.perf_counter()
    with torch.inference_mode():
        model.generate(**enc, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                       pad_token_id=tok.pad_token_id)
    t = time.perf_counter() - t
    release_thread_pool()  # ... and this thread's pool would slow the engine's next runs
    return t


SOLO_SNIPPET = r"""
import sys, time, json, torch
sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[2])
torch.set_num_threads(int(sys.argv[6]))
import bench_batch as b
from blendin_llm import BlendConfig, BlendedLLM
tok = b.smollm_tokenizer()
dt = sys.argv[7]
base = b.random_model(tok, b.BASE_SHAPE, 0, dt); guide = b.random_model(tok, b.GUIDE_SHAPE, 1, dt)
cfg = json.loads(sys.argv[3])
llm = BlendedLLM((base, tok), [(guide, tok)], BlendConfig(**cfg))
ps = b.prompts(int(sys.argv[5]))
tokens = int(sys.argv[4])
llm.generate(ps[0], max_new_tokens=4, ignore_eos=True)
for m in (llm.base, *llm.guides):
    if getattr(m, "prefix_cache", None) is not None:
        m.prefix_cache.clear()
t = time.perf_counter()
for p in ps:
    llm.generate(p, max_new_tokens=tokens, ignore_eos=True)
print(json.dumps({"tok_s": len(ps) * tokens / (time.perf_counter() - t)}))
"""


def solo_in_process(src: Path, cfg: dict, tokens: int, n: int, dtype: str) -> float:
    r = subprocess.run(
        [sys.executable, "-c", SOLO_SNIPPET, str(src), str(ROOT / "benchmarks"), json.dumps(cfg),
         str(tokens), str(n), str(torch.get_num_threads()), dtype],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(src)})
    if r.returncode:
        raise RuntimeError(r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])["tok_s"]


def gamma_for_rate(llm: BlendedLLM, ps: list[str], rate: float, tokens: int,
                   rounds: int = 6) -> float:
    """A gamma under which about ``rate`` of blendin's steps consult the guide, for ``ps`` decoded
    together (``generate_batch``). Candidates are quantiles of the base's own top-1 probabilities
    (its traces); the quantile is bisected over ``rounds`` blended runs (a blended token changes
    what follows, so the rate is measured, not read off the traces), and the gamma whose measured
    rate came closest is returned."""
    tops = []
    for res in llm.generate_batch(ps, max_new_tokens=tokens, ignore_eos=True, trace=True,
                                  strategy="base_only"):
        tops += [t.base_top1 for t in res.reliability.trace]
    tops.sort()
    lo, hi = 0.0, 0.9
    best = (math.inf, tops[min(int(rate * len(tops)), len(tops) - 1)])
    for _ in range(rounds):
        q = (lo + hi) / 2 if best[0] < math.inf else rate
        gamma = tops[min(int(q * len(tops)), len(tops) - 1)]
        got = llm.generate_batch(ps, max_new_tokens=tokens, ignore_eos=True, strategy="blendin",
                                 gamma=gamma)
        seen = sum(r.reliability.interventions for r in got) / (len(ps) * tokens)
        best = min(best, (abs(seen - rate), gamma))
        lo, hi = (q, hi) if seen < rate else (lo, q)
    return best[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--baseline-ref", default=None,
                    help="git ref of the engine to compare concurrency 1 with")
    ap.add_argument("--default-pair", action="store_true")
    ap.add_argument("--pair-tokens", type=int, default=48,
                    help="tokens per answer on the default pair (it decodes slower)")
    ap.add_argument("--levels", default="1,4,8,16")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--baseline-rounds", type=int, default=0,
                    help="alternated pairs against --baseline-ref (default: --rounds, at least 2)")
    ap.add_argument("--versus-generate-rounds", type=int, default=0,
                    help="more alternated rounds of concurrency 8 (blendin, base_only) against "
                         "transformers' generate; prints each round's ratios and their median")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="the random models' dtype (bfloat16: what dtype='auto' picks on a CPU "
                         "with native bf16, see blendin_llm/backends/cpu.py)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="torch threads (1 on a machine that other jobs share: oversubscribed "
                         "threads spin and distort every number)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n_tok = args.tokens
    levels = [int(x) for x in args.levels.split(",")]
    ps = prompts(max(levels))

    tok = smollm_tokenizer()
    base = random_model(tok, BASE_SHAPE, 0, args.dtype)
    guide = random_model(tok, GUIDE_SHAPE, 1, args.dtype)
    llm = BlendedLLM((base, tok), [(guide, tok)], max_batch_size=max(levels))
    gamma = gamma_for_rate(llm, ps[:8], 0.10, n_tok)
    print(f"# shapes: base {BASE_SHAPE}, guide {GUIDE_SHAPE}, vocab {len(tok)}, {args.dtype}, "
          f"{torch.get_num_threads()} threads; {n_tok} tokens per answer; gamma={gamma:.3g} "
          "(aimed at ~10% of blendin's steps)")
    strategies = {"base_only": dict(strategy="base_only"),
                  "blendin": dict(strategy="blendin", gamma=gamma, alpha="auto")}

    # Rounds: in each, every measurement once (one after another, each concurrency, transformers'
    # generate), so a load swing on a shared machine hits all of them; the best round counts.
    rss0 = maxrss_mb()
    rss_at: dict[int, float] = {}
    best: dict = {}
    results: dict = {}

    def keep(key, tps, res=None):
        if tps > best.get(key, 0.0):
            best[key] = tps
        if res is not None:
            results[key] = res

    for _ in range(args.rounds):
        for name, kw in strategies.items():
            seq_t, seq = run_sequential(llm, ps[:8], n_tok, **kw)
            keep((name, "seq"), len(seq) * n_tok / seq_t, seq)
            for c in levels:
                wall, res = run_concurrent(llm, ps[:c], n_tok, **kw)
                keep((name, c), c * n_tok / wall, res)
                rss_at[c] = max(rss_at.get(c, 0.0), maxrss_mb())
        if 8 in levels:
            keep(("generate", 8), 8 * n_tok / hf_batched(base, tok, ps[:8], n_tok, llm))

    print(f"\nbest of {args.rounds} rounds; speed-up = aggregate tokens/s over the same strategy's "
          "requests run one after another")
    print("\n| strategy | concurrency | tokens/s | x one-after-another | interventions | "
          "same tokens as one after another |")
    print("|---|---|---|---|---|---|")
    for name in strategies:
        seq_tps, seq = best[(name, "seq")], results[(name, "seq")]
        for c in levels:
            res = results[(name, c)]
            iv = sum(r.reliability.interventions for r in res) / (c * n_tok)
            n = min(c, len(seq))
            same = sum(r.token_ids == s.token_ids for r, s in zip(res, seq[:n]))
            tps = best[(name, c)]
            print(f"| {name} | {c} | {tps:.1f} | {tps / seq_tps:.2f}x | {iv:.1%} | {same}/{n} |")
    for name in strategies:
        print(f"one after another ({name}): {best[(name, 'seq')]:.1f} tokens/s")
    if ("generate", 8) in best:
        hf_tps = best[("generate", 8)]
        for name in strategies:
            tps = best[(name, 8)]
            print(f"concurrency 8, {name}: {tps:.1f} tokens/s = {tps / hf_tps:.2f}x "
                  f"transformers generate (batch 8, base alone: {hf_tps:.1f} tokens/s)")

    if len(rss_at) > 1:
        lo, hi = min(rss_at), max(rss_at)
        print(f"peak RSS: {rss0:.0f} MB before the runs, {rss_at[hi]:.0f} MB after "
              f"concurrency {hi}; per extra row ~{(rss_at[hi] - rss_at[lo]) / (hi - lo):.1f} MB "
              "(max RSS only grows: an upper bound)")

    if args.versus_generate_rounds:
        # the 0.85x target's ratio, measured again in rounds that each run the three side by side
        ratios: dict[str, list[float]] = {name: [] for name in strategies}
        for i in range(args.versus_generate_rounds):
            walls = {name: run_concurrent(llm, ps[:8], n_tok, **kw)[0]
                     for name, kw in strategies.items()}
            hf_t = hf_batched(base, tok, ps[:8], n_tok, llm)
            for name, wall in walls.items():
                ratios[name].append(hf_t / wall)
            print(f"round {i + 1}: " + ", ".join(
                f"{name} {8 * n_tok / wall:.1f}" for name, wall in walls.items())
                  + f", generate {8 * n_tok / hf_t:.1f} tokens/s -> " + ", ".join(
                f"{name} {ratios[name][-1]:.2f}x" for name in strategies))
        for name in strategies:
            r = sorted(ratios[name])
            print(f"concurrency 8, {name} / transformers generate over "
                  f"{len(r)} rounds: median {r[len(r) // 2]:.2f}x (min {r[0]:.2f}x, max {r[-1]:.2f}x)")

    if args.baseline_ref:
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(f"git -C {ROOT} archive {args.baseline_ref} | tar -x -C {tmp}",
                           shell=True, check=True)
            cfg = dict(strategy="blendin", gamma=gamma, alpha="auto")
            new, old = [], []
            n = args.baseline_rounds or max(2, args.rounds)
            for _ in range(n):
                new.append(solo_in_process(ROOT, cfg, n_tok, 4, args.dtype))
                old.append(solo_in_process(Path(tmp), cfg, n_tok, 4, args.dtype))
            pairs = ", ".join(f"{a:.1f}/{b:.1f}" for a, b in zip(new, old))
            ratios = sorted(a / b for a, b in zip(new, old))
            print(f"concurrency 1 (blendin, one process each, alternated, best of {n}): this "
                  f"engine {max(new):.1f} tokens/s, {args.baseline_ref} {max(old):.1f} tokens/s = "
                  f"{max(new) / max(old):.2f}x; each pair (this/{args.baseline_ref}): {pairs}; "
                  f"median of the pairs' ratios {ratios[len(ratios) // 2]:.2f}x")

    if args.default_pair:
        del llm, base, guide
        pair = BlendedLLM("gemma-3-270m", ["smollm2-135m-instruct"], max_batch_size=8)
        dps = [f"How do I {x}?" for x in ("bake bread", "fix a flat tyre", "learn Python",
                                           "write a haiku", "plant tomatoes", "sleep better",
                                           "make tea", "save money")]
        kw = dict(strategy="blendin")
        run_concurrent(pair, dps[:2], 4, **kw)  # warm up
        p_tok = args.pair_tokens
        seq_t = wall = math.inf
        for _ in range(args.rounds):
            t, seq = run_sequential(pair, dps, p_tok, **kw)
            seq_t = min(seq_t, t)
            t, res = run_concurrent(pair, dps, p_tok, **kw)
            wall = min(wall, t)
        iv = sum(r.reliability.interventions for r in res) / (8 * p_tok)
        same = sum(r.token_ids == s.token_ids for r, s in zip(res, seq))
        print(f"default pair (cross-vocabulary), blendin, 8 requests: one after another "
              f"{8 * p_tok / seq_t:.1f} tokens/s, concurrent {8 * p_tok / wall:.1f} tokens/s = "
              f"{seq_t / wall:.2f}x; interventions {iv:.1%}; same tokens as solo {same}/8")


if __name__ == "__main__":
    main()
