"""Record the default pair's outputs, so that a later change of layout or refactoring can be checked
to change no behaviour (``tests/integration/test_default_pair.py::test_outputs_match_the_recorded_release``).

    python scripts/record_outputs.py [--out tests/integration/data/default_pair_outputs.json]

Greedy, float32 on CPU (as the tests run), 24 tokens, for a few prompts and strategies; each record
keeps the text, the token ids and the reliability record's main numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

PROMPTS = [
    "What is the capital of France?",
    "What is 12 + 30?",
    [{"role": "system", "content": "Answer in one short sentence."},
     {"role": "user", "content": "Why is the sky blue?"}],
]
STRATEGIES = ["blendin", "base_only", "guide_only"]


def record() -> list[dict]:
    os.environ.setdefault("BLENDIN_CPU_DTYPE", "float32")
    from blendin_llm import BlendConfig, BlendedLLM

    llm = BlendedLLM("gemma-3-270m", ["smollm2-135m-instruct"], BlendConfig())
    out = []
    for prompt in PROMPTS:
        for strategy in STRATEGIES:
            res = llm.generate(prompt, max_new_tokens=24, strategy=strategy)
            rel = res.reliability
            out.append({"prompt": prompt, "strategy": strategy, "text": res.text,
                        "token_ids": res.token_ids, "finish_reason": res.finish_reason,
                        "interventions": rel.interventions, "tokens": rel.tokens,
                        "score": rel.score, "flagged": rel.flagged})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="tests/integration/data/default_pair_outputs.json")
    args = ap.parse_args()
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip()
    data = {"recorded_at": rev, "outputs": record()}
    Path(args.out).write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    print(f"{len(data['outputs'])} outputs recorded at {rev} in {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
