"""Write a small seeded arithmetic data set (generic JSONL: prompt, answer, id, steps).

    python scripts/make_arithmetic.py out.jsonl [--n 100] [--seed 0]

Half one-step questions ("What is 17 plus 5?"), half two-step ones ("What is 4 plus 7 minus 2?",
"Ann has 7 pens, gives away 3 and then finds 2. How many pens does Ann have now?"), small numbers,
so that a tiny pair is neither always right nor always wrong. ``--fewshot FILE`` also writes three
exemplars (another seed) in the same format, answered "The answer is N.".
"""

from __future__ import annotations

import argparse
import json
import random

NAMES = ["Ann", "Ben", "Cara", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jill"]
THINGS = ["apples", "pens", "cards", "stamps", "marbles", "books", "shells", "coins"]


def one_step(rng: random.Random) -> tuple[str, int]:
    op = rng.choice("+-*")
    if op == "*":
        a, b = rng.randint(2, 9), rng.randint(2, 5)
        return f"What is {a} times {b}?", a * b
    a, b = rng.randint(5, 20), rng.randint(1, 9)
    if op == "-":
        return f"What is {a} minus {b}?", a - b
    return f"What is {a} plus {b}?", a + b


def two_step(rng: random.Random) -> tuple[str, int]:
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    kind = rng.randrange(3)
    if kind == 0:
        a, b, c = rng.randint(2, 9), rng.randint(2, 9), rng.randint(1, 5)
        return f"What is {a} plus {b} minus {c}?", a + b - c
    if kind == 1:
        a, b = rng.randint(3, 9), rng.randint(2, 6)
        return (f"{name} has {a} {thing} and gets {b} more. How many {thing} does {name} have "
                "now?", a + b)
    a, b, c = rng.randint(5, 9), rng.randint(2, 4), rng.randint(1, 3)
    return (f"{name} has {a} {thing}, gives away {b} and then finds {c}. How many {thing} does "
            f"{name} have now?", a - b + c)


def make(n: int = 100, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        steps = 1 if i % 2 == 0 else 2
        q, a = one_step(rng) if steps == 1 else two_step(rng)
        rows.append({"id": f"a{i:03d}", "prompt": q, "answer": str(a), "steps": steps})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fewshot", help="also write 3 exemplars to this file")
    args = ap.parse_args()
    write(args.out, make(args.n, args.seed))
    if args.fewshot:
        write(args.fewshot, fewshot())


def fewshot() -> list[dict]:
    return [{"prompt": r["prompt"], "answer": f"The answer is {r['answer']}."}
            for r in make(4, seed=10_000)[:3]]


def write(path: str, rows: list[dict]) -> None:
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
