"""How fast the command line starts: ``blendin --help``, ``scripts/setup.sh`` with nothing to do,
and a whole second ``examples/demo.sh`` run (set up, presets converted), each the median of N
runs, wall-clock, from a checkout's own ``.venv``.

    python benchmarks/startup.py                          # this checkout
    python benchmarks/startup.py --baseline ../old-copy   # and another checkout, with the ratios
    python benchmarks/startup.py --runs 5 --no-demo

Run ``bash examples/demo.sh`` once first (in each checkout) so that setup and the conversions are
done; ``BLENDIN_CACHE`` is passed through. On a shared machine the absolute seconds move with the
load; the ratios against a baseline measured in the same session are what to compare.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time
from pathlib import Path

QUESTION = "What is the capital of France?"


def _seconds(cmd: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
                   env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    return time.perf_counter() - t0


def measure(repo: Path, runs: int, demo: bool) -> dict[str, list[float]]:
    """Wall seconds of each command, ``runs`` times, in ``repo``."""
    cmds = {"blendin --help": [str(repo / ".venv" / "bin" / "blendin"), "--help"],
            "setup.sh, nothing to do": ["bash", "scripts/setup.sh"]}
    if demo:
        cmds["demo.sh, second run"] = ["bash", "examples/demo.sh", QUESTION]
    return {name: [_seconds(cmd, repo) for _ in range(runs)] for name, cmd in cmds.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    ap.add_argument("--baseline", type=Path, help="another checkout to compare with")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-demo", dest="demo", action="store_false")
    args = ap.parse_args()
    now = measure(args.repo.resolve(), args.runs, args.demo)
    base = measure(args.baseline.resolve(), args.runs, args.demo) if args.baseline else None
    print(f"median of {args.runs} runs, wall seconds; load average {os.getloadavg()[0]:.1f}")
    for name, secs in now.items():
        line = f"  {name:<26} {statistics.median(secs):7.2f} s  (runs: " \
               f"{', '.join(f'{s:.2f}' for s in secs)})"
        if base:
            b = statistics.median(base[name])
            line += f"   baseline {b:7.2f} s, {b / statistics.median(secs):5.1f}x faster"
        print(line)


if __name__ == "__main__":
    main()
