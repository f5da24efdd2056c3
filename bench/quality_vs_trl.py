"""Held-out accuracy, rewardkit's default recipe vs TRL's RewardTrainer, over seeds.

    .venv/bin/python bench/quality_vs_trl.py --seeds 3
    .venv/bin/python bench/quality_vs_trl.py --seeds 3 --pairs 600 --max-length 256 --json q.json

For each seed s, both tools start from the SAME initial weights (MiniLM backbone + value head drawn with seed s),
train on the SAME token ids (rewardkit's tokenisation, handed to TRL pre-tokenised) with the same lr, batch size,
epochs, cosine schedule with 3% warmup and data-order seed s (each tool's own sampler, so the orders differ),
each in its own process. TRL runs without gradient checkpointing (it recomputes activations and does not change
the result; it only saves time here). Neither trains on the evaluation sets:

  hh-dev  the last --eval-pairs pairs of the shared HH harmless file (training uses the first --pairs);
  demo    examples/demo_data/prefs.jsonl (first --demo-pairs): helpful on-topic answers vs off-topic ones, an
          explicit prompt/response format and another distribution than HH, so it tests transfer, not fit.

Both trained models are scored by the same function (`_accuracy` of train_vs_trl.py: rewardkit's
`pair_rewards` in fp32, batch 16); each model sees the inputs its tool trained with (TRL gets no token types).
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
from common import BACKBONES, ROOT, hh_rows, make_initial_model, run_worker, work_dir  # noqa: E402
from train_vs_trl import _accuracy  # noqa: E402

DEMO = ROOT / "examples" / "demo_data" / "prefs.jsonl"


def _pairs(tok, is_encoder: bool, rows: list[dict], max_length: int, token_types: bool = True):
    """Tokenised pairs for `rows` exactly as rewardkit's training tokenises them (token types dropped if asked)."""
    import dataclasses

    from rewardkit.data.pairs import load_preferences
    from rewardkit.data.tokenize import SequenceEncoder, tokenize_pairs
    from rewardkit.io import write_jsonl

    with tempfile.TemporaryDirectory() as d:
        write_jsonl(Path(d) / "x.jsonl", rows)
        examples, _ = load_preferences(str(Path(d) / "x.jsonl"))
    pairs = tokenize_pairs(SequenceEncoder(tok, max_length, is_encoder), examples)
    if token_types:
        return pairs
    return [dataclasses.replace(p, chosen=dataclasses.replace(p.chosen, token_type_ids=None),
                                rejected=dataclasses.replace(p.rejected, token_type_ids=None)) for p in pairs]


def _score_sets(model, tok, spec: dict, token_types: bool) -> dict[str, float]:
    import torch

    model = model.float().eval()
    with torch.no_grad():
        return {name: _accuracy(model, tok, _pairs(tok, model.is_encoder, rows, spec["max_length"], token_types))
                for name, rows in spec["eval_sets"].items()}


def worker_trl(spec: dict) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    from rewardkit.models.reward_model import RewardModel

    init = Path(spec["init"])
    tok = AutoTokenizer.from_pretrained(init)
    model = AutoModelForSequenceClassification.from_pretrained(init, num_labels=1)
    is_enc = RewardModel(model).is_encoder
    train_pairs = _pairs(tok, is_enc, spec["train_rows"], spec["max_length"])
    ds = Dataset.from_dict({"chosen_ids": [p.chosen.input_ids for p in train_pairs],
                            "rejected_ids": [p.rejected.input_ids for p in train_pairs]})
    args = RewardConfig(output_dir=spec["out"], per_device_train_batch_size=spec["batch_size"],
                        learning_rate=spec["lr"], num_train_epochs=spec["epochs"], max_length=spec["max_length"],
                        lr_scheduler_type="cosine", warmup_steps=0.03, logging_steps=10, save_strategy="no",
                        report_to=[], seed=spec["seed"], data_seed=spec["seed"], use_cpu=True,
                        dataloader_num_workers=0, gradient_checkpointing=False, bf16=spec["trl_bf16"])
    trainer = RewardTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    acc = _score_sets(RewardModel(trainer.model), tok, spec, token_types=False)  # TRL never passes token types
    return {"engine": "trl", "seconds": seconds, "final_loss": losses[-1] if losses else float("nan"), "acc": acc}


def worker_rewardkit(spec: dict) -> dict:
    from rewardkit.config import TrainRunConfig, load_config
    from rewardkit.io import write_jsonl
    from rewardkit.models.reward_model import RewardModel
    from rewardkit.train import train

    d = Path(spec["out"])
    write_jsonl(d / "train.jsonl", spec["train_rows"])
    write_jsonl(d / "eval.jsonl", spec["eval_sets"]["hh-dev"])  # the stats come from it, not a pass over train
    cfg = load_config(TrainRunConfig, None, [
        f"model={spec['init']}", f"data.train={d / 'train.jsonl'}", f"data.eval={d / 'eval.jsonl'}",
        f"data.max_length={spec['max_length']}", f"train.batch_size={spec['batch_size']}", f"train.lr={spec['lr']}",
        f"train.epochs={spec['epochs']}", "train.scheduler=cosine", "train.warmup_ratio=0.03", "train.log_every=10",
        "train.progress=false", f"output_dir={d / 'rm'}", f"seed={spec['seed']}", *spec["rk_options"]])
    res = train(cfg)
    losses = [json.loads(x)["loss"] for x in (d / "rm" / "metrics.jsonl").read_text().splitlines()
              if json.loads(x)["split"] == "train"]
    model, tok = RewardModel.from_pretrained(str(d / "rm"))
    acc = _score_sets(model, tok, spec, token_types=model.token_types)  # scored as it was trained
    return {"engine": "rewardkit", "seconds": res.loop_seconds, "final_loss": losses[-1], "acc": acc,
            "train_eval_acc": res.final_eval.get("accuracy")}


def _ms(xs: list[float]) -> str:
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{100 * statistics.mean(xs):.1f} ± {100 * sd:.1f}"


def report(results: list[dict], sets: list[str]) -> str:
    lines = ["set | rewardkit mean ± std | TRL mean ± std | difference (rk - TRL, points)", "-" * 72]
    for s in sets:
        rk = [r["rewardkit"]["acc"][s] for r in results]
        trl = [r["trl"]["acc"][s] for r in results]
        diff = 100 * (statistics.mean(rk) - statistics.mean(trl))
        lines.append(f"{s} | {_ms(rk)} | {_ms(trl)} | {diff:+.1f}")
    lines += ["", "seed | set | rewardkit | TRL | difference | rk loss | TRL loss | rk loop s | TRL loop s"]
    for r in results:
        for s in sets:
            a, b = r["rewardkit"], r["trl"]
            lines.append(f"{r['seed']} | {s} | {100 * a['acc'][s]:.1f} | {100 * b['acc'][s]:.1f} | "
                         f"{100 * (a['acc'][s] - b['acc'][s]):+.1f} | {a['final_loss']:.4f} | {b['final_loss']:.4f} | "
                         f"{a['seconds']:.0f} | {b['seconds']:.0f}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (value-head init and data order)")
    ap.add_argument("--first-seed", type=int, default=0, help="start at this seed (to split seeds over runs)")
    ap.add_argument("--model", choices=sorted(BACKBONES), default="minilm")
    ap.add_argument("--pairs", type=int, default=1500, help="training pairs (first N of the HH file)")
    ap.add_argument("--eval-pairs", type=int, default=300, help="hh-dev: the last N pairs of the HH file")
    ap.add_argument("--demo-pairs", type=int, default=300, help="demo: the first N pairs of the demo preferences")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--rewardkit", nargs="*", default=[], metavar="KEY=VALUE",
                    help="rewardkit config overrides (default none: rewardkit's default recipe)")
    ap.add_argument("--trl-fp32", action="store_true",
                    help="TRL without its default bf16 autocast (fp32, as rewardkit trains on a CPU without native "
                         "bf16; bf16 is emulated and very slow there)")
    ap.add_argument("--reuse-trl", metavar="JSON",
                    help="take TRL's results from an earlier run's --json (same seeds and data) instead of training "
                         "TRL again: for comparing rewardkit options against one set of TRL runs")
    ap.add_argument("--skip-trl", action="store_true",
                    help="train rewardkit only (TRL's columns stay empty; fill them later with --merge-trl)")
    ap.add_argument("--merge-trl", nargs=2, metavar=("RK_JSON", "TRL_JSON"),
                    help="print the report of an earlier --skip-trl run's --json with TRL's results taken from "
                         "another run's --json (same seeds and data), and exit")
    ap.add_argument("--json", help="write the per-seed results here (rewritten after every seed)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        spec = json.loads(Path(a.worker).read_text())
        print(json.dumps(worker_trl(spec) if spec["engine"] == "trl" else worker_rewardkit(spec)))
        return

    command = "python " + " ".join(sys.argv)
    if a.merge_trl:
        rk, trl = (json.loads(Path(f).read_text()) for f in a.merge_trl)
        by_seed = {r["seed"]: r["trl"] for r in trl["results"]}
        results = [{**r, "trl": by_seed[r["seed"]]} for r in rk["results"]]
        print(f"rewardkit: {rk['command']}\nTRL: {trl['command']}")
        print(report(results, list(results[0]["rewardkit"]["acc"])))
        return
    train_rows, dev_rows = hh_rows(a.pairs, a.eval_pairs)
    demo_rows = [json.loads(x) for x in DEMO.read_text().splitlines()[:a.demo_pairs]]
    eval_sets = {"hh-dev": dev_rows, "demo": demo_rows}
    work = work_dir("rk-quality-")
    t_start, results = time.perf_counter(), []
    seeds = list(range(a.first_seed, a.first_seed + a.seeds))
    reused = {}
    if a.reuse_trl:
        earlier = json.loads(Path(a.reuse_trl).read_text())
        reused = {r["seed"]: r["trl"] for r in earlier["results"]}
        if missing := [s for s in seeds if s not in reused]:
            sys.exit(f"{a.reuse_trl} has no TRL result for seeds {missing}")
        print(f"TRL results reused from {a.reuse_trl} ({earlier['command']})", file=sys.stderr)
    for seed in seeds:
        init = make_initial_model(a.model, work / f"init{seed}", seed=seed)
        row = {"seed": seed}
        for engine in ("rewardkit", "trl"):
            if engine == "trl" and reused:
                row["trl"] = reused[seed]
                continue
            if engine == "trl" and a.skip_trl:
                continue
            out = work / f"s{seed}-{engine}"
            out.mkdir()
            print(f"seed {seed}: {engine} ...", file=sys.stderr, flush=True)
            row[engine] = run_worker(Path(__file__), dict(
                engine=engine, out=str(out), init=str(init), seed=seed, train_rows=train_rows, eval_sets=eval_sets,
                max_length=a.max_length, batch_size=a.batch_size, lr=a.lr, epochs=a.epochs, rk_options=a.rewardkit,
                trl_bf16=not a.trl_fp32))
            print(f"seed {seed}: {engine} {json.dumps(row[engine]['acc'])} loop {row[engine]['seconds']:.0f} s",
                  file=sys.stderr, flush=True)
        results.append(row)
        if a.json:
            Path(a.json).write_text(json.dumps({"command": command, "results": results}, indent=1))
    wall = time.perf_counter() - t_start
    print(f"\n{a.model}: {a.pairs} train pairs (first of the HH file), hh-dev = its last {a.eval_pairs}, demo = first "
          f"{len(demo_rows)} of {DEMO.relative_to(ROOT)}; max_length {a.max_length}, batch {a.batch_size}, lr {a.lr}, "
          f"epochs {a.epochs}, seeds {seeds[0]}..{seeds[-1]}; TRL without gradient checkpointing"
          f"{f' (results reused from {a.reuse_trl})' if a.reuse_trl else ''}, "
          f"{'fp32' if a.trl_fp32 else 'bf16 autocast (its default)'}; rewardkit options: "
          f"{' '.join(a.rewardkit) or '(defaults)'}")
    print(report(results, list(eval_sets)) if not a.skip_trl else json.dumps(
        [{"seed": r["seed"], **r["rewardkit"]["acc"]} for r in results]))
    print(f"\ncommand: {command}\nwall time: {wall:.0f} s")
    if a.json:
        Path(a.json).write_text(json.dumps({"command": command, "wall_s": wall, "results": results}, indent=1))


if __name__ == "__main__":
    main()
