"""Ray Serve replicas: two concurrent long requests on one replica vs on two, side by side in one
run (a local Ray cluster on this machine's CPUs).

    python benchmarks/bench_ray.py [--tokens 128] [--rounds 3] [--shape small|smollm]

Models (random init, SmolLM2's tokenizer; run ``scripts/setup.sh`` first), float32, one CPU (one
torch thread) per replica: ``--shape small``, the base and guide of ``bench_remote.py`` (256 hidden
x 6 layers and 192 x 2), where a step costs little more for two rows than for one, so one replica
batching both requests is hard to beat; ``--shape smollm``, the SmolLM2-135M-shaped base (576 x 30)
and 384 x 8 guide of ``bench_batch.py``, where a step's cost grows with its rows. Two applications are deployed at once, ``/one`` with one replica and ``/two`` with two;
each round sends the same two requests (greedy, ``ignore_eos``, ``--tokens`` each) at the same
time to each, alternately. Printed: the best wall time of each and their ratio. One replica decodes
the two requests together in its batch; two replicas decode one each on their own CPU.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--shape", choices=("small", "smollm"), default="small",
                    help="small: bench_remote's 256x6 base and 192x2 guide; smollm: bench_batch's "
                         "SmolLM2-135M-shaped base (576x30) and 384x8 guide")
    args = ap.parse_args()
    os.environ.setdefault("BLENDIN_CPU_DTYPE", "float32")

    import openai
    import ray
    from ray import serve

    from bench_batch import prompts, smollm_tokenizer
    import bench_batch
    import bench_remote
    from bench_remote import peaked_model
    from serving import free_port

    from blendin_llm.server.ray_serve import deployment

    tok = smollm_tokenizer()
    tmp = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    shapes = bench_remote if args.shape == "small" else bench_batch
    for name, shape, seed in (("base", shapes.BASE_SHAPE, 0), ("guide", shapes.GUIDE_SHAPE, 1)):
        peaked_model(tok, shape, seed, 12.0).save_pretrained(tmp / name)
        tok.save_pretrained(tmp / name)
    env = {k: os.environ[k] for k in ("BLENDIN_CPU_DTYPE", "HF_HUB_OFFLINE",
                                      "TRANSFORMERS_OFFLINE") if k in os.environ}
    # three replicas at once (one, then two) of one logical CPU each; the idle one uses none
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": env})
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    ps = prompts(2)
    try:
        for n, prefix in ((1, "one"), (2, "two")):
            app = deployment(str(tmp / "base"), [str(tmp / "guide")], replicas=n,
                             served_name="blend", name=f"blendin-{prefix}")
            serve.run(app, route_prefix=f"/{prefix}", name=prefix)
        clients = {p: openai.OpenAI(base_url=f"http://127.0.0.1:{port}/{p}/v1", api_key="x",
                                    timeout=600, max_retries=0) for p in ("one", "two")}

        def burst(client, tokens: int) -> float:
            def ask(p: str):
                return client.chat.completions.create(
                    model="blend", messages=[{"role": "user", "content": p}],
                    max_tokens=tokens, extra_body={"ignore_eos": True})

            t = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                got = list(pool.map(ask, ps))
            assert all(g.usage.completion_tokens == tokens for g in got)
            return time.perf_counter() - t

        for c in clients.values():  # warm: every replica has run once
            burst(c, 8)
            burst(c, 8)
        best = {p: float("inf") for p in clients}
        for _ in range(args.rounds):
            for p, c in clients.items():
                best[p] = min(best[p], burst(c, args.tokens))
        print(f"\n2 concurrent requests x {args.tokens} tokens, {args.shape} shapes, "
              f"{os.cpu_count()} CPU cores, best of {args.rounds}")
        print("| replicas | wall s | vs one replica |")
        print("|---:|---:|---:|")
        print(f"| 1 | {best['one']:.2f} | 1.00x |")
        print(f"| 2 | {best['two']:.2f} | {best['two'] / best['one']:.2f}x |")
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
