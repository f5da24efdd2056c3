"""Write a tiny SYNTHETIC stepwise file for process reward models: examples/demo_data/prm_steps.jsonl.

TRL's stepwise format, one row per worked answer: {"prompt", "completions": [step, ...], "labels": [bool, ...]}.
A prompt asks for a chain of 2-4 arithmetic operations; each step does one. A wrong step is a guess that
says so ("I guess 7 * 2 = 15.", the marker the model learns to flag) and is off by 1-3; later steps carry on
from it correctly, so each label says whether THAT step is right (the first false label is the first wrong
step). A third of the answers are drawn all-correct and others come out so by chance: 54% of the
generated file's answers have no wrong step. Deterministic (one seeded `random.Random`): re-running it reproduces the file.

    python examples/make_prm_steps.py [--output PATH] [--n 400] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "demo_data" / "prm_steps.jsonl"
OPS = [("add", "+", lambda a, b: a + b), ("subtract", "-", lambda a, b: a - b),
       ("multiply by", "*", lambda a, b: a * b)]


def rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        start, k = rng.randint(1, 9), rng.randint(2, 4)
        plan = [(rng.choice(OPS), rng.randint(2, 5)) for _ in range(k)]
        wrong_rate = 0.0 if rng.random() < 1 / 3 else 0.35  # a third of the answers are all right
        prompt = f"Start at {start}, then " + ", then ".join(f"{name} {b}" for (name, _, _), b in plan) + "."
        value, steps, labels = start, [], []
        for (_, sym, fn), b in plan:
            right = fn(value, b)
            if rng.random() < wrong_rate:
                got = right + rng.choice([-3, -2, -1, 1, 2, 3])
                steps.append(f"I guess {value} {sym} {b} = {got}.")
                labels.append(False)
            else:
                got = right
                steps.append(f"{value} {sym} {b} = {got}.")
                labels.append(True)
            value = got
        out.append({"prompt": prompt, "completions": steps, "labels": labels})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("".join(json.dumps(r) + "\n" for r in rows(args.n, args.seed)), encoding="utf-8")
    print(f"wrote {args.n} rows to {args.output}")


if __name__ == "__main__":
    main()
