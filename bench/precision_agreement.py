"""What bf16 scoring changes against fp32, on held-out pairs: the evidence behind `scoring.bf16`'s default.

    .venv/bin/python bench/precision_agreement.py --model-dir runs/rm --pairs 300
    .venv/bin/python bench/precision_agreement.py --backbone smollm2 --pairs 100

Scores the last --pairs pairs of the shared HH file (held out by every bench's training split) with one model,
once in fp32 and once under bf16 autocast (fp32 weights, what `scoring.bf16=true` runs), in one process, and
prints for each: accuracy, seconds (median of --repeats), and between the two: pairs whose preferred side
flips, the largest and median |score difference|, and the same relative to the fp32 scores' std.
Without --model-dir the backbone's initial model (seeded random value head) is scored: its accuracy means
nothing, but the agreement numbers still measure what bf16 rounding does to that network's scores.
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
from train_vs_trl import _encode  # noqa: E402


def measure(model_dir: Path, rows: list[dict], max_length: int, repeats: int) -> dict:
    from rewardkit.precision import bf16_native
    from rewardkit.scoring import pair_rewards

    model, tok, pairs = _encode(model_dir, rows, max_length)
    model.eval()
    out = {}
    for name, bf16 in (("fp32", False), ("bf16", True)):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            rc, rr = pair_rewards(model, pairs, pad_id=tok.pad_token_id, batch_size=32, max_tokens=8192, bf16=bf16)
            times.append(time.perf_counter() - t0)
        out[name] = (rc, rr, statistics.median(times))
    (c32, r32, t32), (c16, r16, t16) = out["fp32"], out["bf16"]
    diff = torch.cat([c16 - c32, r16 - r32]).abs()
    spread = torch.cat([c32, r32]).std().item()
    flips = int(((c32 > r32) != (c16 > r16)).sum())
    return {"model": str(model_dir), "pairs": len(pairs), "acc_fp32": float((c32 > r32).double().mean()),
            "acc_bf16": float((c16 > r16).double().mean()), "flipped": flips,
            "max_diff": diff.max().item(), "median_diff": diff.median().item(),
            "max_diff_rel": diff.max().item() / spread, "s_fp32": t32, "s_bf16": t16,
            "native": bf16_native("cpu")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", action="append", default=[], help="a saved reward model (repeatable)")
    ap.add_argument("--backbone", action="append", default=[], choices=sorted(BACKBONES),
                    help="also score this backbone's initial model (repeatable)")
    ap.add_argument("--pairs", type=int, default=300, help="the last N pairs of the HH file")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=1)
    a = ap.parse_args()
    _, rows = hh_rows(0, a.pairs)
    dirs = [Path(d) for d in a.model_dir]
    work = work_dir("rk-precision-")
    dirs += [make_initial_model(b, work / b) for b in a.backbone]
    if not dirs:
        ap.error("give --model-dir or --backbone")
    results = [measure(d, rows, a.max_length, a.repeats) for d in dirs]
    print(f"\nHH held-out pairs (last {a.pairs}), max_length {a.max_length}, {torch.get_num_threads()} threads; "
          f"bf16 native on this CPU: {results[0]['native']}")
    print(table(results, [("model", "model", ""), ("pairs", "pairs", "d"), ("acc_fp32", "acc fp32", ".3f"),
                          ("acc_bf16", "acc bf16", ".3f"), ("flipped", "pairs flipped", "d"),
                          ("max_diff", "max |Δscore|", ".4f"), ("median_diff", "median |Δscore|", ".4f"),
                          ("max_diff_rel", "max |Δ| / score std", ".3f"), ("s_fp32", "fp32 s", ".1f"),
                          ("s_bf16", "bf16 s", ".1f")]))
    print("command: python " + " ".join(sys.argv))


if __name__ == "__main__":
    main()
