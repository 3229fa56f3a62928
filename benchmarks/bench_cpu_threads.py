"""A forward pass in a background thread, with and without the caller's idle CPU thread pool.

    python benchmarks/bench_cpu_threads.py [--dtype bfloat16] [--threads 2] [--steps 30]

torch runs its CPU kernels on an OpenMP thread pool per calling thread. ``BlendedLLM`` decodes in a
background thread while the thread that loaded the models keeps its own pool; with more OpenMP
threads than CPUs, GNU OpenMP sleeps at its barriers instead of spinning. This script times one
batch-8 decoding step of a SmolLM2-135M-shaped random model (576 hidden, 30 layers, 49,152 tokens;
nothing downloaded) three ways, side by side in one process, and prints the ratios:

1. in the main thread (the pool that loaded the model is its own);
2. in a new thread while the main thread's pool is still alive (how decoding ran before);
3. in a new thread after the main thread released its pool (``backends.cpu.release_thread_pool``,
   what ``BlendedLLM`` does now).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from blendin_llm.backends.cpu import release_thread_pool  # noqa: E402


def model(dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                      num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                      max_position_embeddings=2048, tie_word_embeddings=True)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval().to(dtype)


def step_ms(m, steps: int) -> float:
    """ms per batch-8 one-token step after a 60-token prompt, in the calling thread."""
    x = torch.randint(0, 1000, (8, 60))
    with torch.inference_mode():
        past = m(input_ids=x, use_cache=True).past_key_values
        t = time.perf_counter()
        for _ in range(steps):
            m(input_ids=x[:, :1], past_key_values=past, use_cache=True, logits_to_keep=1)
            past.crop(-1)  # back to the prompt: every step costs the same
        return (time.perf_counter() - t) / steps * 1000


def in_thread(m, steps: int) -> float:
    out: list[float] = []
    t = threading.Thread(target=lambda: out.append(step_ms(m, steps)))
    t.start()
    t.join()
    return out[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    m = model(getattr(torch, args.dtype))
    step_ms(m, 2)  # warm-up (kernel selection, allocator)
    best = {"main": 1e9, "kept": 1e9, "released": 1e9}
    for _ in range(args.rounds):  # alternated; the best of each counts
        best["main"] = min(best["main"], step_ms(m, args.steps))  # (re)creates the main pool
        best["kept"] = min(best["kept"], in_thread(m, args.steps))
        released = release_thread_pool()
        best["released"] = min(best["released"], in_thread(m, args.steps))
    print(f"# {args.dtype}, {args.threads} torch threads, batch 8, best of {args.rounds} rounds; "
          f"release_thread_pool available: {released}")
    print("| where the step runs | ms per step | vs main thread |")
    print("|---|---:|---:|")
    for key, label in (("main", "main thread"),
                       ("kept", "background thread, main thread's pool alive"),
                       ("released", "background thread, main thread's pool released")):
        print(f"| {label} | {best[key]:.1f} | {best[key] / best['main']:.2f}x |")
    print(f"releasing the pool speeds the background thread up {best['kept'] / best['released']:.2f}x")


if __name__ == "__main__":
    main()
