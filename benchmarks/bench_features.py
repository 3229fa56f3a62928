"""Per-step cost of the uncertainty features, next to the step bookkeeping they replaced.

A decoding step that the base decides alone used to take ``log_softmax``, ``max`` and one
``.item()``; with the features it takes ``log_softmax``, one ``topk`` (K = 15), one small
``.tolist()`` and the tracker's plain-float statistics (``dist_stats``, ``Step``). Timed on
random logits as wide as the default pair's vocabulary (Gemma-3: 262,144), median of many steps:

    python benchmarks/bench_features.py [--width 262144] [--steps 300]

Prints microseconds per step for both and their ratio; compare with a forward pass of the base
(hundreds of milliseconds on CPU for Gemma-3-270M) to judge the share.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from blendin_llm import BlendConfig
from blendin_llm.reliability import ReliabilityTracker
from blendin_llm.uncertainty import NEGENTROPY_K


def old_step(logits: torch.Tensor, sums: list) -> None:
    logp = torch.log_softmax(logits, -1)
    top_lp, top_id = logp.max(-1)
    base_top1 = math.exp(top_lp.item())
    token = int(top_id)
    sums[0] += base_top1
    sums[1] += math.log(max(base_top1, 1e-30))
    sums[2] += token * 0


def new_step(logits: torch.Tensor, tracker: ReliabilityTracker) -> None:
    logp = torch.log_softmax(logits, -1)
    top_v, top_i = torch.topk(logp, NEGENTROPY_K)
    head = torch.cat([top_v, top_i[:1].to(top_v.dtype)]).tolist()
    base_top = head[:-1]
    tracker.step(base_top, head[0])


def timed(fn, xs, repeats: int = 3) -> float:
    best = []
    for _ in range(repeats):
        times = []
        for x in xs:
            t = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - t)
        best.append(statistics.median(times))
    return min(best) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=262_144)
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args()
    torch.manual_seed(0)
    xs = [torch.randn(args.width) * 3 for _ in range(args.steps)]
    sums = [0.0, 0.0, 0]
    tracker = ReliabilityTracker(BlendConfig(), "blendin", ["g"], gated=True, trace=False)
    for x in xs[:20]:  # warm-up
        old_step(x, sums)
        new_step(x, tracker)
    t_old = timed(lambda x: old_step(x, sums), xs)
    tracker = ReliabilityTracker(BlendConfig(), "blendin", ["g"], gated=True, trace=False)
    t_new = timed(lambda x: new_step(x, tracker), xs)
    t0 = time.perf_counter()
    tracker.finish()
    t_finish = (time.perf_counter() - t0) * 1e6
    print(f"# width={args.width} steps={args.steps} threads={torch.get_num_threads()}")
    print(f"{'step':34s} {'us/step':>9s}")
    print(f"{'before (log_softmax, max, item)':34s} {t_old:9.1f}")
    print(f"{'with features (topk 15, tolist)':34s} {t_new:9.1f}")
    print(f"ratio with/before: {t_new / t_old:.2f}; difference {t_new - t_old:.1f} us/step; "
          f"finish() over {len(tracker.steps)} steps: {t_finish:.0f} us")


if __name__ == "__main__":
    main()
