"""Scoring with the prompt computed once per prompt group against every sequence alone, on HH data.

    .venv/bin/python bench/prompt_sharing.py --backbone smollm2 --pairs 200 --n 4 --repeats 3

Two workloads from the last --pairs pairs of the shared HH file (held out by every bench's training split):
  pairs       each pair's chosen and rejected (what `rewardkit eval` and training's eval score);
  best-of-n   each prompt with --n responses: its chosen and rejected, then answers taken from the next pairs
              (stand-ins for sampled responses: the timing depends on lengths, not on what the answers say);
scored by `run_model` (what `score`, `rank`, `bon`, `filter`, `make-pairs`, `eval` and the server call) with
`share_prompts` on and off, alternated, in one process, at the scorer's default precision on this machine
(bf16 autocast where the CPU has native bf16) or --fp32. Prints tokens computed, seconds (median of
--repeats), the ratio, and the agreement: largest |score difference| and pairs / best picks that change.
Without --model-dir the backbone's initial model (seeded random value head) is scored.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BACKBONES, hh_rows, make_initial_model, table, work_dir  # noqa: E402


def workloads(rows: list[dict], n: int) -> dict[str, tuple[list, list, int]]:
    """name -> (prompts, responses, responses per prompt), from HH rows split as rewardkit reads them."""
    import tempfile

    from rewardkit.data.pairs import load_preferences
    from rewardkit.io import write_jsonl

    with tempfile.TemporaryDirectory() as d:
        write_jsonl(Path(d) / "x.jsonl", rows)
        examples, _ = load_preferences(str(Path(d) / "x.jsonl"))
    pool = [x for e in examples for x in (e.chosen, e.rejected)]
    pairs = ([e.prompt for e in examples for _ in (0, 1)], pool, 2)
    prompts, responses = [], []
    for i, e in enumerate(examples):
        prompts += [e.prompt] * n
        responses += [pool[(2 * i + j) % len(pool)] for j in range(n)]
    return {"pairs": pairs, f"best-of-{n}": (prompts, responses, n)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", help="a saved reward model (a decoder: encoders never share prompts)")
    ap.add_argument("--backbone", default="smollm2", choices=sorted(BACKBONES))
    ap.add_argument("--pairs", type=int, default=200, help="the last N pairs of the HH file")
    ap.add_argument("--n", type=int, default=4, help="responses per prompt in the best-of-n workload")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--fp32", action="store_true", help="score in fp32 (default: the scorer's default here)")
    a = ap.parse_args()
    from rewardkit.precision import bf16_native
    from rewardkit.scoring import RewardScorer
    from rewardkit.data.packing import prompt_groups, unit_tokens

    _, rows = hh_rows(0, a.pairs)
    path = Path(a.model_dir) if a.model_dir else make_initial_model(a.backbone, work_dir("rk-share-") / a.backbone)
    bf16 = not a.fp32 and bf16_native("cpu")
    scorer = RewardScorer.load(path, max_length=a.max_length, bf16=bf16, allow_random_head=a.model_dir is None)
    if scorer.model.is_encoder:
        ap.error(f"{path} is an encoder: its prompt attends to the response, so prompts are never shared")
    results = []
    for name, (prompts, responses, k) in workloads(rows, a.n).items():
        seqs = scorer.encoder.encode_many(prompts, responses)
        units = prompt_groups(seqs, causal=True)
        times: dict[bool, list[float]] = {True: [], False: []}
        scores = {}
        for _ in range(a.repeats):
            for share in (False, True):  # alternated: the machine's drift hits both
                t0 = time.perf_counter()
                scores[share] = scorer.run(seqs, share_prompts=share).score
                times[share].append(time.perf_counter() - t0)
        alone, shared = scores[False].view(-1, k), scores[True].view(-1, k)
        t_alone, t_shared = statistics.median(times[False]), statistics.median(times[True])
        results.append({
            "workload": name, "sequences": len(seqs),
            "tokens_alone": sum(len(s.input_ids) for s in seqs),
            "tokens_shared": sum(unit_tokens(seqs, u) for u in units),
            "s_alone": t_alone, "s_shared": t_shared, "speedup": t_alone / t_shared,
            "max_diff": (shared - alone).abs().max().item(), "std": alone.std().item(),
            "changed": int((shared.argmax(1) != alone.argmax(1)).sum()), "groups": len(alone)})
    print(f"\n{path}: HH held-out prompts (last {a.pairs}), max_length {a.max_length}, "
          f"{'bf16 autocast' if bf16 else 'fp32'}, {torch.get_num_threads()} threads, median of {a.repeats}")
    print(table(results, [("workload", "workload", ""), ("sequences", "sequences", "d"),
                          ("tokens_alone", "tokens alone", "d"), ("tokens_shared", "tokens shared", "d"),
                          ("s_alone", "alone s", ".2f"), ("s_shared", "shared s", ".2f"),
                          ("speedup", "speed-up", ".2f"), ("max_diff", "max |Δscore|", ".1e"),
                          ("std", "score std", ".4f"),
                          ("changed", "best pick changed", "d"), ("groups", "of prompts", "d")]))
    print("command: python " + " ".join(sys.argv))


if __name__ == "__main__":
    main()
