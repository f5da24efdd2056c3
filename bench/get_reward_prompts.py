"""/get_reward's two readings of an OpenRLHF query, on a reward model trained on HH (`make hh`):

    .venv/bin/python bench/get_reward_prompts.py runs/hh-minilm [--pairs 300]

The last N pairs of the shared HH file (held out by `make hh`) are split into prompt and responses as training
splits them, then scored three ways in fp32: as (prompt, response) pairs (`score`, the training layout), as
bare full texts prompt+response (`score_full_texts`, what /get_reward does without `prompts`), and as full
texts with their prompts (`score_full_texts(..., prompts=)`, what /get_reward does with OpenRLHF's `prompts`).
Prints each reading's accuracy, how far the bare full texts move from the pairs and how many pairs swap order.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from rewardkit.data.pairs import split_transcripts
from rewardkit.scoring import RewardScorer

HH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hh-harmless" / "train.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a saved reward model folder (e.g. runs/hh-minilm from `make hh`)")
    ap.add_argument("--data", default=str(HH), help="HH jsonl (chosen/rejected transcripts); default ../shared")
    ap.add_argument("--pairs", type=int, default=300, help="score the file's last N pairs")
    args = ap.parse_args()
    if not Path(args.data).is_file():
        raise SystemExit(f"no HH data at {args.data}: clone beside ../shared or pass --data")
    rows = [json.loads(line) for line in open(args.data)][-args.pairs:]
    scorer = RewardScorer.load(args.model, bf16=False)
    prompts, chosen, rejected = (list(x) for x in zip(*[split_transcripts(r["chosen"], r["rejected"]) for r in rows]))
    readings = {}
    for name, responses in (("chosen", chosen), ("rejected", rejected)):
        full = [p + r for p, r in zip(prompts, responses)]
        readings[name] = {"pair": torch.tensor(scorer.score(prompts, responses)),
                          "full text": scorer.score_full_texts(full),
                          "full text + prompts": scorer.score_full_texts(full, prompts=prompts)}
    for how in readings["chosen"]:
        c, r = readings["chosen"][how], readings["rejected"][how]
        moved = torch.cat([c - readings["chosen"]["pair"], r - readings["rejected"]["pair"]]).abs()
        swapped = int(((c > r) != (readings["chosen"]["pair"] > readings["rejected"]["pair"])).sum())
        print(f"{how:>20}: accuracy {float((c > r).float().mean()):.3f}  |score - pair score| mean "
              f"{moved.mean():.4f} max {moved.max():.4f}  pairs swapped {swapped}/{len(rows)}")
    pair = torch.cat([readings["chosen"]["pair"], readings["rejected"]["pair"]])
    print(f"score std (pairs) {pair.std():.3f}")


if __name__ == "__main__":
    main()
