"""Evaluation throughput: TRL's RewardTrainer.evaluate vs rewardkit's pair scoring, same weights and token ids.

    .venv/bin/python bench/score_vs_trl.py --model minilm --pairs 600

Each engine runs in its own process and scores the same HH pairs (the file's last N) with the same initial
reward model. TRL runs with its RewardConfig defaults (bf16 autocast, eval batch 8, padding to the longest
in input order); rewardkit sorts by length, caps tokens per forward, packs each batch into one padding-free
row on CPU and uses bf16 autocast where it is native. Prints pairs/s, tokens/s, padding, peak RSS, accuracy, and the ratio.

Two more engines score the same pairs from their TEXTS (tokenisation inside the timed part), as a user would:
`transformers.pipeline("text-classification")` on the same model folder in fp32, batch 16, truncation at
max_length, raw scores (function_to_apply="none"), chosen and rejected full texts in file order; and
rewardkit's `RewardScorer` on the same texts (`encode_text` + its batched forward, precision as `rewardkit
score` picks it for a model rewardkit trained on this machine: bf16 where native). The pipeline keeps the start of a too-long text and rewardkit its end; both cap at max_length.
rewardkit's engines run with the allocator the `rewardkit` command preloads (tcmalloc or jemalloc where installed,
`rewardkit/cli/allocator.py`; `REWARDKIT_MALLOC=system` in the environment turns it off); the others on the C
library's, as `python script.py` runs. Each engine's label names its allocator.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (BACKBONES, dtype_peaks, hh_rows, make_initial_model, matmul_params, matmul_peak, model_flops,  # noqa: E402
                    run_worker, table, work_dir)
from train_vs_trl import _allocator_label, _encode  # noqa: E402

from rewardkit.cli.allocator import find_library, preload_env  # noqa: E402


def _texts(rows: list[dict]) -> list[str]:
    return [r["chosen"] for r in rows] + [r["rejected"] for r in rows]


def _prunes(model, device: str) -> bool:
    """Whether scoring runs the last layer at the readout rows only (models/readout_layer.py; CPU flat batches)."""
    from rewardkit.models.readout_layer import last_layer

    return device == "cpu" and model.readout != "mean" and last_layer(model.hf) is not None


def _pruned(seqs) -> dict:
    """What the last layer computed when pruned: its rows (the readout token and, where there is a prompt, the
    last prompt token), the query-key pairs of those rows, and all tokens (keys and values still run on them)."""
    rows = [1 + (s.response_start > 1) for s in seqs]
    return {"rows": sum(rows), "row_keys": sum(r * len(s.input_ids) for r, s in zip(rows, seqs)),
            "tokens": sum(len(s.input_ids) for s in seqs)}


def worker_texts(spec: dict) -> dict:
    """pipeline / rewardkit-texts: the same texts in, one score out per text; tokenisation is timed."""
    init, texts, n, device = spec["init"], _texts(spec["rows"]), len(spec["rows"]), spec["device"]
    times = []
    if spec["engine"] == "pipeline":
        from transformers import AutoTokenizer, pipeline

        pipe = pipeline("text-classification", model=init,  # fp32, what pipeline() loads by default
                        device=0 if device == "cuda" else -1)
        for _ in range(spec["repeats"]):
            t0 = time.perf_counter()
            out = pipe(texts, batch_size=16, truncation=True, max_length=spec["max_length"], function_to_apply="none")
            times.append(time.perf_counter() - t0)
        scores = [o["score"] for o in out]
        tok = AutoTokenizer.from_pretrained(init)
        lengths = [len(x) for x in tok(texts, truncation=True, max_length=spec["max_length"])["input_ids"]]
        processed = sum(len(lengths[i:i + 16]) * max(lengths[i:i + 16]) for i in range(0, len(lengths), 16))
        name, bf16, pruned = "transformers pipeline (fp32, batch 16)", False, False
        seqs = []
    else:
        from rewardkit.precision import precision_name, resolve_bf16
        from rewardkit.scoring import RewardScorer

        scorer = RewardScorer.load(init, max_length=spec["max_length"], device=device,
                                   bf16=resolve_bf16(None, device, trained="bf16"))  # as for a model trained here
        for _ in range(spec["repeats"]):
            t0 = time.perf_counter()
            seqs = scorer.encode_texts(texts)
            scores = scorer.run(seqs).score.tolist()
            times.append(time.perf_counter() - t0)
        lengths = [len(s.input_ids) for s in seqs]
        processed = sum(lengths)  # real tokens: the CPU row's rounding padding (<= 1/16) is not counted, nor a GPU's
        pruned = _prunes(scorer.model, device)
        name, bf16 = f"rewardkit RewardScorer on texts ({precision_name(scorer.bf16)})", scorer.bf16
    acc = sum(c > r for c, r in zip(scores[:n], scores[n:])) / n
    return {"engine": name + _allocator_label(), "seconds": statistics.median(times), "times": times, "pairs": n,
            "tokens": sum(lengths), "processed": processed, "accuracy": acc, "bf16": bool(bf16),
            "qk": sum(x * x for x in lengths), "pruned": _pruned(seqs) if pruned else None}


def worker(spec: dict) -> dict:
    if spec["engine"] in ("pipeline", "rewardkit-texts"):
        return worker_texts(spec)
    init, device = Path(spec["init"]), spec["device"]
    model, tok, pairs = _encode(init, spec["rows"], spec["max_length"])
    real = sum(len(s.input_ids) for p in pairs for s in (p.chosen, p.rejected))
    qk = sum(len(s.input_ids) ** 2 for p in pairs for s in (p.chosen, p.rejected))  # each sequence whole
    if spec["engine"] == "trl":
        from datasets import Dataset
        from transformers import AutoModelForSequenceClassification
        from trl import RewardConfig, RewardTrainer

        ds = Dataset.from_dict({"chosen_ids": [p.chosen.input_ids for p in pairs],
                                "rejected_ids": [p.rejected.input_ids for p in pairs]})
        hf = AutoModelForSequenceClassification.from_pretrained(init, num_labels=1)
        args = RewardConfig(output_dir=spec["out"], max_length=spec["max_length"], report_to=[],
                            use_cpu=device == "cpu",
                            dataloader_num_workers=0, save_strategy="no",
                            **({"bf16": False} if spec.get("trl_fp32") else {}))
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
        return {"engine": "TRL evaluate (defaults" + (", fp32)" if spec.get("trl_fp32") else ")") + _allocator_label(),
                "seconds": statistics.median(times), "times": times,
                "pairs": len(pairs), "tokens": real, "processed": counts["processed"],
                "accuracy": metrics.get("eval_accuracy", float("nan")), "bf16": bool(args.bf16), "qk": qk}
    from rewardkit.scoring import length_batches, score_sequences
    from rewardkit.precision import resolve_bf16

    seqs = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    bf16 = resolve_bf16(None, device, trained="bf16")  # the best case for bf16: a model trained in it
    model.to(device)
    times = []
    for _ in range(spec["repeats"]):
        t0 = time.perf_counter()
        r = score_sequences(model, seqs, pad_id=tok.pad_token_id, batch_size=spec["batch_size"],
                            max_tokens=spec["max_tokens"], bf16=bf16, device=device)
        times.append(time.perf_counter() - t0)
    rc, rr = r[:len(pairs)], r[len(pairs):]
    lengths = [len(s.input_ids) for s in seqs]
    flat = device == "cpu"  # on CPU run_model packs each batch into one padding-free row
    processed = real if flat else sum(len(b) * max(lengths[i] for i in b)
                                      for b in length_batches(lengths, spec["batch_size"], spec["max_tokens"]))
    return {"engine": f"rewardkit ({'flat' if flat else 'padded'}, max_tokens {spec['max_tokens']}, bf16 {bf16})"
                      + _allocator_label(),
            "seconds": statistics.median(times), "times": times,
            "pairs": len(pairs), "tokens": real, "processed": processed, "accuracy": float((rc > rr).double().mean()),
            "bf16": bool(bf16), "qk": qk, "pruned": _pruned(seqs) if _prunes(model, device) else None}


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
    ap.add_argument("--engines", nargs="+", default=["trl", "rewardkit", "pipeline", "rewardkit-texts"],
                    choices=["trl", "rewardkit", "pipeline", "rewardkit-texts"], help="which runs (default: all)")
    ap.add_argument("--trl-fp32", action="store_true",
                    help="TRL without its default bf16 autocast (on a CPU without native bf16, where it is emulated)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where every engine scores")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(json.loads(Path(a.worker).read_text()))))
        return
    _, rows = hh_rows(0, a.pairs)
    work = work_dir("rk-score-bench-")
    init = make_initial_model(a.model, work / "init")
    import torch

    fp32_before = matmul_peak(torch.float32, device=a.device)
    results = []
    runs = [(e, m) for e in a.engines for m in (a.max_tokens if e == "rewardkit" else [None])]
    lib = find_library()  # rewardkit's engines start as `rewardkit score` does: with this allocator preloaded
    for i, (engine, max_tokens) in enumerate(runs):
        out = work / f"run{i}"
        out.mkdir()
        print(f"running {engine} ...", file=sys.stderr, flush=True)
        env = preload_env(lib, {}, "score") if lib and engine.startswith("rewardkit") else {"LD_PRELOAD": ""}
        results.append(run_worker(Path(__file__), dict(engine=engine, init=str(init), rows=rows, out=str(out),
                                                       max_length=a.max_length, batch_size=a.batch_size,
                                                       max_tokens=max_tokens, repeats=a.repeats,
                                                       trl_fp32=a.trl_fp32, device=a.device), env))
    from transformers import AutoConfig

    from rewardkit.models.reward_model import RewardModel

    hf_cfg = AutoConfig.from_pretrained(init)
    init_model = RewardModel.from_pretrained(str(init))[0]
    n_params = matmul_params(init_model)
    from rewardkit.models.readout_layer import last_layer

    layer = last_layer(init_model.hf)  # its parameters other than the key and value projections
    last_saved = 0 if layer is None else sum(p.numel() for n, p in layer.named_parameters()
                                             if not n.startswith(("attention.self.key", "attention.self.value")))
    peaks = dtype_peaks({r["bf16"] for r in results}, a.device, fp32_before)
    for r in results:
        qk = r.pop("qk")
        flops = model_flops(n_params, hf_cfg.num_hidden_layers, hf_cfg.hidden_size, r["tokens"], qk, backward=False)
        pruned = r.pop("pruned", None)
        if pruned:  # less work done: the last layer's query, output and MLP at its readout rows only
            flops -= (2 * last_saved * (pruned["tokens"] - pruned["rows"])
                      + 4 * hf_cfg.hidden_size * (qk - pruned["row_keys"]))
        r["mfu"] = flops / r["seconds"] / peaks[r["bf16"]]
        r["pairs_per_s"] = r["pairs"] / r["seconds"]
        r["tokens_per_s"] = r["tokens"] / r["seconds"]
        r["padding"] = 1 - r["tokens"] / r["processed"]
        r["first_s"] = r["times"][0]  # on a GPU: kernel selection, cuDNN plans (README "On a GPU")
    print(f"\n{a.model}: scoring {a.pairs} HH pairs, max_length {a.max_length}; median of {a.repeats} passes")
    print(table(results, [("engine", "engine", ""), ("pairs_per_s", "pairs/s", ".2f"), ("tokens_per_s", "tokens/s", ".0f"),
                          ("padding", "padding", ".1%"), ("first_s", "first pass s", ".2f"),
                          ("peak_rss_gb", "peak RSS GB", ".2f"),
                          ("accuracy", "accuracy", ".3f"), ("mfu", "MFU", ".1%")]))
    print(f"matmul peak here ({torch.get_num_threads()} threads; fp32: the higher of before and after the runs): " +
          ", ".join(f"{'bf16' if k else 'fp32'} {v / 1e9:.0f} GFLOP/s" for k, v in sorted(peaks.items())))
    by = dict(zip((e for e, _ in runs), results))  # each engine's first run
    for (engine, _), r in zip(runs, results):
        ref = by.get({"rewardkit": "trl", "rewardkit-texts": "pipeline"}.get(engine, ""))
        if ref is not None:
            print(f"{r['engine']} / {ref['engine']}: pairs/s x{r['pairs_per_s'] / ref['pairs_per_s']:.2f}, "
                  f"peak RSS x{r['peak_rss_gb'] / ref['peak_rss_gb']:.2f}")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
