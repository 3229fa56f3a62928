"""Decoding speed of BlendedLLM relative to transformers' own `generate` for the base alone.

Measured side by side in one process on the same randomly initialised models (nothing downloaded):
tokens/s of `blendin` at gammas giving ~0 %, ~10 % and 100 % interventions, and of `base_only`,
each divided by tokens/s of `model.generate(do_sample=False)` on the base.

    python benchmarks/bench_decode.py                 # "small" shapes, CPU
    python benchmarks/bench_decode.py --size tiny     # seconds
    python benchmarks/bench_decode.py --device cuda   # where a GPU is present

The ~10 % gamma is the 10th percentile of the base's top-1 probabilities in a traced base-only run
on the same prompts; the measured intervention rate is printed next to each row.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tiny import make_tokenizer  # noqa: E402

from blendin_llm import BlendConfig, BlendedLLM, ModelSpec  # noqa: E402

SIZES = {
    #        base (hidden, layers)   guide (hidden, layers)   logits width
    "tiny": ((64, 2), (32, 2), 512),
    "small": ((512, 8), (256, 4), 32000),
}
PROMPTS = [
    "User: Write a short story about a fox.\nAssistant:",
    "Question: what is 12 + 30? Answer:",
    "The quick brown fox jumps over the lazy dog. Then",
]


def build(tok, hidden, layers, width, seed, device):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=width, hidden_size=hidden, intermediate_size=4 * hidden,
                      num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=4,
                      max_position_embeddings=2048, initializer_range=0.2,
                      eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).to(device).eval()


def timed(fn, repeats, before=None):
    times = []
    for _ in range(repeats):
        if before is not None:
            before()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        n = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t, n))
    return times[0][1] / statistics.median(t for t, _ in times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=SIZES, default="small")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    (bh, bl), (gh, gl), width = SIZES[args.size]
    tok = make_tokenizer()
    base = build(tok, bh, bl, width, 0, args.device)
    guide = build(tok, gh, gl, width, 1, args.device)

    def spec(m, name):
        return ModelSpec(model=m, tokenizer=tok, prompt_format="raw", name=name)

    llm = BlendedLLM(spec(base, "base"), [spec(guide, "guide")], BlendConfig())
    n = args.new_tokens
    ids = [torch.tensor([tok(p).input_ids], device=args.device) for p in PROMPTS]

    def hf_generate():
        with torch.inference_mode():
            for x in ids:
                base.generate(x, do_sample=False, max_new_tokens=n, min_new_tokens=n,
                              pad_token_id=tok.pad_token_id)
        return n * len(ids)

    rates: dict[str, float] = {}

    def ours(**kw):
        def run():
            total = 0
            for p in PROMPTS:
                r = llm.generate(p, max_new_tokens=n, ignore_eos=True, **kw)
                total += r.usage.completion_tokens
                rates.setdefault(str(kw), []).append(r.reliability.intervention_rate)
            return total
        return run

    traced = [llm.generate(p, max_new_tokens=n, strategy="base_only", trace=True, ignore_eos=True)
              for p in PROMPTS]
    top1 = sorted(t.base_top1 for r in traced for t in r.reliability.trace)
    gamma10 = top1[len(top1) // 10]

    cases = [
        ("transformers generate (base)", hf_generate, None),
        ("base_only", ours(strategy="base_only"), dict(strategy="base_only")),
        ("blendin gamma=0", ours(gamma=0.0), dict(gamma=0.0)),
        (f"blendin gamma={gamma10:.3f}", ours(gamma=gamma10), dict(gamma=gamma10)),
        ("blendin gamma=1.01", ours(gamma=1.01), dict(gamma=1.01)),
    ]
    for _, fn, _ in cases:  # warm-up
        fn()
    rates.clear()
    # transformers' generate runs once the engine's decoding thread has ended: an idle thread's CPU
    # thread pool would slow it (see blendin_llm/backends/cpu.py)
    results = [(label, timed(fn, args.repeats, None if kw else lambda: llm.scheduler.wait_stopped(60)), kw)
               for label, fn, kw in cases]
    ref = results[0][1]
    print(f"# size={args.size} device={args.device} new_tokens={n} prompts={len(PROMPTS)} "
          f"repeats={args.repeats} threads={torch.get_num_threads()}")
    print(f"# base hidden={bh} layers={bl}; guide hidden={gh} layers={gl}; logits width={width}")
    print(f"{'run':32s} {'tok/s':>9s} {'ratio':>7s} {'interventions':>14s}")
    for label, tps, kw in results:
        rate = "" if kw is None else f"{statistics.mean(rates[str(kw)]):.1%}"
        print(f"{label:32s} {tps:9.1f} {tps / ref:7.2f} {rate:>14s}")


if __name__ == "__main__":
    main()
