"""Evaluation throughput: TRL's RewardTrainer.evaluate vs rewardkit's pair scoring, same weights and token ids.

    .venv/bin/python bench/score_vs_trl.py --model minilm --pairs 600

Each engine runs in its own process and scores the same HH pairs (the file's last N) with the same initial
reward model. TRL runs with its RewardConfig defaults (bf16 autocast, eval batch 8, padding to the longest
in input order); rewardkit sorts by length, caps tokens per forward, packs each batch into one padding-free
row on CPU and uses bf16 autocast where it is native. Prints pairs/s, tokens/s, padding, peak RSS, accuracy, and the ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BACKBONES, hh_rows, make_initial_model, run_worker, table  # noqa: E402
from train_vs_trl import _encode  # noqa: E402


def worker(spec: dict) -> dict:
    init = Path(spec["init"])
    model, tok, pairs = _encode(init, spec["rows"], spec["max_length"])
    real = sum(len(s.input_ids) for p in pairs for s in (p.chosen, p.rejected))
    if spec["engine"] == "trl":
        from datasets import Dataset
        from transformers import AutoModelForSequenceClassification
        from trl import RewardConfig, RewardTrainer

        ds = Dataset.from_dict({"chosen_ids": [p.chosen.input_ids for p in pairs],
                                "rejected_ids": [p.rejected.input_ids for p in pairs]})
        hf = AutoModelForSequenceClassification.from_pretrained(init, num_labels=1)
        args = RewardConfig(output_dir=spec["out"], max_length=spec["max_length"], report_to=[], use_cpu=True,
                            dataloader_num_workers=0, save_strategy="no")
        trainer = RewardTrainer(model=hf, args=args, train_dataset=ds, eval_dataset=ds, processing_class=tok)
        counts = {"processed": 0}
        collate = trainer.data_collator

        def counting(features):
            batch = collate(features)
            counts["processed"] += batch["attention_mask"].numel()
            return batch

        trainer.data_collator = counting
        times = []
        for _ in range(spec["repeats"]):
            counts["processed"] = 0
            t0 = time.perf_counter()
            metrics = trainer.evaluate()
            times.append(time.perf_counter() - t0)
        return {"engine": "TRL evaluate (defaults)", "seconds": statistics.median(times), "times": times,
                "pairs": len(pairs), "tokens": real, "processed": counts["processed"],
                "accuracy": metrics.get("eval_accuracy", float("nan"))}
    from rewardkit.scoring import length_batches, score_sequences
    from rewardkit.train import bf16_native

    seqs = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    bf16 = bf16_native()
    times = []
    for _ in range(spec["repeats"]):
        t0 = time.perf_counter()
        r = score_sequences(model, seqs, pad_id=tok.pad_token_id, batch_size=spec["batch_size"],
                            max_tokens=spec["max_tokens"], bf16=bf16)
        times.append(time.perf_counter() - t0)
    rc, rr = r[:len(pairs)], r[len(pairs):]
    lengths = [len(s.input_ids) for s in seqs]
    flat = True  # on CPU run_model packs each batch into one padding-free row
    processed = real if flat else sum(len(b) * max(lengths[i] for i in b)
                                      for b in length_batches(lengths, spec["batch_size"], spec["max_tokens"]))
    return {"engine": f"rewardkit ({'flat' if flat else 'padded'}, max_tokens {spec['max_tokens']}, bf16 {bf16})",
            "seconds": statistics.median(times), "times": times,
            "pairs": len(pairs), "tokens": real, "processed": processed, "accuracy": float((rc > rr).double().mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(BACKBONES), default="minilm")
    ap.add_argument("--pairs", type=int, default=600, help="pairs to score (the last N of the HH file)")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=64, help="rewardkit: max sequences per forward")
    ap.add_argument("--max-tokens", type=int, nargs="+", default=[4096],
                    help="rewardkit: max padded tokens per forward; several values run rewardkit once per value")
    ap.add_argument("--repeats", type=int, default=3, help="passes per engine (in one process); the median is "
                                                              "reported")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(json.loads(Path(a.worker).read_text()))))
        return
    _, rows = hh_rows(0, a.pairs)
    work = Path(tempfile.mkdtemp(prefix="rk-score-bench-"))
    init = make_initial_model(a.model, work / "init")
    results = []
    runs = [("trl", None)] + [("rewardkit", m) for m in a.max_tokens]
    for i, (engine, max_tokens) in enumerate(runs):
        out = work / f"run{i}"
        out.mkdir()
        print(f"running {engine} ...", file=sys.stderr, flush=True)
        results.append(run_worker(Path(__file__), dict(engine=engine, init=str(init), rows=rows, out=str(out),
                                                       max_length=a.max_length, batch_size=a.batch_size,
                                                       max_tokens=max_tokens, repeats=a.repeats)))
    for r in results:
        r["pairs_per_s"] = r["pairs"] / r["seconds"]
        r["tokens_per_s"] = r["tokens"] / r["seconds"]
        r["padding"] = 1 - r["tokens"] / r["processed"]
    print(f"\n{a.model}: scoring {a.pairs} HH pairs, max_length {a.max_length}; median of {a.repeats} passes")
    print(table(results, [("engine", "engine", ""), ("pairs_per_s", "pairs/s", ".2f"), ("tokens_per_s", "tokens/s", ".0f"),
                          ("padding", "padding", ".1%"), ("peak_rss_gb", "peak RSS GB", ".2f"),
                          ("accuracy", "accuracy", ".3f")]))
    for r in results[1:]:
        print(f"{r['engine']} / TRL evaluate: pairs/s x{r['pairs_per_s'] / results[0]['pairs_per_s']:.2f}, "
              f"peak RSS x{r['peak_rss_gb'] / results[0]['peak_rss_gb']:.2f}")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
