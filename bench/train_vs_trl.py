"""rewardkit vs TRL's RewardTrainer: same initial weights, token ids, max length, batch size, lr and epochs.

    .venv/bin/python bench/train_vs_trl.py --model minilm --pairs 400
    .venv/bin/python bench/train_vs_trl.py --model smollm2 --pairs 64 --max-length 256 --batch-size 4

Runs, one after the other, each in its own process: TRL with its RewardConfig defaults (bf16 autocast +
gradient checkpointing), TRL tuned (gradient checkpointing off), rewardkit, and one more rewardkit run per
`--also`. Prints pairs/s, real tokens/s, padding fraction, peak RSS, final train loss, held-out accuracy (same
scorer for all), model FLOP utilisation (the FLOPs of the work each engine did, a shared prompt once) against a
matmul peak measured here in the dtype used, and the rewardkit/TRL ratios.

Two times per engine: "loop s", the optimisation loop only (what pairs/s divides by), and "whole s", the worker
process from its start to its exit as a user would wait for it: interpreter start, imports, model loading,
tokenisation, the loop, eval, normalisation statistics and saving the model. rewardkit's worker calls
`train(cfg)` (what `rewardkit train` runs) and exits as the `rewardkit` script does (`cli.entry`); TRL's builds a
RewardTrainer, trains and calls `save_model()`. The bench's own work inside a worker is timed and left out of
"whole s": writing the data files, the held-out scoring of TRL's model and the token counts. TRL is handed rewardkit's token ids, so TRL's whole time holds no
tokenisation at all (in TRL's favour). Given held-out pairs, both evaluate them once after the loop, inside
"whole s" and outside "loop s": rewardkit's final eval (`data.eval`), and TRL's `trainer.evaluate()` on the same
token ids, as a TRL user with an eval set would call it (its eval_strategy defaults to "no"); `--no-trl-eval`
leaves TRL's out.

The rewardkit worker starts as the `rewardkit` command does: with tcmalloc or jemalloc preloaded where one is
installed (`rewardkit/cli/allocator.py`; `make install` unpacks tcmalloc into .venv/lib on Debian-like systems);
the engine label then says which. TRL's workers run on the C library's allocator, as `python train.py` does;
`--engines trl-malloc` adds TRL's defaults with the same allocator and settings preloaded, and `rewardkit-glibc` rewardkit
without it, so the table separates what the allocator gives from what the training code gives.

`--repeats N` runs the whole set N times, in reverse order every other time (A B C, C B A, ...) so that a machine
that drifts slower or faster weighs on every engine alike; the table then shows each engine's medians and the
ratio lines the median (and range) of the ratios measured within each repeat.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rewardkit.cli.allocator import find_library, preload_env  # noqa: E402
from common import (BACKBONES, dtype_peaks, hh_rows, make_initial_model, matmul_params, matmul_peak, model_flops,  # noqa: E402
                    run_worker, table, work_counts, work_dir)  # noqa: E402


def _encode(init: Path, rows: list[dict], max_length: int):
    from rewardkit.data.pairs import load_preferences
    from rewardkit.data.tokenize import SequenceEncoder, tokenize_pairs
    from rewardkit.models.reward_model import RewardModel
    from rewardkit.io import write_jsonl

    model, tok = RewardModel.from_pretrained(str(init))
    with tempfile.TemporaryDirectory() as d:
        write_jsonl(Path(d) / "x.jsonl", rows)
        examples, _ = load_preferences(str(Path(d) / "x.jsonl"))
    return model, tok, tokenize_pairs(SequenceEncoder(tok, max_length, model.is_encoder), examples)


def _accuracy(model, tok, pairs, device: str = "cpu") -> float:
    from rewardkit.scoring import pair_rewards

    rc, rr = pair_rewards(model, pairs, pad_id=tok.pad_token_id, batch_size=16, device=device)
    return float((rc > rr).double().mean())


def worker_trl(spec: dict) -> dict:
    import dataclasses

    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    from rewardkit.models.reward_model import RewardModel

    init, device = Path(spec["init"]), spec["device"]
    b0 = time.perf_counter()  # bench work: rewardkit's token ids for TRL, and the held-out pairs
    _, _, train_pairs = _encode(init, spec["train_rows"], spec["max_length"])
    eval_pairs = _encode(init, spec["eval_rows"], spec["max_length"])[2] if spec["eval_rows"] else []
    bench_seconds = time.perf_counter() - b0
    ds = Dataset.from_dict({"chosen_ids": [p.chosen.input_ids for p in train_pairs],
                            "rejected_ids": [p.rejected.input_ids for p in train_pairs]})
    model = AutoModelForSequenceClassification.from_pretrained(init, num_labels=1)
    tok = AutoTokenizer.from_pretrained(init)
    kw = {"gradient_checkpointing": False} if spec["engine"] == "trl-tuned" else {}
    if spec.get("trl_fp32"):
        kw["bf16"] = False
    args = RewardConfig(output_dir=spec["out"], per_device_train_batch_size=spec["batch_size"],
                        learning_rate=spec["lr"], num_train_epochs=spec["epochs"], max_length=spec["max_length"],
                        lr_scheduler_type="cosine", warmup_steps=0.03, logging_steps=10, save_strategy="no",
                        report_to=[], seed=0, use_cpu=device == "cpu", dataloader_num_workers=0,
                        **kw)
    trainer = RewardTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    counts = {"real": 0, "processed": 0}
    collate = trainer.data_collator

    def counting(features):
        batch = collate(features)
        counts["real"] += int(batch["attention_mask"].sum())
        counts["processed"] += batch["attention_mask"].numel()
        return batch

    trainer.data_collator = counting
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    trainer.save_model()  # what a TRL user does next; rewardkit's train() saves too
    trainer.data_collator = collate  # the token counts are the training batches'
    if eval_pairs and spec.get("trl_eval", True):  # rewardkit's train() evaluates data.eval once after its loop
        trainer.evaluate(Dataset.from_dict({"chosen_ids": [p.chosen.input_ids for p in eval_pairs],
                                            "rejected_ids": [p.rejected.input_ids for p in eval_pairs]}))
    b0 = time.perf_counter()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    # Score with rewardkit's scorer in fp32, without token types (TRL never passes them), as for training.
    rm = RewardModel(trainer.model.float().eval())
    eval_pairs = [dataclasses.replace(p, chosen=dataclasses.replace(p.chosen, token_type_ids=None),
                                      rejected=dataclasses.replace(p.rejected, token_type_ids=None)) for p in eval_pairs]
    with torch.no_grad():
        acc = _accuracy(rm, tok, eval_pairs, device) if eval_pairs else float("nan")
    bench_seconds += time.perf_counter() - b0
    name = {"trl": "TRL defaults", "trl-tuned": "TRL tuned (no grad ckpt)"}.get(spec["engine"], "TRL defaults")
    return {"engine": name + (", fp32" if spec.get("trl_fp32") else "") + _allocator_label(),
            "bench_seconds": bench_seconds,
            "seconds": seconds, "pairs": len(train_pairs) * spec["epochs"], "tokens": counts["real"],
            "processed": counts["processed"], "final_loss": losses[-1] if losses else float("nan"),
            "accuracy": acc, "bf16": bool(args.bf16), "work": _work(train_pairs, False, spec["epochs"]),
            **_gpu_peak(device)}


def worker_rewardkit(spec: dict) -> dict:
    from rewardkit.config import TrainRunConfig, load_config
    from rewardkit.io import write_jsonl
    from rewardkit.train import bf16_native, train
    from rewardkit.train.plan import resolve_packing

    device = spec["device"]
    if device == "cpu":  # on a GPU machine too: accelerate's switch
        os.environ["ACCELERATE_USE_CPU"] = "true"
    d = Path(spec["out"])
    b0 = time.perf_counter()  # bench work: the data files a user already has
    write_jsonl(d / "train.jsonl", spec["train_rows"])
    if spec["eval_rows"]:  # --eval-pairs 0: no eval set (the statistics then come from the training loop)
        write_jsonl(d / "eval.jsonl", spec["eval_rows"])
    bench_seconds = time.perf_counter() - b0
    cfg = load_config(TrainRunConfig, None, [
        f"model={spec['init']}", f"data.train={d / 'train.jsonl'}",
        *([f"data.eval={d / 'eval.jsonl'}"] if spec["eval_rows"] else []),
        f"data.max_length={spec['max_length']}", f"train.batch_size={spec['batch_size']}", f"train.lr={spec['lr']}",
        f"train.epochs={spec['epochs']}", "train.scheduler=cosine", "train.warmup_ratio=0.03", "train.log_every=10",
        "train.progress=false", f"output_dir={d / 'rm'}", "seed=0", *spec["rk_options"]])
    res = train(cfg)
    b0 = time.perf_counter()
    losses = [json.loads(x)["loss"] for x in (d / "rm" / "metrics.jsonl").read_text().splitlines()
              if json.loads(x)["split"] == "train"]
    model, _, pairs = _encode(Path(spec["init"]), spec["train_rows"], spec["max_length"])
    # The layout the loop computed: shared-prompt units where packing is (or `auto` makes it) shared_prompt.
    shared = resolve_packing(cfg.train.packing, model.is_encoder) == "shared_prompt"
    bench_seconds += time.perf_counter() - b0
    return {"engine": "rewardkit " + (" ".join(o.split(".")[-1] for o in spec["rk_options"]) or "defaults")
            + _allocator_label(),
            "bench_seconds": bench_seconds,
            "seconds": res.loop_seconds, "pairs": res.examples, "tokens": res.tokens,
            "processed": res.processed_tokens, "final_loss": losses[-1],
            "accuracy": res.final_eval.get("accuracy", float("nan")),
            "bf16": bf16_native(device) if cfg.train.bf16 is None else cfg.train.bf16,
            "work": _work(pairs, shared, spec["epochs"]), **_gpu_peak(device)}


def _allocator_label() -> str:
    """', tcmalloc_minimal' when the worker runs on a preloaded allocator, '' on the C library's."""
    from rewardkit.cli.allocator import mapped_allocator

    lib = mapped_allocator()
    return f", {Path(lib).name.split('.so')[0].removeprefix('lib')}" if lib else ""


def _gpu_peak(device: str) -> dict:
    """Peak CUDA memory the worker's tensors took (GB), where it ran on a GPU (RSS says little there)."""
    import torch

    return {"gpu_peak_gb": torch.cuda.max_memory_allocated() / 2 ** 30} if device == "cuda" else {}


def _work(pairs, shared: bool, epochs: float) -> list[float]:
    """[tokens, query-key pairs] the loop computed over all epochs (see common.work_counts)."""
    return [x * epochs for x in work_counts(pairs, shared)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(BACKBONES), default="minilm")
    ap.add_argument("--pairs", type=int, default=400, help="training pairs (first N of the HH file)")
    ap.add_argument("--eval-pairs", type=int, default=300,
                    help="held-out pairs (last N of the HH file; 0: no eval set, rewardkit's "
                         "reward statistics then come from its training loop)")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--rewardkit", nargs="*", default=None,
                    help="rewardkit config overrides (default: none, i.e. rewardkit's defaults: bf16 where native, "
                         "flat padding-free rows with random batches, packing plain for encoders / shared_prompt "
                         "for decoders)")
    ap.add_argument("--also", nargs="+", action="append", default=[], metavar="KEY=VALUE",
                    help="one more rewardkit run with these overrides on top of --rewardkit's (repeatable), e.g. "
                         "--also train.gradient_checkpointing=true")
    ap.add_argument("--engines", nargs="+", default=["trl", "trl-tuned", "rewardkit"],
                    choices=["trl", "trl-tuned", "trl-malloc", "rewardkit", "rewardkit-glibc"],
                    help="which runs (default: trl, trl-tuned, rewardkit). rewardkit (and every --also run) starts as "
                         "the `rewardkit` command does, with the allocator it preloads where one is installed "
                         "(rewardkit/cli/allocator.py); rewardkit-glibc on the C library's; trl-malloc is TRL's "
                         "defaults with that same allocator preloaded (a TRL user who knows the trick)")
    ap.add_argument("--no-trl-eval", action="store_true",
                    help="do not call TRL's trainer.evaluate() on the held-out pairs (rewardkit evaluates them anyway)")
    ap.add_argument("--trl-fp32", action="store_true",
                    help="TRL without its default bf16 autocast (what rewardkit picks, and what a TRL user picks, on "
                         "a CPU without native bf16, where bf16 is emulated and several times slower)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="where both engines train (cuda: TRL with use_cpu=False, rewardkit on accelerate's GPU; "
                         "the table adds peak CUDA memory)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="run every engine this many times, alternating the order; medians are reported")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        spec = json.loads(Path(a.worker).read_text())
        print(json.dumps(worker_trl(spec) if spec["engine"].startswith("trl") else worker_rewardkit(spec)))
        if not spec["engine"].startswith("trl"):  # the process then exits as `rewardkit train` does (cli.entry)
            import gc

            gc.freeze()
        return

    import torch

    train_rows, eval_rows = hh_rows(a.pairs, a.eval_pairs)
    work = work_dir("rk-bench-")
    init = make_initial_model(a.model, work / "init")
    from transformers import AutoConfig

    hf_cfg = AutoConfig.from_pretrained(init)
    from rewardkit.models.reward_model import RewardModel

    m, _ = RewardModel.from_pretrained(str(init))
    n_params = matmul_params(m)
    del m
    rk = a.rewardkit if a.rewardkit is not None else []  # rewardkit's defaults
    base = dict(init=str(init), train_rows=train_rows, eval_rows=eval_rows, max_length=a.max_length,
                batch_size=a.batch_size, lr=a.lr, epochs=a.epochs, trl_fp32=a.trl_fp32, trl_eval=not a.no_trl_eval,
                device=a.device)
    runs = [(e, rk) for e in a.engines] + [("rewardkit", rk + extra) for extra in a.also]
    lib = find_library()  # what the `rewardkit` command preloads on this machine (None: nothing)
    print(f"allocator the rewardkit command preloads here: {lib or 'none (the C library)'}", file=sys.stderr)
    fp32_before = matmul_peak(torch.float32, device=a.device)
    repeats: list[list[dict]] = [[] for _ in runs]  # per run: its result in each repeat
    for k in range(a.repeats):
        order = list(range(len(runs)))[::-1 if k % 2 else 1]  # alternate, so a drifting machine weighs on all alike
        for i in order:
            engine, options = runs[i]
            out = work / f"run{i}-{k}"
            out.mkdir()
            print(f"running {engine} {' '.join(options)} (repeat {k + 1}/{a.repeats}) ...", file=sys.stderr, flush=True)
            env = preload_env(lib, {}, "train") if lib and engine in ("rewardkit", "trl-malloc") else {"LD_PRELOAD": ""}
            r = run_worker(Path(__file__), {**base, "engine": engine, "out": str(out), "rk_options": options}, env)
            repeats[i].append(r)  # as each engine finishes: a run cut short still reports the engines done
            print(f"  {engine}: loop {r['seconds']:.1f} s, whole {r['process_seconds'] - r['bench_seconds']:.1f} s, "
                  f"accuracy {r['accuracy']:.3f}", file=sys.stderr, flush=True)
    peaks = dtype_peaks({r["bf16"] for rs in repeats for r in rs}, a.device, fp32_before)
    for r in (r for rs in repeats for r in rs):
        r["pairs_per_s"] = r["pairs"] / r["seconds"]
        r["whole_seconds"] = r["process_seconds"] - r.pop("bench_seconds")
        r["tokens_per_s"] = r["tokens"] / r["seconds"]
        r["padding"] = 1 - r["tokens"] / max(r["processed"], 1)
        # Counted on the work each engine did: a shared prompt is computed (and counted) once.
        flops = model_flops(n_params, hf_cfg.num_hidden_layers, hf_cfg.hidden_size, *r.pop("work"))
        r["mfu"] = flops / r["seconds"] / peaks[r["bf16"]]
    results = [_median_row(rs) for rs in repeats]
    cols = [("engine", "engine", ""), ("whole_seconds", "whole s", ".1f"), ("seconds", "loop s", ".1f"),
            ("pairs_per_s", "pairs/s", ".2f"), ("tokens_per_s", "tokens/s", ".0f"),
            ("padding", "padding", ".1%"), ("peak_rss_gb", "peak RSS GB", ".2f"), ("final_loss", "final loss", ".4f"),
            ("accuracy", "held-out acc", ".3f"), ("mfu", "MFU", ".1%")]
    if a.device == "cuda":
        cols.insert(7, ("gpu_peak_gb", "peak CUDA GB", ".2f"))
    print(f"\n{a.model}: {a.pairs} train / {a.eval_pairs} held-out HH pairs, max_length {a.max_length}, batch "
          f"{a.batch_size}, lr {a.lr}, epochs {a.epochs}; rewardkit options: {' '.join(rk)}"
          + (f"; medians of {a.repeats} repeats, alternated" if a.repeats > 1 else ""))
    print(f"matmul peak here ({torch.get_num_threads()} threads; fp32: the higher of before and after the runs): " +
          ", ".join(f"{'bf16' if k else 'fp32'} {v / 1e9:.0f} GFLOP/s" for k, v in sorted(peaks.items())))
    print(table(results, cols))
    for i in (i for i, r in enumerate(results) if not r["engine"].startswith("TRL")):
        for j in (j for j, r in enumerate(results) if r["engine"].startswith("TRL")):
            ours, ref = results[i], results[j]
            # ratios within each repeat (side by side), then their median
            whole = [b["whole_seconds"] / o["whole_seconds"] for o, b in zip(repeats[i], repeats[j])]
            loop = [o["pairs_per_s"] / b["pairs_per_s"] for o, b in zip(repeats[i], repeats[j])]
            rss = [o["peak_rss_gb"] / b["peak_rss_gb"] for o, b in zip(repeats[i], repeats[j])]
            print(f"{ours['engine']} / {ref['engine']}: whole process x{_spread(whole)} faster, "
                  f"loop pairs/s x{_spread(loop)}, peak RSS x{_spread(rss)}, "
                  f"accuracy {100 * (ours['accuracy'] - ref['accuracy']):+.1f} points")
    if a.json:
        Path(a.json).write_text(json.dumps({"medians": results, "repeats": repeats}, indent=1))


def _median_row(rows: list[dict]) -> dict:
    """One engine's repeats as one row: the median of every number (accuracy too: the same seed gives the same)."""
    out = dict(rows[0])
    for key, value in rows[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = statistics.median(r[key] for r in rows)
    return out


def _spread(xs: list[float]) -> str:
    """Median of same-repeat ratios, with their range when there are several."""
    med = statistics.median(xs)
    return f"{med:.2f}" if len(xs) == 1 else f"{med:.2f} (range {min(xs):.2f}-{max(xs):.2f}, {len(xs)} repeats)"


if __name__ == "__main__":
    main()
