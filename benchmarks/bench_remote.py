"""A remote base (``RemoteModel``) against a real server, side by side in one run: gated chunked
speculation vs the reference pattern (one request per token), and both against the in-process
blend of the same models.

    python benchmarks/bench_remote.py [--prompts 8] [--tokens 64] [--rate 0.1] [--rounds 2]

Models (random init, nothing downloaded): a base of 256 hidden x 6 layers (``--base-hidden``,
``--base-layers``) and a guide of 192 x 2,
both with SmolLM2's tokenizer (49,152 tokens; from the conversion cache: run
``scripts/setup.sh`` first) and an output layer scaled so that their next-token distributions are
peaked like a trained model's (the base's mean top-1 probability is printed). The base is served
by ``blendin serve --strategy base_only`` in its own process on loopback (float32, its prefix cache
on, as vLLM's ``--enable-prefix-caching``); the guide runs in this process. gamma is set from the
base's own top-1 probabilities for about ``--rate`` interventions. Prompts: GSM8K test
questions; greedy; every answer runs its full ``--tokens`` (``ignore_eos``); answers one at a time.

Printed, all measured in this run (best of ``--rounds`` alternated rounds for the times):
- per pattern: round trips per answer and per generated token, wall time per answer, and the
  ratio to the reference pattern;
- token agreement with the in-process blend (greedy, positionwise), and with the in-process blend
  whose models are cut to their top-k as a remote one is (what explains the differences).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

import torch  # noqa: E402

from blendin_llm import BlendConfig, BlendedLLM, ModelSpec, RemoteModel  # noqa: E402
from compare import TopK  # noqa: E402

BASE_SHAPE = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=6,
                  num_attention_heads=4, num_key_value_heads=2)
GUIDE_SHAPE = dict(hidden_size=192, intermediate_size=512, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2)


def peaked_model(tok, shape: dict, seed: int, scale: float):
    """A random model whose output layer is scaled up: peaked distributions, as trained."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=len(tok), max_position_embeddings=2048,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      tie_word_embeddings=False, **shape)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(scale)
    return model


def agreement(a: list[list[int]], b: list[list[int]]) -> float:
    same = sum(sum(x == y for x, y in zip(p, q)) for p, q in zip(a, b))
    return same / sum(max(len(p), len(q)) for p, q in zip(a, b))


def run(llm: BlendedLLM, ps: list[str], tokens: int, gamma: float) -> tuple[float, list]:
    t = time.perf_counter()
    out = [llm.generate(p, max_new_tokens=tokens, ignore_eos=True, gamma=gamma) for p in ps]
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rate", type=float, default=0.1)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--scale", type=float, default=12.0, help="output-layer scale (peakedness)")
    ap.add_argument("--chunk", type=int, default=32)
    ap.add_argument("--base-hidden", type=int, default=256,
                    help="the base's width (64 with --base-layers 2: a server step of ~2 ms)")
    ap.add_argument("--base-layers", type=int, default=6)
    ap.add_argument("--top-k", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1, help="torch threads here and in the server")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("BLENDIN_CPU_DTYPE", "float32")

    from bench_batch import prompts, smollm_tokenizer, gamma_for_rate
    from serving import ServeProcess

    tok = smollm_tokenizer()
    tmp = Path(tempfile.mkdtemp(prefix="bench-remote-"))
    base_shape = dict(BASE_SHAPE, hidden_size=args.base_hidden,
                      intermediate_size=3 * args.base_hidden, num_hidden_layers=args.base_layers)
    for name, shape, seed in (("base", base_shape, 0), ("guide", GUIDE_SHAPE, 1)):
        peaked_model(tok, shape, seed, args.scale).save_pretrained(tmp / name)
        tok.save_pretrained(tmp / name)
    env_threads = {"OMP_NUM_THREADS": str(args.threads)}
    os.environ.update(env_threads)
    server = ServeProcess("--base", str(tmp / "base"), "--strategy", "base_only",
                          "--served-model-name", "base", log_path=str(tmp / "server.log"))
    server.start()
    ps = prompts(args.prompts)
    try:
        base, guide = ModelSpec(str(tmp / "base")), ModelSpec(str(tmp / "guide"))
        local = BlendedLLM(base, [guide], BlendConfig(strategy="blendin"))
        gamma = gamma_for_rate(local, ps, args.rate, args.tokens, rounds=4)
        tops = [t.base_top1 for r in local.generate_batch(
            ps, max_new_tokens=args.tokens, ignore_eos=True, trace=True, strategy="base_only")
            for t in r.reliability.trace]
        _, want = run(local, ps, args.tokens, gamma)
        TopK.k = args.top_k
        cut = BlendedLLM(TopK.load(base), [guide], BlendConfig(strategy="blendin"))
        _, want_cut = run(cut, ps, args.tokens, gamma)
        server.wait()
        url = server.url + "/v1"
        chunked = RemoteModel(url, "base", tokenizer=str(tmp / "base"), top_k=args.top_k,
                              chunk=args.chunk)
        per_token = RemoteModel(url, "base", tokenizer=str(tmp / "base"), top_k=args.top_k,
                                chunk=1)
        pats = {"chunked": BlendedLLM(chunked, [guide], BlendConfig(strategy="blendin")),
                "one request per token": BlendedLLM(per_token, [guide],
                                                    BlendConfig(strategy="blendin"))}
        backend = {"chunked": chunked, "one request per token": per_token}
        best: dict[str, float] = {}
        trips: dict[str, float] = {}
        answers: dict[str, list] = {}
        run(pats["chunked"], ps[:1], 8, gamma)  # warm both paths (connections, caches)
        run(pats["one request per token"], ps[:1], 8, gamma)
        for _ in range(args.rounds):
            for name, llm in pats.items():
                before = backend[name].requests
                wall, res = run(llm, ps, args.tokens, gamma)
                best[name] = min(best.get(name, float("inf")), wall)
                trips[name] = (backend[name].requests - before) / len(ps)
                answers[name] = [r.token_ids for r in res]
        interventions = sum(r.reliability.interventions for r in want) / (len(ps) * args.tokens)
        t = time.perf_counter()
        local.generate(ps[0], max_new_tokens=args.tokens, ignore_eos=True, strategy="base_only")
        step_ms = (time.perf_counter() - t) / args.tokens * 1000
        print(f"\nbase {args.base_hidden} hidden x {args.base_layers} layers: {step_ms:.1f} ms "
              "per token decoded alone in process (what the server spends per token)")
        print(f"base mean top-1 probability {sum(tops) / len(tops):.2f}; gamma {gamma:.3f}; "
              f"interventions {interventions:.1%} (in-process blend); {len(ps)} answers x "
              f"{args.tokens} tokens; top_k {args.top_k}, chunk {args.chunk}")
        ref = best["one request per token"]
        print("\n| pattern | round trips / answer | per token | wall s / answer | vs one request"
              " per token | same tokens as in-process | same as in-process cut to top-k |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name in pats:
            ids = answers[name]
            print(f"| {name} | {trips[name]:.1f} | {trips[name] / args.tokens:.2f} | "
                  f"{best[name] / len(ps):.2f} | {best[name] / ref:.2f}x | "
                  f"{agreement(ids, [r.token_ids for r in want]):.1%} | "
                  f"{agreement(ids, [r.token_ids for r in want_cut]):.1%} |")
        print(json.dumps({"gamma": gamma, "interventions": interventions,
                          "trips": trips, "wall": best}))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
